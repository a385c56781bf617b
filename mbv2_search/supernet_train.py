"""Training a supernet with the sandwich rule and in-place distillation (BigNAS, Yu et al. 2020, section 3.1).

Each step trains the largest member on the labels, then the smallest and a few random members on the
largest's predictions, accumulating their gradients into one optimizer step of the shared weights. The
recipe's optimizer, schedule, label smoothing and dropout apply as to a stand-alone candidate; the weight
EMA does not (members would share one average of weights that each of them moves differently).
"""

from __future__ import annotations

import contextlib
import csv
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from mbv2_search.arch import ArchSpec
from mbv2_search.callbacks import EpochCheckpoint, RichEpochProgress, TrainingClock, quiet_fit
from mbv2_search.data import resize
from mbv2_search.optim import build_optimizer, build_schedule
from mbv2_search.recipes import Recipe
from mbv2_search.supernet import SuperNet, calibration_batches, recalibrate

LAST = "last.ckpt"  # the last finished epoch's training state, in the run folder


@dataclass(frozen=True)
class Sandwich:
    """What one training step runs: the largest, the smallest and `random_members` drawn from `draw`."""

    largest: ArchSpec
    smallest: ArchSpec
    draw: Callable[[random.Random], ArchSpec]  # a uniformly random member
    random_members: int = 2
    distill: bool = True  # the smaller members learn the largest's predictions (in-place distillation)
    calibration_batches: int = 8  # training batches that recompute BatchNorm statistics before evaluating


class SandwichModule(pl.LightningModule):
    """The supernet under the sandwich rule; validation reports the largest member, recalibrated."""

    def __init__(
        self,
        supernet: SuperNet,
        recipe: Recipe,
        sandwich: Sandwich,
        *,
        seed: int,
        calibration: Callable[[], Iterable] = tuple,
        **budget: int,
    ) -> None:
        super().__init__()
        self.supernet, self.recipe, self.sandwich = supernet, recipe, sandwich
        self.budget = budget  # batch_size, epochs, steps_per_epoch
        self.rng = random.Random(seed)  # which random members each step trains: seeded, so runs repeat
        self.calibration = calibration  # gives the training batches that recompute BatchNorm before validation
        self.automatic_optimization = False

    def members(self) -> list[ArchSpec]:
        """This step's members, largest first (its predictions teach the others)."""
        drawn = [self.sandwich.draw(self.rng) for _ in range(self.sandwich.random_members)]
        return [self.sandwich.largest, self.sandwich.smallest, *drawn]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        optimizer = self.optimizers()
        optimizer.zero_grad()
        teacher = None
        for member in self.members():
            # shrunk from the largest member's batch: antialiased, as PIL shrinks
            logits = self.supernet(resize(images, member.resolution, antialias=True), member)
            if teacher is None or not self.sandwich.distill:
                loss = F.cross_entropy(logits, labels, label_smoothing=self.recipe.label_smoothing)
                teacher = logits.detach().softmax(1) if teacher is None else teacher
            else:
                loss = torch.sum(-teacher * logits.log_softmax(1), dim=1).mean()
            if not torch.isfinite(loss):
                from mbv2_search.train import TrainingDiverged

                raise TrainingDiverged(f"supernet loss became {loss.item()} at epoch {self.current_epoch}")
            self.manual_backward(loss)
            if member is self.sandwich.largest:
                self.log("train_loss", loss.detach(), on_step=False, on_epoch=True, batch_size=len(labels))
        optimizer.step()
        schedule = self.lr_schedulers()
        if schedule is not None:
            schedule.step()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["member_draws"] = self.rng.getstate()  # a resumed run draws the members this one would have

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.rng.setstate(checkpoint["member_draws"])

    def on_validation_epoch_start(self) -> None:
        recalibrate(self.supernet.net, self.calibration())

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        accuracy = (self.supernet.net(images).argmax(1) == labels).float().mean()
        self.log("val_acc", accuracy, batch_size=len(labels), prog_bar=True)

    def configure_optimizers(self):
        lr = self.recipe.scaled_lr(self.budget["batch_size"])
        optimizer = build_optimizer(self.supernet.net, self.recipe, lr=lr)
        schedule = build_schedule(
            optimizer, self.recipe, lr=lr, epochs=self.budget["epochs"], steps_per_epoch=self.budget["steps_per_epoch"]
        )
        return optimizer if schedule is None else {"optimizer": optimizer, "lr_scheduler": schedule}


