"""One candidate on several devices: the calling process is rank 0 and spawns N-1 helpers that run the same
training (train.train_rank) under Lightning's DDP, as an externally launched job.

Not Lightning's own launchers: 'ddp' re-runs sys.argv (our CLI or search), 'ddp_spawn' pickles the module
and loses rank 0's in-process callbacks (the search's pruner, the clock). Helpers never outlive the trial.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytorch_lightning as pl
import torch

from mbv2_search.errors import HelperFailed, TrainingError

TIMEOUT = datetime.timedelta(minutes=3)  # a collective waiting longer than this has lost a rank (NCCL's case)
READY_MINUTES = 10.0  # helpers load the data and build the model before the first collective
_ENVIRONMENT = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "RANK")


def ddp_strategy(device_type: str) -> Any:
    """DDP over a job launched here: gloo on the CPU, NCCL on GPUs; LightningEnvironment reads our variables."""
    from lightning_fabric.plugins.environments import LightningEnvironment
    from pytorch_lightning.strategies import DDPStrategy

    return DDPStrategy(
        cluster_environment=LightningEnvironment(),
        process_group_backend="nccl" if device_type == "cuda" else "gloo",
        timeout=TIMEOUT,
    )


class RankSync(pl.Callback):
    """On every rank, last among the callbacks: the same collectives at the same points, or the ranks deadlock."""

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        # DDP syncs parameters, not the BatchNorm statistics each rank updated on its own shard since the
        # last forward: rank 0's go to all, so every rank evaluates the same weights on the full val set
        for buffer in pl_module.buffers():
            torch.distributed.broadcast(buffer, src=0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        # the search's pruner runs on rank 0 only; stop all ranks if any asked (as EarlyStopping does)
        trainer.should_stop = trainer.strategy.reduce_boolean_decision(trainer.should_stop, all=False)


def free_port() -> int:
    """A TCP port free on this machine now, for the ranks to meet on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def rank_environment(rank: int, world: int, port: int) -> Iterator[None]:
    """Lightning's variables for an externally launched job; the caller's are restored (a worker trains many trials)."""
    saved = {name: os.environ.get(name) for name in _ENVIRONMENT}
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        NODE_RANK="0",
        LOCAL_RANK=str(rank),
        RANK=str(rank),
    )
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def on_device(data: Any, device: torch.device) -> Any:
    """In-memory splits moved to a device (a helper's copy travels on the CPU); image folders as they are."""
    if not hasattr(data, "train") or not hasattr(data.train, "images"):
        return data
    moved = {
        name: replace(split, images=split.images.to(device), labels=split.labels.to(device))
        for name, split in (("train", data.train), ("val", data.val), ("test", data.test))
    }
    return replace(data, **moved)


