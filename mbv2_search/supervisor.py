"""Local worker processes watched by their parent: spawned on the cores or GPUs, replaced when they die,
stopped together on Ctrl-C, and packed several to a GPU, backing off when a GPU runs out of memory."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import optuna

from mbv2_search import ledger
from mbv2_search.interrupts import Interrupted, SignalGuard
from mbv2_search.search import Context, load_context
from mbv2_search.storage import open_study
from mbv2_search.workers import GpuCrowded, work

EXIT_CROWDED = 75  # a packed worker ran out of GPU memory (EX_TEMPFAIL): its trial is re-queued, it is not replaced


def _worker_process(path: str, storage_url: str, reports_root: str, device: str, threads: int, packed: bool) -> None:
    """Entry point of a spawned worker: its parent turns Ctrl-C into SIGTERM for it; exit codes tell the parent why."""
    from mbv2_search.errors import environment_message

    ctx = load_context(path, storage_url, reports_root=reports_root)
    threading.Thread(target=_follow_parent, args=(os.getppid(),), daemon=True).start()
    try:
        work(ctx, device=device, threads=threads, packed=packed)  # SIGINT stays ignored, inherited from start_worker
    except Interrupted as err:
        sys.exit(err.exit_code)
    except GpuCrowded:
        sys.exit(EXIT_CROWDED)
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


def worker_devices(device: str, workers: int, *, per_gpu: int = 1, per_trial: int = 1) -> list[str]:
    """Where there are GPUs: per_gpu workers on each (when per_gpu > 1), else `workers` round robin; with
    per_trial N > 1, the GPUs go in groups of N ('cuda:0,1'), GPUs // N of them, and a worker per group
    (per_gpu on each). Without GPUs (or with device 'cpu'), the CPU for all `workers` (each trial's N
    processes then split its worker's threads)."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if per_trial > gpus:
            from mbv2_search.errors import TrainingError

            raise TrainingError(f"training.devices_per_trial: got {per_trial} but this machine has {gpus} GPUs")
        groups = [
            ",".join(f"cuda:{g}" for g in range(start, start + per_trial))
            for start in range(0, gpus - per_trial + 1, per_trial)
        ]
        if per_gpu > 1 or per_trial > 1:
            return [group for group in groups for _ in range(per_gpu)]
        return [groups[i % len(groups)] for i in range(workers)]
    return [device if device != "auto" else "cpu"] * workers


def start_worker(
    ctx: Context, device: str, *, threads: int, reports_root: str | Path, packed: bool = False
) -> multiprocessing.Process:
    """Spawn one worker process; it starts with SIGINT ignored (inherited), so only its parent decides."""
    process = multiprocessing.get_context("spawn").Process(
        target=_worker_process, args=(str(ctx.path), ctx.storage_url, str(reports_root), device, threads, packed)
    )
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    return process


def start_workers(
    ctx: Context, workers: int, *, reports_root: str | Path = "reports", per_gpu: int = 1
) -> list[multiprocessing.Process]:
    """Spawn local worker processes that split the CPU cores (or share the GPUs, per_gpu to each)."""
    open_study(ctx)  # create it once, before workers race to
    devices = _devices(ctx, workers, per_gpu=per_gpu)
    threads, crowd = worker_threads(len(devices)), Counter(devices)
    return [start_worker(ctx, d, threads=threads, reports_root=reports_root, packed=_packed(d, crowd)) for d in devices]


def _devices(ctx: Context, workers: int, *, per_gpu: int) -> list[str]:
    training = ctx.study.training
    return worker_devices(training.device, workers, per_gpu=per_gpu, per_trial=training.devices_per_trial)


def worker_threads(workers: int) -> int:
    """CPU threads for each of `workers` processes: the cores split evenly."""
    from mbv2_search.devices import available_cores

    return max(1, available_cores() // workers)


def _packed(device: str, crowd: Counter) -> bool:
    """A worker shares its GPU: running out of memory may be its neighbours' doing, not its candidate's."""
    return device.startswith("cuda") and crowd[device] > 1


def _exit_reason(code: int) -> str:
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"


def supervise(
    ctx: Context,
    workers: int,
    *,
    reports_root: str | Path = "reports",
    per_gpu: int = 1,
    on_tick: Callable[[], None] | None = None,
    on_note: Callable[[str], None] = print,
) -> tuple[list[str], str]:
    """Run local workers to the end; returns the failure that stopped the run ([] when none) and why
    the workers stopped short of n_trials without one ('timeout', as WorkerReport.stopped, or '').

    A worker that dies is noticed at once and its trial re-queued. A worker stopped by a signal of its
    own (kill -9, the OOM killer, a SIGTERM) is replaced, up to `workers` times in one run; one that
    failed (the data, the disk, the storage: exit 1) stops the run, as it would with one worker. A
    worker sharing its GPU that ran out of GPU memory is not replaced: its GPU keeps one worker fewer
    (the last one left runs alone, where running out of memory is its candidate's failure). On SIGINT
    or SIGTERM every worker gets SIGTERM, re-queues its trial and exits; then Interrupted is raised here.
    """
    study = open_study(ctx)
    devices = _devices(ctx, workers, per_gpu=per_gpu)
    threads, crowd = worker_threads(len(devices)), Counter(devices)

    def start(device: str) -> multiprocessing.Process:
        return start_worker(ctx, device, threads=threads, reports_root=reports_root, packed=_packed(device, crowd))

    alive = {start(d): d for d in devices}
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
                    if code == EXIT_CROWDED:
                        crowd[device] -= 1
                        again = f"; trial {', '.join(map(str, lost))} will run again" if lost else ""
                        on_note(
                            f"worker {process.pid} ran out of GPU memory on {device}{again}; {crowd[device]} left there"
                        )
                        if not crowd[device]:  # the trial runs again alone, where out of memory is its own failure
                            crowd[device] = 1
                            alive[start(device)] = device
                        continue
                    on_note(what + (f"; trial {', '.join(map(str, lost))} will run again" if lost else ""))
                    if (code < 0 or code in (130, 143)) and replaced < len(devices):
                        replaced += 1
                        alive[start(device)] = device
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
