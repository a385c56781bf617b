"""Lightning callbacks that training always or optionally runs: its clock and a rich progress bar."""

from __future__ import annotations

import time

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
        self.task = self.progress.add_task(self.description, total=trainer.max_epochs, metrics="")
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
