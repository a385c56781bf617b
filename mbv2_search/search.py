"""A loaded study file (Context) and what a run reports from its storage: size, progress, the closing line."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mbv2_search import ledger, space
from mbv2_search.config import ArchFile
from mbv2_search.pareto import Front, minimised
from mbv2_search.study import OBJECTIVES, StudyFile, load_study
from mbv2_search.trial_index import look

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


def load_context(path: str | Path, storage: str | None = None, *, reports_root: str | Path = "reports") -> Context:
    """Load a study file; storage comes from the flag, then MBV2_STORAGE, then the file, then the default."""
    study, arch_file = load_study(path)
    report_dir = Path(reports_root) / study.name
    url = storage or os.environ.get("MBV2_STORAGE") or study.storage or default_storage(report_dir)
    return Context(Path(path), study, arch_file, url, report_dir)


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


class _Progress:
    """The progress view's running totals over finished trials (see trial_index)."""

    def __init__(self, objectives: tuple[str, ...]) -> None:
        self.objectives = objectives
        self.outcomes: Counter[str] = Counter()
        self.front = Front()  # what report.analysis.pareto_mask finds among eligible trials
        self.seconds, self.timed = 0.0, 0  # durations of counted complete trials

    def add(self, trial: FrozenTrial) -> None:
        attrs = trial.user_attrs
        self.outcomes[ledger.outcome(trial)] += 1
        complete = trial.state == TrialState.COMPLETE
        if complete and trial.datetime_complete and trial.datetime_start and ledger.counted(trial):
            self.seconds += (trial.datetime_complete - trial.datetime_start).total_seconds()
            self.timed += 1
        if ledger.eligible(trial):
            self.front.add(minimised({name: attrs.get(name) for name in self.objectives}, self.objectives)[0])


def snapshot(study: optuna.Study, ctx: Context) -> dict[str, Any]:
    """Progress numbers from storage: counts, the running trials' knobs, Pareto size, ETA."""
    objectives = tuple(ctx.study.objectives)
    with look(study) as index:
        totals = index.fold(("progress", objectives), lambda: _Progress(objectives))
        state = ledger.counts(list(index.open.values()))
        for kind, n in totals.outcomes.items():
            state[kind] += n
            state["complete"] += n if kind == "infeasible" else 0  # infeasible trials are complete ones
        running = [dict(t.params) for t in index.running() if ledger.counted(t)]
        front, seconds, timed = len(totals.front), totals.seconds, totals.timed
    done = ledger.spent(study).done
    remaining = max(0, ctx.study.n_trials - done)
    mean = seconds / timed if timed else None
    return {
        "done": done,
        "total": ctx.study.n_trials,
        "front": front,
        "running_params": running,
        "eta_seconds": mean * remaining / max(1, ctx.study.workers) if mean else None,
        **state,
    }


def load_data(ctx: Context, resolution: int, device: Any, *, workers: int | None = None) -> Any:
    """The study's dataset at a resolution on a device (data.load_dataset with the study's data settings)."""
    from mbv2_search.data import load_dataset

    config = ctx.study.data
    return load_dataset(
        config.dataset,
        resolution,
        device=device,
        data_dir=config.dir,
        workers=config.workers if workers is None else workers,
        val_fraction=config.val_fraction,
    )


def check_data(ctx: Context) -> None:
    """Check the study's data source before any trial or storage exists; a ConfigError (exit 2) if it is bad."""
    from mbv2_search.data import check_source
    from mbv2_search.errors import DataError
    from mbv2_search.schema import ConfigError

    try:
        check_source(ctx.study.data.dataset, ctx.study.data.dir)
    except DataError as err:
        raise ConfigError(ctx.path, "data", str(err)) from None


def finish_line(
    ctx: Context, study: optuna.Study, *, stopped: str = "", failures: list[str] | None = None
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
