"""A study's trials, read incrementally: each finished trial once, unfinished ones at every look.

Workers look at the study around every trial (the budget, duplicates, re-queueing, stale workers,
rung peers). Reading and scanning every trial at each look made a study quadratic in its length;
here a look costs what changed since the last one. Finished trials never change (Optuna refuses
writes to them), so each is folded once into the running totals that the ledger, the pruner and
the progress view keep (`TrialIndex.fold`); the unfinished ones (one running per worker, and the
queue) are read again at every look, so what other workers and machines did is always seen.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Protocol, TypeVar

import optuna
from optuna.trial import FrozenTrial

from mbv2_search import optuna_private as private


class Fold(Protocol):
    """A running total over finished trials, given each one once."""

    def add(self, trial: FrozenTrial) -> None: ...


F = TypeVar("F", bound=Fold)


class _WithAttr:
    """The finished trials that have one user attribute."""

    def __init__(self, key: str) -> None:
        self.key, self.trials = key, []

    def add(self, trial: FrozenTrial) -> None:
        if self.key in trial.user_attrs:
            self.trials.append(trial)


class TrialIndex:
    """One study's trials as last seen: the finished ones in the order seen, the unfinished by number."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # workers look from their trial loop and their heartbeat thread
        self.finished: list[FrozenTrial] = []
        self.open: dict[int, FrozenTrial] = {}  # RUNNING or WAITING at the last look
        self.size = 0  # trials in the study at the last look
        self._done: set[int] = set()
        self._last_finished_id = -1
        self._folds: dict[Hashable, Fold] = {}

    def refresh(self, study: optuna.Study) -> None:
        """Read the trials that changed since the last look."""
        with self.lock:
            unfinished = [private.trial_id(t) for t in self.open.values()]
            for trial in private.changed_trials(
                study, unfinished=unfinished, known=self.size, last_finished=self._last_finished_id
            ):
                self._see(trial)

    def _see(self, trial: FrozenTrial) -> None:
        if trial.number in self._done:
            return
        self.size = max(self.size, trial.number + 1)
        if not trial.state.is_finished():
            self.open[trial.number] = trial
            return
        self.open.pop(trial.number, None)
        self._done.add(trial.number)
        self._last_finished_id = max(self._last_finished_id, private.trial_id(trial))
        self.finished.append(trial)
        for fold in self._folds.values():
            fold.add(trial)

    def fold(self, key: Hashable, make: Callable[[], F]) -> F:
        """The running total registered under key (made, and given every finished trial, on first use)."""
        with self.lock:
            if key not in self._folds:
                fold = make()
                for trial in self.finished:
                    fold.add(trial)
                self._folds[key] = fold
            return self._folds[key]  # type: ignore[return-value]

    def with_attr(self, key: str) -> list[FrozenTrial]:
        """Every trial that has the user attribute, finished or not, by number."""
        finished = self.fold(("with_attr", key), lambda: _WithAttr(key)).trials
        unfinished = [t for t in self.open.values() if key in t.user_attrs]
        return sorted([*finished, *unfinished], key=_number)

    def running(self) -> list[FrozenTrial]:
        """The RUNNING trials, by number."""
        return self._unfinished(optuna.trial.TrialState.RUNNING)

    def waiting(self) -> list[FrozenTrial]:
        """The WAITING trials (the queue), by number."""
        return self._unfinished(optuna.trial.TrialState.WAITING)

    def _unfinished(self, state: optuna.trial.TrialState) -> list[FrozenTrial]:
        return sorted((t for t in self.open.values() if t.state == state), key=_number)


def _number(trial: FrozenTrial) -> int:
    return trial.number


_INDEXES: weakref.WeakKeyDictionary[optuna.Study, TrialIndex] = weakref.WeakKeyDictionary()
_INDEXES_LOCK = threading.Lock()


@contextlib.contextmanager
def look(study: optuna.Study, *, refresh: bool = True) -> Iterator[TrialIndex]:
    """The study's index brought up to date (or as the last look left it), held for the block (keep the
    block short: no sleeping in it)."""
    index = _index(study)
    with index.lock:
        if refresh:
            index.refresh(study)
        yield index


def _index(study: optuna.Study) -> TrialIndex:
    with _INDEXES_LOCK:
        return _INDEXES.get(study) or _INDEXES.setdefault(study, TrialIndex())


def ask(study: optuna.Study, *, refresh: bool = True, attrs: dict[str, Any] | None = None) -> optuna.Trial:
    """study.ask(): the next queued trial (the earliest that no other worker took first), or a new one,
    given the user attributes `attrs`. refresh=False takes the queue as the last look saw it (a caller
    that looked a moment ago saves a read; a trial queued since is taken at the next ask)."""
    with look(study, refresh=refresh) as index:
        waiting = [private.trial_id(t) for t in index.waiting()]
    return private.ask(study, waiting=waiting, attrs=attrs)
