"""The study's ledger: which trials count towards n_trials, duplicates, and trials whose worker is gone.

The budget (DESIGN.md section 3): n_trials counts distinct candidates evaluated (trained, stopped
early, infeasible, or failed for a reason of their own). Duplicates and trials excluded by an
interruption, a dead worker or a failure of the environment never count. This module is the one
place that decides it, and the one place that changes trial states behind Optuna's back.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import socket
import time
import weakref
from collections import ChainMap
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from mbv2_search import optuna_private as private
from mbv2_search.trial_index import TrialIndex, look

EXCLUDED = "excluded"  # user attr on trials that do not count: interrupted, stale, environment, surplus (reason)
DUPLICATE = "duplicate_of"  # user attr on trials whose candidate an earlier trial evaluated (its number)
WORKER = "worker"  # user attr: the process running the trial (host:pid-namespace:pid)
CANDIDATE = "candidate"  # user attr written once a trial's knobs are suggested (duplicate look-ups wait for it)
RETRAINED = "retrained:"  # study user attr prefix, one per retrained front point of a one-shot study (oneshot.py)
SAMPLING_GRACE = 10  # times the heartbeat grace, for a trial whose sampler is still choosing (no heartbeat yet)
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def counted(trial: FrozenTrial) -> bool:
    """Whether the trial holds (or, running, may hold) a slot of n_trials."""
    attrs = trial.user_attrs
    return trial.state in LIVE and EXCLUDED not in attrs and DUPLICATE not in attrs


@dataclass(frozen=True)
class Budget:
    """Counted trials finished and running, and the distinct candidates they cover."""

    done: int
    running: int
    candidates: int


def budget(trials: list[FrozenTrial], below: int | None = None) -> Budget:
    """The budget spent by these trials (only those numbered below `below`, when given)."""
    mine = [t for t in trials if counted(t) and (below is None or t.number < below)]
    running = sum(t.state == TrialState.RUNNING for t in mine)
    return Budget(len(mine) - running, running, len({candidate_key(t.params) for t in mine}))


class _Tally:
    """The ledger's running totals over finished trials (see trial_index)."""

    def __init__(self) -> None:
        self.numbers: list[int] = []  # of counted trials, sorted
        self.first: dict[str, FrozenTrial] = {}  # candidate key -> its earliest counted trial
        self.retried: set[int] = set()  # numbers that a finished trial is the retry of

    def add(self, trial: FrozenTrial) -> None:
        if "retry_of" in trial.user_attrs:
            self.retried.add(trial.user_attrs["retry_of"])
        if not counted(trial):
            return
        bisect.insort(self.numbers, trial.number)
        key = candidate_key(trial.params)
        if key not in self.first or trial.number < self.first[key].number:
            self.first[key] = trial


def _tally(index: TrialIndex) -> _Tally:
    return index.fold(_Tally, _Tally)


def _counted_running(index: TrialIndex) -> list[FrozenTrial]:
    return [t for t in index.running() if counted(t)]


def spent(study: optuna.Study) -> Budget:
    """The study's budget spent so far, as budget() of all its trials, from what changed since the last look."""
    with look(study) as index:
        return _spent(index)


def _spent(index: TrialIndex) -> Budget:
    tally, running = _tally(index), _counted_running(index)
    keys = {candidate_key(t.params) for t in running}
    unseen = sum(key not in tally.first for key in keys)  # not keys - first.keys(): that copies every key
    return Budget(len(tally.numbers), len(running), len(tally.first) + unseen)


def held_before(study: optuna.Study, number: int) -> int:
    """Slots of n_trials held by counted trials, finished or running, numbered below `number`."""
    with look(study) as index:
        finished = bisect.bisect_left(_tally(index).numbers, number)
        return finished + sum(t.number < number for t in _counted_running(index))


def surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether counted trials numbered below `number`, finished or running, hold every slot of n_trials.

    Read again only where the last look leaves it possible: of the trials it saw, finished ones stay
    as they were, running ones can only stop counting and queued ones start; any other trial below
    `number` is new. Most trials are far from the last slot and need no read.
    """
    with look(study, refresh=False) as index:
        unseen = max(0, number - index.size)
        most = len(_tally(index).numbers) + len(_counted_running(index)) + len(index.waiting()) + unseen
        if most < n_trials:
            return False
    return held_before(study, number) >= n_trials


class Seen(NamedTuple):
    """The candidates of counted trials (finished or running), and how many trials the study has."""

    candidates: Container[str]
    trials: int


def seen(study: optuna.Study) -> Seen:
    """What a sampler nudge must avoid: every candidate a counted trial evaluated or is evaluating."""
    with look(study) as index:
        running = {candidate_key(t.params): t for t in _counted_running(index)}
        return Seen(ChainMap(running, _tally(index).first), index.size)


def evaluated(attrs: dict[str, Any]) -> bool:
    """Whether a trial measured its candidate's accuracy: trained, or inherited from a supernet (one-shot)."""
    return attrs.get("trained") is True or attrs.get("inherited") is True


def eligible(trial: FrozenTrial) -> bool:
    """Whether a trial is a point of the study's front: complete, its accuracy measured, counted once
    (report.analysis applies the same rule to a trials frame)."""
    return trial.state == TrialState.COMPLETE and evaluated(trial.user_attrs) and counted(trial)


def outcome(trial: FrozenTrial) -> str:
    """What a trial came to, as `counts` tallies it."""
    attrs = trial.user_attrs
    if DUPLICATE in attrs:
        return "duplicate"
    if EXCLUDED in attrs:
        return "excluded"
    if trial.state == TrialState.COMPLETE:
        return "complete" if attrs.get("feasible", True) else "infeasible"
    name = {TrialState.PRUNED: "pruned", TrialState.FAIL: "failed", TrialState.RUNNING: "running"}
    return name.get(trial.state, "waiting")


def counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """Trials by outcome: counted ones by state (infeasible among complete), duplicates and excluded apart."""
    keys = ("complete", "infeasible", "pruned", "failed", "running", "waiting", "duplicate", "excluded")
    out = dict.fromkeys(keys, 0)
    for t in trials:
        kind = outcome(t)
        out[kind] += 1
        out["complete"] += kind == "infeasible"  # infeasible trials are complete ones
    return out


def candidate_key(params: dict[str, Any]) -> str:
    """A candidate's identity: its knobs and seed (the trial's parameters), floats to 10 decimals
    (Optuna's stepped floats come back as 0.39999999999999997 where a grid or a baseline says 0.4)."""
    return json.dumps({k: round(v, 10) if isinstance(v, float) else v for k, v in params.items()}, sort_keys=True)


def earlier_twin(
    study: optuna.Study, number: int, *, params: dict[str, Any], wait_seconds: float
) -> FrozenTrial | None:
    """The earliest counted trial before `number` with the same candidate, finished or running.

    Only earlier trials are looked at, so of two workers proposing one candidate at once exactly the
    later one stands down. An earlier trial still choosing its knobs is waited for (up to
    wait_seconds: its worker may have died), so the look-up cannot miss it.
    """
    deadline, key = time.monotonic() + wait_seconds, candidate_key(params)
    while True:
        with look(study) as index:
            twin, undecided = _twin(index, number, key)
        if twin is not None or not undecided or time.monotonic() > deadline:
            return twin
        time.sleep(0.02)


def _twin(index: TrialIndex, number: int, key: str) -> tuple[FrozenTrial | None, bool]:
    """The earliest counted trial before `number` with this candidate, and whether an earlier one is
    still choosing its knobs."""
    first = _tally(index).first.get(key)
    twin = first if first is not None and first.number < number else None
    undecided = False
    for other in _counted_running(index):
        if other.number >= number:
            continue
        if CANDIDATE not in other.user_attrs:
            undecided = True
        elif candidate_key(other.params) == key and (twin is None or other.number < twin.number):
            twin = other
    return twin, undecided


def worker_id(pid: int | None = None) -> str:
    """This process (or a child's pid on this host): host, pid namespace and pid."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}:{namespace}:{pid or os.getpid()}"


def process_alive(pid: int) -> bool:
    """Whether a process of this host runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _worker_gone(trial: FrozenTrial) -> bool:
    """The trial's worker ran on this host, in this pid namespace, and that process no longer runs."""
    host, _, pid = str(trial.user_attrs.get(WORKER, "")).rpartition(":")
    if not pid.isdigit() or host != worker_id().rpartition(":")[0] or int(pid) == os.getpid():
        return False
    return not process_alive(int(pid))


