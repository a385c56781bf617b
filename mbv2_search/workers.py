"""Workers: the trial loop and its heartbeats (supervisor spawns and watches local worker processes)."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mbv2_search import ledger, space, trial_index
from mbv2_search import optuna_private as private
from mbv2_search.interrupts import Interrupted, SignalGuard
from mbv2_search.knobs import ArchError
from mbv2_search.search import Context, space_size
from mbv2_search.storage import open_study


class Heartbeat:
    """Writes a timestamp to the running trial every few seconds, so other workers can tell it is alive,
    and meanwhile re-queues the trials of workers that are gone (so that even during a long training
    every live worker keeps watch). The first beat is the ask's (first_beat)."""

    def __init__(self, trial: optuna.Trial, seconds: float) -> None:
        self.trial, self.study, self.seconds = trial, trial.study, seconds
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stop_event.wait(self.seconds):
            with contextlib.suppress(Exception):  # a storage hiccup must not kill training; the next beat retries
                self.trial.set_user_attr("heartbeat", time.time())
                ledger.recover_stale(self.study, 3 * self.seconds)

    def stop(self) -> None:
        """Stop beating."""
        self.stop_event.set()
        self.thread.join()


def first_beat() -> dict[str, Any]:
    """A running trial's first attributes, written by its ask: its worker, and a heartbeat."""
    return {ledger.WORKER: ledger.worker_id(), "heartbeat": time.time()}


@dataclass
class WorkerReport:
    """What one worker did, and why it stopped."""

    ran: int = 0
    failed: int = 0
    pruned: int = 0
    duplicates: int = 0
    recovered: int = 0
    stopped: str = ""  # '' (the study reached n_trials), 'exhausted', 'timeout' or 'stop'
    streak: int = field(default=0, repr=False)  # duplicates proposed in a row


class GpuCrowded(Exception):
    """A worker sharing its GPU with others ran out of GPU memory: not the candidate's fault, so its trial
    runs again (not counted) and the worker stops, leaving that GPU one worker fewer."""


def _crowded(evaluate: Callable) -> Callable:
    """Out of GPU memory in a shared GPU is the neighbours' doing, not the candidate's (GpuCrowded)."""
    from mbv2_search.train import TrainingOutOfMemory

    def run(trial: optuna.Trial) -> Any:
        try:
            return evaluate(trial)
        except TrainingOutOfMemory as err:
            raise GpuCrowded(f"out of GPU memory beside other workers: {err}") from None

    return run


def _candidate_failures() -> tuple[type[BaseException], ...]:
    """Failures that are the candidate's own (counted): divergence, out of memory, an impossible architecture."""
    from mbv2_search.train import TrainingDiverged, TrainingOutOfMemory

    return (TrainingDiverged, TrainingOutOfMemory, ArchError)


def _tell(study: optuna.Study, trial: optuna.Trial, *, attrs: dict[str, Any], **outcome: Any) -> FrozenTrial | None:
    """Finish the trial, its user attributes in the same write, unless another worker took it over meanwhile
    (its heartbeat looked stale); the trial as stored."""
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        return private.tell(study, trial, attrs=attrs, **outcome)
    return None


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    *,
    evaluate: Callable,
    guard: SignalGuard,
    report: WorkerReport,
    heartbeat_seconds: float,
) -> FrozenTrial | None:
    """Evaluate one trial and record its outcome (its attributes in the same write); interruptions and
    environment failures re-queue it. Returns the trial as stored, or None where it was not told."""
    from mbv2_search.objective import DuplicateCandidate

    heartbeat = None
    try:
        heartbeat = Heartbeat(trial, heartbeat_seconds)
        with guard.interruptible():
            values = evaluate(trial)
    except DuplicateCandidate as duplicate:
        told = _tell(study, trial, attrs={ledger.DUPLICATE: duplicate.original}, state=TrialState.FAIL)
        report.duplicates, report.streak = report.duplicates + 1, report.streak + 1
        return told
    except optuna.TrialPruned:
        told = _tell(study, trial, attrs=ledger.attrs_at_tell(trial), state=TrialState.PRUNED)
        report.pruned += 1
    except _candidate_failures() as err:
        told = _tell(study, trial, attrs={"fail_reason": f"{type(err).__name__}: {err}"}, state=TrialState.FAIL)
        report.failed += 1
    except optuna.exceptions.UpdateFinishedTrialError:  # another worker re-queued it: our heartbeat looked stale
        return None
    except BaseException as err:  # a signal, the data, the disk, the storage, a bug: never counted, run again
        why = f"interrupted by {err}" if isinstance(err, Interrupted) else f"{type(err).__name__}: {err}"
        with contextlib.suppress(Exception):  # what the objective had measured, as if it came before the signal
            ledger.set_attrs(study, private.trial_id(trial), attrs=ledger.attrs_at_tell(trial))
        with contextlib.suppress(Exception):  # the storage may be what failed; then the trial goes stale
            ledger.requeue(study, private.trial_id(trial), reason=f"{why}; it runs again on resume")
        raise
    else:
        told = _tell(study, trial, attrs=ledger.attrs_at_tell(trial), values=values)
        report.ran += 1
    finally:
        ledger.attrs_at_tell(trial)  # none left held, whatever happened
        if heartbeat is not None:
            heartbeat.stop()
    report.streak = 0
    return told


