"""Workers: the trial loop, heartbeats, and local worker processes watched by their parent."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from mbv2_search import ledger, space, trial_index
from mbv2_search import optuna_private as private
from mbv2_search.interrupts import Interrupted, SignalGuard
from mbv2_search.knobs import ArchError
from mbv2_search.search import Context, load_context, space_size
from mbv2_search.storage import open_study


class Heartbeat:
    """Writes a timestamp to the running trial every few seconds, so other workers can tell it is alive,
    and meanwhile re-queues the trials of workers that are gone (so that even during a long training
    every live worker keeps watch)."""

    def __init__(self, trial: optuna.Trial, seconds: float) -> None:
        self.trial, self.seconds = trial, seconds
        self.stop_event = threading.Event()
        ledger.set_attrs(
            trial.study, private.trial_id(trial), attrs={ledger.WORKER: ledger.worker_id(), "heartbeat": time.time()}
        )
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stop_event.wait(self.seconds):
            with contextlib.suppress(Exception):  # a storage hiccup must not kill training; the next beat retries
                self.trial.set_user_attr("heartbeat", time.time())
                ledger.recover_stale(self.trial.study, 3 * self.seconds)

    def stop(self) -> None:
        """Stop beating."""
        self.stop_event.set()
        self.thread.join()


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


def _candidate_failures() -> tuple[type[BaseException], ...]:
    """Failures that are the candidate's own (counted): divergence, out of memory, an impossible architecture."""
    from mbv2_search.train import TrainingDiverged, TrainingOutOfMemory

    return (TrainingDiverged, TrainingOutOfMemory, ArchError)


def _tell(study: optuna.Study, trial: optuna.Trial, **outcome: Any) -> None:
    """Finish the trial, unless another worker took it over meanwhile (its heartbeat looked stale)."""
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        study.tell(trial, skip_if_finished=True, **outcome)


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    *,
    evaluate: Callable,
    guard: SignalGuard,
    report: WorkerReport,
    heartbeat_seconds: float,
) -> None:
    """Evaluate one trial and record its outcome; interruptions and environment failures re-queue it."""
    from mbv2_search.objective import DuplicateCandidate

    heartbeat = None
    try:
        heartbeat = Heartbeat(trial, heartbeat_seconds)
        with guard.interruptible():
            values = evaluate(trial)
    except DuplicateCandidate as duplicate:
        trial.set_user_attr(ledger.DUPLICATE, duplicate.original)
        _tell(study, trial, state=TrialState.FAIL)
        report.duplicates, report.streak = report.duplicates + 1, report.streak + 1
        return
    except optuna.TrialPruned:
        _tell(study, trial, state=TrialState.PRUNED)
        report.pruned += 1
    except _candidate_failures() as err:
        trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
        _tell(study, trial, state=TrialState.FAIL)
        report.failed += 1
    except optuna.exceptions.UpdateFinishedTrialError:  # another worker re-queued it: our heartbeat looked stale
        return
    except BaseException as err:  # a signal, the data, the disk, the storage, a bug: never counted, run again
        why = f"interrupted by {err}" if isinstance(err, Interrupted) else f"{type(err).__name__}: {err}"
        with contextlib.suppress(Exception):  # the storage may be what failed; then the trial goes stale
            ledger.requeue(study, private.trial_id(trial), reason=f"{why}; it runs again on resume")
        raise
    else:
        _tell(study, trial, values=values)
        report.ran += 1
    finally:
        if heartbeat is not None:
            heartbeat.stop()
    report.streak = 0


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
) -> WorkerReport:
    """Run trials until the study has n_trials counted ones finished, the space is exhausted, or it is stopped.

    Args:
        ctx: the loaded study.
        device: training device for this worker ('auto', 'cpu', 'cuda:N').
        threads: CPU threads for this worker (workers split the cores).
        on_event: called with ('start', trial) and ('end', frozen trial) for progress displays.
        stop: set to stop after the running trial.
        guard: the signal handling (default: SIGINT and SIGTERM raise Interrupted after re-queueing).
    """
    from mbv2_search.devices import configure_cpu
    from mbv2_search.objective import Evaluator

    configure_cpu(threads)
    study = open_study(ctx)
    evaluate = Evaluator(ctx, device)
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
            if size is not None and report.streak >= 2 and ctx.study.sampler.name != "grid":
                _nudge(ctx, study)
            guard.check()
            trial = trial_index.ask(study)  # Optuna's ask scans every trial for the queue
            if ledger.held_before(study, trial.number) >= n_trials:
                # other workers took the last slots between our count and our ask: give this one back
                ledger.requeue(
                    study, private.trial_id(trial), reason="surplus: earlier trials hold every slot of n_trials"
                )
                continue
            if on_event:
                on_event("start", trial)
            run_trial(study, trial, evaluate=evaluate, guard=guard, report=report, heartbeat_seconds=beat)
            if on_event:
                on_event("end", private.storage_of(study).get_trial(private.trial_id(trial)))
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


