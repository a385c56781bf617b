"""Lightning callbacks that training always or optionally runs: its clock, a rich progress bar, and the
checkpoint an interrupted run resumes from."""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class TrainingClock(pl.Callback):
    """Training-step time per epoch (until validation starts), evaluation time, and per-epoch metrics."""

    def __init__(self, cuda: bool, *, ranks: int = 1) -> None:
        self.cuda, self.seconds, self.images, self.history = cuda, 0.0, 0, []
        self.ranks = ranks  # with DDP every rank trains a batch this size per step: images count for all
        self._start: float | None = None
        self._epoch_seconds, self._epoch_images = 0.0, 0
        self.eval_seconds, self._eval_start = 0.0, 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._epoch_images = self._now(), self.images

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[1]) * self.ranks

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        now = self._now()
        if self._start is not None:  # validation inside fit: the epoch's training part is over
            self._epoch_seconds = now - self._start
            self.seconds += self._epoch_seconds
            self._start = None
        self._eval_start = now

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.eval_seconds += self._now() - self._eval_start

    on_test_epoch_end = on_validation_epoch_end

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._eval_start = self._now()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # runs after the epoch's validation (Lightning 2.x), when both train_* and val_* are final
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train_", "val_"))}
        rate = (self.images - self._epoch_images) / self._epoch_seconds if self._epoch_seconds else float("nan")
        self.history.append({"epoch": trainer.current_epoch, **metrics, "train_images_per_second": rate})

    def state_dict(self) -> dict[str, Any]:  # a resumed run counts and reports the epochs before it too
        return {
            "seconds": self.seconds,
            "images": self.images,
            "eval_seconds": self.eval_seconds,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds, self.images, self.eval_seconds = state["seconds"], state["images"], state["eval_seconds"]
        self.history = list(state["history"])


class EpochCheckpoint(pl.callbacks.Checkpoint):
    """The whole training state after every epoch, written whole (a temporary file renamed: a kill while
    writing leaves the previous epoch's), so an interrupted run resumes from its last finished epoch.

    It keeps the random streams Lightning does not (the global generator and the loader's own), so the
    resumed run trains as the uninterrupted one would have; `stamp` is stored beside them (what the
    checkpoint was made for). A Checkpoint runs after the other callbacks: the clock's epoch is in it.
    """

    def __init__(self, path: Path, *, generators: Sequence[torch.Generator] = (), stamp: dict[str, Any]) -> None:
        self.path, self.generators, self.stamp = path, list(generators), stamp
        self.before, self._start = 0.0, time.perf_counter()

    @property
    def seconds(self) -> float:
        """Wall time in fit, over this run and the runs it resumes."""
        return self.before + time.perf_counter() - self._start

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        partial = self.path.with_suffix(".partial")
        trainer.save_checkpoint(partial)
        os.replace(partial, self.path)

    def state_dict(self) -> dict[str, Any]:
        streams = [g.get_state() for g in self.generators]
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
        return {"seconds": self.seconds, "torch": torch.get_rng_state(), "cuda": cuda, "streams": streams, **self.stamp}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.before = state["seconds"]
        torch.set_rng_state(state["torch"])
        if state["cuda"]:
            torch.cuda.set_rng_state_all(state["cuda"])
        for generator, stream in zip(self.generators, state["streams"], strict=True):
            generator.set_state(stream)


def resume_point(path: Path) -> dict[str, Any] | None:
    """What an EpochCheckpoint file holds about itself (its stamp, the epochs done), None where there is none."""
    if not path.is_file():
        return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors not read
    state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith(EpochCheckpoint.__name__))
    return {**state, "epochs": checkpoint["epoch"] + 1}


class RichEpochProgress(pl.Callback):
    """One rich progress bar over epochs with the live metrics (refreshes per epoch, not per step)."""

    def __init__(self, description: str = "training") -> None:
        self.description = description
        self.progress = None

    def on_train_start(self, trainer, pl_module) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[metrics]}"),
        )
        done = trainer.current_epoch  # a resumed run starts where the checkpoint ended
        self.task = self.progress.add_task(self.description, total=trainer.max_epochs, completed=done, metrics="")
        self.progress.start()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.progress is None:
            return
        shown = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k in ("train_loss", "train_acc", "val_acc")
        }
        text = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
        self.progress.update(self.task, completed=trainer.current_epoch + 1, metrics=text)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.progress is not None:
            self.progress.stop()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)  # leave the terminal clean before the error is shown


@contextlib.contextmanager
def quiet_fit() -> Iterator[None]:
    """Lightning's warnings that say nothing to a user of ours, silenced around fit and test."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning 2.6 on torch 2.14
        warnings.filterwarnings("ignore", message=".*in eval mode at the start of training.*")  # the EMA copy
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # a rerun of an interrupted run
        warnings.filterwarnings("ignore", message=".*dirpath has changed.*")  # resumed in a moved study folder
        yield
