"""The study's sampler: a fresh one per trial, seeded from the study seed and the trial number."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import optuna

from mbv2_search import space
from mbv2_search.config import ArchFile

# The samplers a study may name (sampler.name), each with the keyword options of its class.
SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "random": optuna.samplers.RandomSampler,
    "grid": optuna.samplers.GridSampler,
    "gp": optuna.samplers.GPSampler,
}


def make_sampler(config: Any, arch_file: ArchFile) -> optuna.samplers.BaseSampler:
    """The study's sampler (its `sampler:` section), seeded per trial; Optuna 5 reads constraints from
    trial.set_constraint."""
    options = dict(config.options)
    if config.name == "grid":  # one seed: it shuffles the grid, and trial n takes point n of that order
        return _GridSampler(options.get("grid") or space.grid(arch_file), seed=config.seed)
    return TrialSeeded(lambda seed: SAMPLERS[config.name](seed=seed, **options), config.seed)


def trial_seed(study_seed: int, number: int) -> int:
    """The sampler seed of one trial: fixed by the study's seed and the trial number."""
    return int(np.random.SeedSequence([study_seed, number]).generate_state(1)[0])


class TrialSeeded(optuna.samplers.BaseSampler):
    """A sampler made afresh for each trial, seeded from the study seed and the trial number.

    One seed for every worker would make parallel workers (and every resume) propose the same
    points; a seed per trial keeps a study reproducible from its seed. Samplers keep their history
    in the storage, so a fresh instance per trial loses nothing but caches.
    """

    def __init__(self, make: Callable[[int | None], optuna.samplers.BaseSampler], seed: int | None) -> None:
        self.make, self.seed = make, seed
        self.inner = make(seed)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.inner = self.make(None if self.seed is None else trial_seed(self.seed, trial.number))
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):  # type: ignore[no-untyped-def]
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):  # type: ignore[no-untyped-def]
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # type: ignore[no-untyped-def]
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:  # type: ignore[no-untyped-def]
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler for an ask/tell loop: its after_trial only calls study.stop(), which works only inside
    study.optimize (and fails on enqueued trials); our workers stop at n_trials or an exhausted space."""

    def after_trial(self, study, trial, state, values) -> None:  # type: ignore[override]
        pass