@dataclass
class SupernetResult:
    """What training the supernet measured."""

    val_acc: float  # the largest member's, recalibrated, after the last epoch
    epochs: int
    train_seconds: float
    device: str
    seed: int
    history: list[dict[str, float]] = field(default_factory=list)


def train_supernet(
    supernet: SuperNet,
    data,
    sandwich: Sandwich,
    *,
    recipe: Recipe,
    epochs: int,
    batch_size: int,
    seed: int,
    run_dir: Path,
    device: torch.device,
    precision: str = "auto",
    progress: bool = False,
    stamp: dict[str, Any] | None = None,
    resume: dict[str, Any] | None = None,
) -> SupernetResult:
    """Train the supernet in place on data at the largest member's resolution (data.load_dataset).

    Args:
        supernet: the untrained supernet (its weights are seeded by the caller).
        data: the study's data at the largest member's resolution.
        sandwich: the members each step trains.
        recipe, epochs, batch_size, seed: as for a stand-alone candidate.
        run_dir: where Lightning's metrics go, and the checkpoint of the last finished epoch (last.ckpt) that
            an interrupted run resumes from.
        device: the device the data lives on.
        precision: a Lightning precision, or 'auto'.
        progress: show a rich progress bar over epochs.
        stamp: stored in the checkpoint (what it was made for).
        resume: what callbacks.resume_point read of run_dir's last.ckpt (the caller checked its stamp) to
            go on from it; None trains from the first epoch.
    """
    from mbv2_search.devices import resolve_precision
    from mbv2_search.train import _prepare_run, build_trainer

    run_dir = _prepare_run(device, run_dir, seed)
    supernet.to(device)
    train_batches = data.loader("train", batch_size, train=True, seed=seed)
    module = SandwichModule(
        supernet,
        recipe,
        sandwich,
        seed=seed,
        calibration=lambda: calibration_batches(data, batch_size, sandwich.calibration_batches),
        batch_size=batch_size,
        epochs=epochs,
        steps_per_epoch=len(train_batches),
    )
    clock = TrainingClock(device.type == "cuda")
    streams = [getattr(train_batches, k, None) for k in ("generator", "augmentation")]  # a loader's own
    checkpoint = EpochCheckpoint(run_dir / LAST, generators=[g for g in streams if g is not None], stamp=stamp or {})
    trainer = build_trainer(
        run_dir,
        epochs=epochs,
        devices=[device],
        precision=resolve_precision(precision, device),
        callbacks=[clock, checkpoint, *([RichEpochProgress("supernet")] if progress else [])],
        best_checkpoint=False,  # the supernet's result is its last epoch (supernet.pt), not its best
    )
    resume_from = run_dir / LAST if resume else None
    with quiet_fit(), _metrics_kept(run_dir / "metrics.csv", resume["epochs"] if resume else 0):
        trainer.fit(module, train_batches, data.loader("val", batch_size * 2), ckpt_path=resume_from, weights_only=True)
    supernet.eval()
    last = clock.history[-1].get("val_acc", float("nan")) if clock.history else float("nan")
    history = list(clock.history)
    return SupernetResult(last, trainer.current_epoch, checkpoint.seconds, str(device), seed, history=history)


@contextlib.contextmanager
def _metrics_kept(path: Path, epochs_done: int) -> Iterator[None]:
    """Lightning's CSV logger deletes the metrics.csv it finds: the rows of the epochs before a resume are
    put back in front of the resumed run's (also where that one is interrupted in turn)."""
    earlier = _rows(path, below=epochs_done) if epochs_done else []
    try:
        yield
    finally:
        if earlier:
            rows = earlier + _rows(path)
            with path.open("w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
                writer.writeheader()
                writer.writerows(rows)


def _rows(path: Path, *, below: int | None = None) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return [row for row in csv.DictReader(file) if below is None or int(row.get("epoch") or 0) < below]
