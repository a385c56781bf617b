"""The study: where it is stored, how candidates are sampled, and what makes stored trials comparable."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from mbv2_search import ledger, space
from mbv2_search.config import OBJECTIVES, ArchFile, StudyFile, load_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Context:
    """A loaded study file and where its study lives."""

    path: Path
    study: StudyFile
    arch_file: ArchFile
    storage_url: str
    report_dir: Path

    @property
    def directions(self) -> list[str]:
        """Optuna directions of the objectives."""
        return [OBJECTIVES[name] for name in self.study.objectives]


def default_storage(report_dir: Path) -> str:
    """A journal file: safe for several local processes at once (file lock), no 'database is locked'."""
    return f"journal:{report_dir / 'study.journal'}"


def load_context(path: str | Path, storage: str | None = None, reports_root: str | Path = "reports") -> Context:
    """Load a study file; storage comes from the flag, then MBV2_STORAGE, then the file, then the default."""
    study, arch_file = load_study(path)
    report_dir = Path(reports_root) / study.name
    url = storage or os.environ.get("MBV2_STORAGE") or study.storage or default_storage(report_dir)
    return Context(Path(path), study, arch_file, url, report_dir)


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL: 'journal:PATH' or an RDB URL (postgresql://, sqlite://)."""
    if url.startswith("journal:"):
        from mbv2_search.journal import SafeJournalFile

        file_path = Path(url.removeprefix("journal:"))
        file_path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(SafeJournalFile(str(file_path)))
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def make_sampler(ctx: Context) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded per trial; Optuna 5 reads constraints from trial.set_constraint."""
    config = ctx.study.sampler
    options = dict(config.options)
    if config.name == "grid":  # one seed: it shuffles the grid, and trial n takes point n of that order
        return _GridSampler(options.get("grid") or space.grid(ctx.arch_file), seed=config.seed)
    kinds: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
        "random": optuna.samplers.RandomSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "gp": optuna.samplers.GPSampler,
        "tpe": optuna.samplers.TPESampler,
    }
    return TrialSeeded(lambda seed: kinds[config.name](seed=seed, **options), config.seed)


def space_size(ctx: Context) -> int | None:
    """Distinct candidates the study can evaluate: the grid sampler's grid (or else the space), plus the
    baselines outside it; None if a range is continuous."""
    config = ctx.study.sampler
    grid = (config.options.get("grid") if config.name == "grid" else None) or space.grid_or_none(ctx.arch_file)
    if grid is None:
        return None
    points = {ledger.candidate_key(b) for b in ctx.study.baselines if set(b) == set(grid)}
    outside = {p for p in points if any(v not in grid[k] for k, v in json.loads(p).items())}
    return math.prod(len(values) for values in grid.values()) + len(outside)


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


def space_fingerprint(ctx: Context) -> str:
    """What makes trials comparable: the space, data, training budget and objectives."""
    study = ctx.study
    return json.dumps(
        {
            "space": ctx.arch_file.model_dump(exclude={"name", "description"}),
            "data": study.data.dataset,
            "training": study.training.model_dump(exclude={"device", "precision"}),
            "objectives": study.objectives,
            "constraints": study.constraints,
        },
        sort_keys=True,
    )


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler for an ask/tell loop: its after_trial only calls study.stop(), which works only inside
    study.optimize (and fails on enqueued trials); our workers stop at n_trials or an exhausted space."""

    def after_trial(self, study, trial, state, values) -> None:  # type: ignore[override]
        pass


class StudyMismatch(ValueError):
    """The study file changed in a way that makes stored trials incomparable."""


def open_study(ctx: Context, *, create: bool = True) -> optuna.Study:
    """Create or load the study; refuse a stored study whose space differs from the file's."""
    name = ctx.study.name
    if (
        not create
        and ctx.storage_url.startswith("journal:")
        and not Path(ctx.storage_url.removeprefix("journal:")).exists()
    ):
        raise KeyError(name)  # reading a study that was never run must not create its folder
    storage = make_storage(ctx.storage_url)
    if not create:
        return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(ctx))
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=make_sampler(ctx), directions=ctx.directions, load_if_exists=True
    )
    fingerprint = space_fingerprint(ctx)
    stored = study.user_attrs.get("fingerprint")
    if stored is not None and stored != fingerprint:
        raise StudyMismatch(
            f"{ctx.path}: the stored study '{name}' was run with a different space, data, budget, objectives or constraints; "
            f"rename the study (name:) or choose another storage to start a new one"
        )
    if stored is None:
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("study_file", ctx.study.model_dump(mode="json", exclude={"storage"}))
        for baseline in ctx.study.baselines:
            study.enqueue_trial(baseline, user_attrs={"baseline": True}, skip_if_exists=True)
    if study.metric_names != list(ctx.study.objectives):  # optuna-dashboard and Optuna's CLI show our names
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(ctx.study.objectives))
    return study


def snapshot(study: optuna.Study, ctx: Context) -> dict[str, Any]:
    """Progress numbers from storage: counts, the running trials' knobs, Pareto size, ETA."""
    from mbv2_search.report.analysis import pareto_mask, trials_frame

    trials = study.get_trials(deepcopy=False)
    state = ledger.counts(trials)
    frame = trials_frame(trials)
    front = int(pareto_mask(frame, ctx.study.objectives).sum()) if len(frame) else 0
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.state == TrialState.COMPLETE and t.datetime_complete and t.datetime_start and ledger.counted(t)
    ]
    done = ledger.budget(trials).done
    remaining = max(0, ctx.study.n_trials - done)
    mean = sum(durations) / len(durations) if durations else None
    running = [dict(t.params) for t in trials if t.state == TrialState.RUNNING and ledger.counted(t)]
    return {
        "done": done,
        "total": ctx.study.n_trials,
        "front": front,
        "running_params": running,
        "eta_seconds": mean * remaining / max(1, ctx.study.workers) if mean else None,
        **state,
    }


def check_data(ctx: Context) -> None:
    """Check the study's data source before any trial or storage exists; a ConfigError (exit 2) if it is bad."""
    from mbv2_search.config import ConfigError
    from mbv2_search.data import check_source
    from mbv2_search.errors import DataError

    try:
        check_source(ctx.study.data.dataset, ctx.study.data.dir)
    except DataError as err:
        raise ConfigError(ctx.path, "data", str(err)) from None


def finish_line(
    ctx: Context, study: optuna.Study, stopped: str = "", failures: list[str] | None = None
) -> tuple[int, str]:
    """The run's exit code and closing line: 0 when n_trials counted trials are finished (or the space is
    exhausted) and nothing runs; else how many are left and why (1 after failures, 3 otherwise)."""
    spent = ledger.budget(study.get_trials(deepcopy=False))
    n_trials, size = ctx.study.n_trials, space_size(ctx)
    if spent.done >= n_trials and not spent.running:
        return 0, ""
    if size is not None and spent.candidates >= size and not spent.running:
        return (
            0,
            f"the space is exhausted: all {size} distinct candidates were evaluated ({spent.done} of n_trials {n_trials})",
        )
    reasons = {"timeout": "timeout_minutes reached", "stop": "stopped"}
    why = "; ".join(failures or []) or reasons.get(stopped) or f"{spent.running} trial(s) still running elsewhere"
    left = n_trials - spent.done
    return (1 if failures else 3), f"{left} of {n_trials} trials left ({why}); run the same command to resume"