def _nudge(ctx: Context, study: optuna.Study) -> None:
    """After repeated duplicates, queue a candidate nobody has evaluated (finite spaces; seeded by the next trial number)."""
    seen = ledger.seen(study)
    rng = random.Random(f"{ctx.study.sampler.seed}-{seen.trials}")
    point = space.unseen_point(ctx.arch_file, seen.candidates, rng=rng)
    if point is not None:
        study.enqueue_trial(point, user_attrs={"queued_after_duplicates": True})


def work(
    ctx: Context,
    *,
    device: str = "auto",
    threads: int | None = None,
    on_event: Callable[[str, Any], None] | None = None,
    stop: threading.Event | None = None,
    guard: SignalGuard | None = None,
    packed: bool = False,
) -> WorkerReport:
    """Run trials until the study has n_trials counted ones finished, the space is exhausted, or it is stopped.

    Args:
        ctx: the loaded study.
        device: training device for this worker ('auto', 'cpu', 'cuda:N').
        threads: CPU threads for this worker (workers split the cores).
        on_event: called with ('start', trial) and ('end', frozen trial) for progress displays.
        stop: set to stop after the running trial.
        guard: the signal handling (default: SIGINT and SIGTERM raise Interrupted after re-queueing).
        packed: this worker shares its GPU; running out of GPU memory re-queues the trial and raises GpuCrowded.
    """
    from mbv2_search.devices import configure_cpu
    from mbv2_search.objective import Evaluator

    configure_cpu(threads)
    study = open_study(ctx)
    evaluate = _crowded(Evaluator(ctx, device)) if packed else Evaluator(ctx, device)
    report = WorkerReport()
    deadline = time.time() + ctx.study.timeout_minutes * 60 if ctx.study.timeout_minutes else None
    size, n_trials, beat = space_size(ctx), ctx.study.n_trials, ctx.study.heartbeat_seconds
    with guard or SignalGuard() as guard:
        while True:
            guard.check()
            step = _next_step(ctx, study, report, stop=stop, deadline=deadline, size=size)
            if step == "wait":
                time.sleep(min(1.0, beat))  # other workers hold the last slots; theirs may come back to us
                continue
            if step:
                report.stopped = "" if step == "done" else step
                break
            nudged = size is not None and report.streak >= 2 and ctx.study.sampler.name != "grid"
            if nudged:
                _nudge(ctx, study)
            guard.check()
            # Optuna's ask scans every trial for the queue; _next_step just looked (unless a nudge queued one)
            trial = trial_index.ask(study, refresh=nudged, attrs=first_beat())  # the first beat in the ask's write
            if ledger.surplus(study, trial.number, n_trials):  # reads only near the last slot
                # other workers took the last slots between our count and our ask: give this one back
                ledger.requeue(
                    study, private.trial_id(trial), reason="surplus: earlier trials hold every slot of n_trials"
                )
                continue
            if on_event:
                on_event("start", trial)
            told = run_trial(study, trial, evaluate=evaluate, guard=guard, report=report, heartbeat_seconds=beat)
            if on_event:
                on_event("end", told or private.storage_of(study).get_trial(private.trial_id(trial)))
    return report


def _next_step(
    ctx: Context,
    study: optuna.Study,
    report: WorkerReport,
    *,
    stop: threading.Event | None,
    deadline: float | None,
    size: int | None,
) -> str:
    """'' to run a trial; 'wait' while other workers hold the last slots; else why this worker stops
    ('stop', 'timeout', 'exhausted', or 'done' when n_trials counted trials are finished)."""
    if stop is not None and stop.is_set():
        return "stop"
    if deadline is not None and time.time() >= deadline:
        return "timeout"
    recovered, spent = ledger.settle(study, 3 * ctx.study.heartbeat_seconds)
    report.recovered += len(recovered)
    if spent.done >= ctx.study.n_trials:
        return "done"
    exhausted = size is not None and spent.candidates >= size
    if exhausted and not spent.running:
        return "exhausted"
    return "wait" if exhausted or spent.done + spent.running >= ctx.study.n_trials else ""