def requeue(study: optuna.Study, trial_id: int, *, reason: str) -> None:
    """Take a RUNNING trial out of the budget (excluded with the reason, FAIL) and queue its candidate again.

    Only a chosen candidate is queued again (its knobs, or the fixed ones of a retry or baseline): a
    trial stopped while its sampler was still choosing loses nothing. Each step can be repeated, by
    this worker or another: a process killed halfway (a second Ctrl-C) leaves a RUNNING trial that
    recover_stale finishes re-queueing, with one retry per trial.
    """
    storage = private.storage_of(study)
    trial = storage.get_trial(trial_id)
    if trial.state != TrialState.RUNNING:  # finished meanwhile, or re-queued by another worker
        return
    params = trial.params if CANDIDATE in trial.user_attrs else trial.system_attrs.get("fixed_params")
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another worker got there first
        if EXCLUDED not in trial.user_attrs:
            storage.set_trial_user_attr(trial_id, EXCLUDED, reason)
        retried = _retried(study, trial.number)
        if params and not retried:
            study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
        storage.set_trial_state_values(trial_id, TrialState.FAIL)


def _retried(study: optuna.Study, number: int) -> bool:
    """Whether a trial (finished or not) is already the retry of trial `number`."""
    with look(study) as index:
        unfinished = (t.user_attrs.get("retry_of") for t in index.open.values())
        return number in _tally(index).retried or number in unfinished


def recover_stale(study: optuna.Study, grace_seconds: float) -> list[int]:
    """Re-queue RUNNING trials whose worker is gone: a dead process on this host, or no heartbeat for a while."""
    with look(study) as index:
        stale = _stale(index, grace_seconds)
    for trial, reason in stale:
        requeue(study, private.trial_id(trial), reason=reason)
    return [trial.number for trial, _ in stale]


def settle(study: optuna.Study, grace_seconds: float) -> tuple[list[int], Budget]:
    """recover_stale, then spent: from one look of the study where no trial was stale (the usual case)."""
    with look(study) as index:
        if not _stale(index, grace_seconds):
            return [], _spent(index)
    return recover_stale(study, grace_seconds), spent(study)


def _stale(index: TrialIndex, grace_seconds: float) -> list[tuple[FrozenTrial, str]]:
    """The RUNNING trials whose worker is gone, each with the reason."""
    now = time.time()
    stale = []
    for t in index.running():
        # a trial without a heartbeat yet is still in its sampler, which may take long (GP): more grace
        beat = t.user_attrs.get("heartbeat")
        since = beat or (t.datetime_start.timestamp() if t.datetime_start else now)
        if _worker_gone(t):
            stale.append((t, _gone(t.user_attrs[WORKER])))
        elif now - since > grace_seconds * (1 if beat else SAMPLING_GRACE):
            stale.append((t, "stale: its worker stopped sending heartbeats"))
    return stale


def _gone(worker: str) -> str:
    return f"stale: its worker ({worker}) is gone"


def requeue_worker(study: optuna.Study, pid: int, *, reason: str) -> list[int]:
    """Re-queue the RUNNING trials of one local worker process (the parent saw it exit); returns them with
    those another worker re-queued first (it may see the dead worker before its parent does)."""
    me = worker_id(pid)
    with look(study) as index:
        held = [t for t in index.with_attr(WORKER) if t.user_attrs[WORKER] == me]
    out = []
    for t in held:
        if t.state == TrialState.RUNNING:
            requeue(study, private.trial_id(t), reason=reason)
        elif t.user_attrs.get(EXCLUDED) != _gone(me):
            continue
        out.append(t.number)
    return out


def set_attrs(study: optuna.Study, trial_id: int, *, attrs: dict[str, Any]) -> None:
    """Write several user attributes of a trial, in one storage write."""
    private.set_trial_attrs(study, trial_id, attrs=attrs)


_AT_TELL: weakref.WeakKeyDictionary[optuna.Trial, dict[str, Any]] = weakref.WeakKeyDictionary()


def set_attrs_at_tell(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """User attributes the worker writes with the trial's outcome, in the same storage write (workers.run_trial)."""
    _AT_TELL.setdefault(trial, {}).update(attrs)


def attrs_at_tell(trial: optuna.Trial) -> dict[str, Any]:
    """The user attributes set_attrs_at_tell held for the trial (taken: a second call returns none)."""
    return _AT_TELL.pop(trial, {})
