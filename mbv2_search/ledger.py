"""The study's ledger: which trials count towards n_trials, duplicates, and trials whose worker is gone.

The budget (DESIGN.md section 3): n_trials counts distinct candidates evaluated (trained, stopped
early, infeasible, or failed for a reason of their own). Duplicates and trials excluded by an
interruption, a dead worker or a failure of the environment never count. This module is the one
place that decides it, and the one place that changes trial states behind Optuna's back.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mbv2_search import optuna_private as private

EXCLUDED = "excluded"  # user attr on trials that do not count: interrupted, stale, environment, surplus (reason)
DUPLICATE = "duplicate_of"  # user attr on trials whose candidate an earlier trial evaluated (its number)
WORKER = "worker"  # user attr: the process running the trial (host:pid-namespace:pid)
CANDIDATE = "candidate"  # user attr written once a trial's knobs are suggested (duplicate look-ups wait for it)
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


def counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """Trials by outcome: counted ones by state (infeasible among complete), duplicates and excluded apart."""
    keys = ("complete", "infeasible", "pruned", "failed", "running", "waiting", "duplicate", "excluded")
    out = dict.fromkeys(keys, 0)
    for t in trials:
        if DUPLICATE in t.user_attrs:
            out["duplicate"] += 1
        elif EXCLUDED in t.user_attrs:
            out["excluded"] += 1
        elif t.state == TrialState.COMPLETE:
            out["complete"] += 1
            out["infeasible"] += not t.user_attrs.get("feasible", True)
        else:
            name = {TrialState.PRUNED: "pruned", TrialState.FAIL: "failed", TrialState.RUNNING: "running"}
            out[name.get(t.state, "waiting")] += 1
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
        undecided = False
        for other in study.get_trials(deepcopy=False):
            if other.number >= number or not counted(other):
                continue
            if other.state == TrialState.RUNNING and CANDIDATE not in other.user_attrs:
                undecided = True
            elif candidate_key(other.params) == key:
                return other
        if not undecided or time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def worker_id(pid: int | None = None) -> str:
    """This process (or a child's pid on this host): host, pid namespace and pid."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}:{namespace}:{pid or os.getpid()}"


def _worker_gone(trial: FrozenTrial) -> bool:
    """The trial's worker ran on this host, in this pid namespace, and that process no longer exists."""
    host, _, pid = str(trial.user_attrs.get(WORKER, "")).rpartition(":")
    if not pid.isdigit() or host != worker_id().rpartition(":")[0] or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


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
        retried = any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False))
        if params and not retried:
            study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
        storage.set_trial_state_values(trial_id, TrialState.FAIL)


def recover_stale(study: optuna.Study, grace_seconds: float) -> list[int]:
    """Re-queue RUNNING trials whose worker is gone: a dead process on this host, or no heartbeat for a while."""
    now = time.time()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # a trial without a heartbeat yet is still in its sampler, which may take long (GP): more grace
        beat = t.user_attrs.get("heartbeat")
        since = beat or (t.datetime_start.timestamp() if t.datetime_start else now)
        if _worker_gone(t):
            reason = f"stale: its worker ({t.user_attrs[WORKER]}) is gone"
        elif now - since > grace_seconds * (1 if beat else SAMPLING_GRACE):
            reason = "stale: its worker stopped sending heartbeats"
        else:
            continue
        requeue(study, private.trial_id(t), reason=reason)
        recovered.append(t.number)
    return recovered


def requeue_worker(study: optuna.Study, pid: int, *, reason: str) -> list[int]:
    """Re-queue the RUNNING trials of one local worker process (the parent saw it exit)."""
    me = worker_id(pid)
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(WORKER) == me:
            requeue(study, private.trial_id(t), reason=reason)
            out.append(t.number)
    return out


def set_attrs(study: optuna.Study, trial_id: int, *, attrs: dict[str, Any]) -> None:
    """Write several user attributes of a trial, in one storage write."""
    private.set_trial_attrs(study, trial_id, attrs=attrs)