def train_distributed(
    train_rank: Callable[..., Any],
    job: Any,
    data: Any,
    *,
    ranks: Sequence[torch.device],
    callbacks: Sequence[Any],
    progress: bool,
) -> Any:
    """Train on len(ranks) devices with train_rank (train.train_rank, passed in: training imports this module):
    helpers on ranks 1.., this process on rank 0 with the callbacks."""
    world, port = len(ranks), free_port()
    threads = max(1, torch.get_num_threads() // world)  # on the CPU the ranks split this process's threads
    previous_threads, finished, group = torch.get_num_threads(), False, None
    try:
        group = _Helpers(
            train_rank, job, on_device(data, torch.device("cpu")), ranks=list(ranks), port=port, threads=threads
        )
        with rank_environment(0, world, port):
            torch.set_num_threads(threads)
            try:
                result = train_rank(
                    job, data, ranks=ranks, rank=0, callbacks=callbacks, progress=progress, before_fit=group.wait_ready
                )
                finished = True
                return result
            except Exception as err:
                # a lost connection may be a helper's failure that it has yet to report; rank 0's own is its own
                failure = group.failure(wait=0.0 if isinstance(err, TrainingError) else 10.0)
                if failure is not None:
                    raise failure from err
                raise
    finally:
        torch.set_num_threads(previous_threads)
        if group is not None:
            group.stop(finished=finished)
        if torch.distributed.is_initialized():  # the next trial makes its own group
            torch.distributed.destroy_process_group()


class _Helpers:
    """Helper processes for ranks 1..N-1, started at once; stop() ends whichever are left."""

    def __init__(
        self, train_rank: Callable[..., Any], job: Any, data: Any, *, ranks: list[torch.device], port: int, threads: int
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.messages = context.Queue()
        self.ready: set[int] = set()
        self.errors: dict[int, BaseException] = {}
        self.processes: dict[int, multiprocessing.Process] = {}
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited: Ctrl-C is rank 0's to handle
        try:
            for rank in range(1, len(ranks)):
                args = (train_rank, job, data, ranks, rank, port, threads, self.messages, os.getpid())
                process = context.Process(target=_helper_main, args=args)
                process.start()
                self.processes[rank] = process
        except BaseException:  # a signal between two starts: end those started
            self.stop(finished=False)
            raise
        finally:
            signal.signal(signal.SIGINT, previous)

    def _drain(self, timeout: float) -> None:
        with contextlib.suppress(queue.Empty):
            kind, rank, error = self.messages.get(timeout=timeout)
            if kind == "ready":
                self.ready.add(rank)
            elif kind == "error":
                self.errors[rank] = error

    def _dead(self) -> TrainingError | None:
        for rank, process in self.processes.items():
            if rank in self.errors:
                return _as_failure(rank, self.errors[rank])
            if not process.is_alive() and process.exitcode != 0:
                return HelperFailed(f"rank {rank} (pid {process.pid}) {_exit_reason(process.exitcode)} while training")
        return None

    def wait_ready(self) -> None:
        """Before the first collective: a helper that fails while preparing is reported at once, not at a timeout."""
        deadline = time.monotonic() + READY_MINUTES * 60
        while len(self.ready) < len(self.processes):
            self._drain(0.2)
            failure = self._dead()
            if failure is not None:
                raise failure
            if time.monotonic() > deadline:
                raise HelperFailed(f"helper ranks not ready after {READY_MINUTES:g} minutes")

    def failure(self, *, wait: float) -> TrainingError | None:
        """Why a helper failed, waiting up to `wait` seconds for it to say or exit (rank 0 may notice first)."""
        deadline = time.monotonic() + wait
        while True:
            self._drain(0.1)
            failure = self._dead()
            if failure is not None or time.monotonic() > deadline:
                return failure

    def stop(self, *, finished: bool) -> None:
        """End the helpers; after a finished run they get a moment to exit by themselves. SIGKILL: they hold
        nothing to save (rank 0 writes the run), and SIGTERM waits for a Python handler (Lightning installs
        one) that never runs while a rank is blocked in a collective."""
        for process in self.processes.values():
            process.join(timeout=10.0 if finished else 0.0)
            if process.is_alive():
                process.kill()
                process.join()
        self.messages.close()


def _exit_reason(code: int | None) -> str:
    return f"was killed by {signal.Signals(-code).name}" if code and code < 0 else f"exited with code {code}"


def _as_failure(rank: int, error: BaseException) -> HelperFailed | TrainingError:
    """A helper's own training failure keeps its type (divergence, out of memory); anything else is wrapped."""
    if isinstance(error, TrainingError):
        return error
    return HelperFailed(f"rank {rank} failed: {type(error).__name__}: {error}")


def _follow_parent(parent: int) -> None:
    """A helper that lost rank 0 exits: nobody would ever end it otherwise."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _helper_main(
    train_rank: Callable[..., Any],
    job: Any,
    data: Any,
    ranks: list[torch.device],
    rank: int,
    port: int,
    threads: int,
    messages: Any,
    parent: int,
) -> None:
    """A helper rank: the same training as rank 0, without its callbacks; reports ready, or its error, on `messages`."""
    threading.Thread(target=_follow_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    try:
        with rank_environment(rank, len(ranks), port):
            train_rank(
                job,
                on_device(data, ranks[rank]),
                ranks=ranks,
                rank=rank,
                callbacks=(),
                progress=False,
                before_fit=lambda: messages.put(("ready", rank, None)),
            )
    except BaseException as err:  # noqa: BLE001 - whatever it was, rank 0 must hear of it
        with contextlib.suppress(Exception):
            messages.put(("error", rank, err if _picklable(err) else RuntimeError(f"{type(err).__name__}: {err}")))
            messages.close()
            messages.join_thread()
        os._exit(1)


def _picklable(err: BaseException) -> bool:
    import pickle

    try:
        pickle.dumps(err)
    except Exception:
        return False
    return True