def _worker_process(path: str, storage_url: str, reports_root: str, device: str, threads: int) -> None:
    """Entry point of a spawned worker: its parent turns Ctrl-C into SIGTERM for it; exit codes tell the parent why."""
    from mbv2_search.errors import environment_message

    ctx = load_context(path, storage_url, reports_root=reports_root)
    threading.Thread(target=_follow_parent, args=(os.getppid(),), daemon=True).start()
    try:
        work(ctx, device=device, threads=threads)  # SIGINT stays ignored, inherited from start_worker
    except Interrupted as err:
        sys.exit(err.exit_code)
    except Exception as err:
        message = environment_message(err)
        if message is None:
            raise
        print(f"mbv2-search: worker {os.getpid()}: error: {message}", file=sys.stderr, flush=True)
        sys.exit(1)


def _follow_parent(parent: int) -> None:
    """Stop as on SIGTERM once the parent is gone (kill -9 of `run`): no orphan trains on unwatched."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def worker_devices(device: str, workers: int) -> list[str]:
    """One GPU per worker where there are GPUs (round robin), else the CPU for all."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]
    return [device if device != "auto" else "cpu"] * workers


def start_worker(ctx: Context, device: str, *, threads: int, reports_root: str | Path) -> multiprocessing.Process:
    """Spawn one worker process; it starts with SIGINT ignored (inherited), so only its parent decides."""
    process = multiprocessing.get_context("spawn").Process(
        target=_worker_process, args=(str(ctx.path), ctx.storage_url, str(reports_root), device, threads)
    )
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    return process


def start_workers(ctx: Context, workers: int, *, reports_root: str | Path = "reports") -> list[multiprocessing.Process]:
    """Spawn local worker processes that split the CPU cores (or take one GPU each)."""
    from mbv2_search.devices import available_cores

    open_study(ctx)  # create it once, before workers race to
    threads = max(1, available_cores() // workers)
    return [
        start_worker(ctx, device, threads=threads, reports_root=reports_root)
        for device in worker_devices(ctx.study.training.device, workers)
    ]


def _exit_reason(code: int) -> str:
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"


def supervise(
    ctx: Context,
    workers: int,
    *,
    reports_root: str | Path = "reports",
    on_tick: Callable[[], None] | None = None,
    on_note: Callable[[str], None] = print,
) -> tuple[list[str], str]:
    """Run local workers to the end; returns the failure that stopped the run ([] when none) and why
    the workers stopped short of n_trials without one ('timeout', as WorkerReport.stopped, or '').

    A worker that dies is noticed at once and its trial re-queued. A worker stopped by a signal of its
    own (kill -9, the OOM killer, a SIGTERM) is replaced, up to `workers` times in one run; one that
    failed (the data, the disk, the storage: exit 1) stops the run, as it would with one worker. On
    SIGINT or SIGTERM every worker gets SIGTERM, re-queues its trial and exits; then Interrupted is
    raised here.
    """
    from mbv2_search.devices import available_cores

    study = open_study(ctx)
    threads = max(1, available_cores() // workers)
    alive = {
        start_worker(ctx, d, threads=threads, reports_root=reports_root): d
        for d in worker_devices(ctx.study.training.device, workers)
    }
    replaced, started = 0, time.time()
    with SignalGuard() as guard:
        try:
            while alive:
                guard.check()
                for process in [p for p in alive if not p.is_alive()]:
                    device, code = alive.pop(process), process.exitcode
                    if code == 0:
                        continue
                    what = f"worker {process.pid} {_exit_reason(code)}"
                    lost = ledger.requeue_worker(study, process.pid, reason=what)
                    on_note(what + (f"; trial {', '.join(map(str, lost))} will run again" if lost else ""))
                    if (code < 0 or code in (130, 143)) and replaced < workers:
                        replaced += 1
                        alive[start_worker(ctx, device, threads=threads, reports_root=reports_root)] = device
                    else:
                        _stop_all(study, list(alive))
                        return [what], ""
                if on_tick:
                    on_tick()
                time.sleep(0.5)
        except Interrupted:
            _stop_all(study, list(alive))
            raise
    timeout = ctx.study.timeout_minutes
    return [], "timeout" if timeout and time.time() - started >= timeout * 60 else ""


def _stop_all(study: optuna.Study, processes: list[multiprocessing.Process]) -> None:
    """SIGTERM every worker, wait for each to re-queue its trial, and re-queue what is left RUNNING."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()
            process.join()
        with contextlib.suppress(Exception):
            ledger.requeue_worker(study, process.pid, reason="interrupted: its worker was stopped")
