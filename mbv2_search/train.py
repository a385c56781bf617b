"""Training: a thin LightningModule, the recipes, and the one place a Trainer is built.

Knows nothing of Optuna: the search passes callbacks in.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import platform
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from mbv2_search.arch import ArchSpec
from mbv2_search.data import FolderData, TensorData
from mbv2_search.model import build_model

for _name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)  # no banner per trial


class Recipe(BaseModel):
    """Optimizer, schedule and regularization; every field can be overridden."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizer: Literal["sgd", "rmsprop", "adamw"] = "sgd"
    lr: float = 0.1  # at reference_batch; scaled linearly by batch_size / reference_batch
    reference_batch: int = 128
    momentum: float = 0.9
    nesterov: bool = True
    rmsprop_decay: float = 0.9
    eps: float = 1e-8
    weight_decay: float = 5e-5
    schedule: Literal["onecycle", "cosine", "exponential", "constant"] = "onecycle"
    warmup_fraction: float = 0.1  # onecycle: share of steps spent rising
    gamma: float = 0.98  # exponential: decay per epoch
    label_smoothing: float = 0.1
    ema_decay: float | None = None
    dropout: float | None = None  # None: the ArchSpec's

    def with_overrides(self, overrides: dict[str, object]) -> Recipe:
        """This recipe with some fields replaced, validated (unknown fields are errors)."""
        return type(self).model_validate({**self.model_dump(), **overrides})

    def scaled_lr(self, batch_size: int) -> float:
        """Learning rate for this batch size (linear scaling rule)."""
        return self.lr * batch_size / self.reference_batch


RECIPES: dict[str, Recipe] = {
    # Short proxy runs: SGD + Nesterov, a one-cycle schedule with a short warm-up and label smoothing
    # reach 97% on digits in 10 epochs (width 0.35 at 32 px; measured against longer warm-ups and AdamW).
    "fast": Recipe(),
    # Paper section 6.1 and the TF-Slim README: RMSProp (decay 0.9, momentum 0.9), weight decay 4e-5,
    # lr 0.045 at batch 96 decayed x0.98 per epoch, label smoothing 0.1, EMA 0.9999, dropout 0.2.
    # The paper gives no epsilon; 1e-3 is a choice (TF-style RMSProp needs a large one to be stable).
    "paper": Recipe(
        optimizer="rmsprop",
        lr=0.045,
        reference_batch=96,
        momentum=0.9,
        nesterov=False,
        rmsprop_decay=0.9,
        eps=1e-3,
        weight_decay=4e-5,
        schedule="exponential",
        gamma=0.98,
        label_smoothing=0.1,
        ema_decay=0.9999,
        dropout=0.2,
    ),
}


class TrainingError(RuntimeError):
    """Training could not finish; the message says why and where."""


class TrainingDiverged(TrainingError):
    """The loss became NaN or infinite."""


class TrainingOutOfMemory(TrainingError):
    """The GPU ran out of memory."""


class WeightEMA(torch.nn.Module):
    """Exponential moving average of weights with TF's warm-up: decay_t = min(decay, (1 + t) / (10 + t))."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards the model's current weights; copy buffers (BatchNorm stats)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged = [p for p in self.module.parameters()]
        torch._foreach_lerp_(averaged, [p.detach() for p in model.parameters()], 1 - decay)
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)


class Classifier(pl.LightningModule):
    """Cross-entropy classifier around the built model; top-1 (and top-5) with prefixed names."""

    def __init__(
        self,
        model: torch.nn.Module,
        recipe: Recipe,
        *,
        batch_size: int,
        epochs: int,
        steps_per_epoch: int,
        num_classes: int,
        check_every: int = 1,
    ) -> None:
        super().__init__()
        self.model, self.recipe = model, recipe
        self.batch_size, self.epochs, self.steps_per_epoch = batch_size, epochs, steps_per_epoch
        self.top5 = num_classes > 5
        self.check_every = check_every
        self.ema = WeightEMA(model, recipe.ema_decay) if recipe.ema_decay else None

    def evaluation_model(self) -> torch.nn.Module:
        """The weights to evaluate and export: the EMA where the recipe keeps one."""
        return self.ema.module if self.ema is not None else self.model

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.recipe.label_smoothing)
        # a check costs a device sync; on a GPU it runs every check_every steps
        if batch_idx % self.check_every == 0 and not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at epoch {self.current_epoch}, step {batch_idx} (checked every {self.check_every} steps)"
            )
        self.log("train_loss", loss.detach(), on_step=False, on_epoch=True, batch_size=len(labels))
        self.log(
            "train_acc",
            (logits.argmax(1) == labels).float().mean(),
            on_step=False,
            on_epoch=True,
            batch_size=len(labels),
        )
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model)

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], prefix: str) -> None:
        images, labels = batch
        logits = self.evaluation_model()(images)
        n = len(labels)
        self.log(f"{prefix}_loss", F.cross_entropy(logits, labels), batch_size=n)
        self.log(f"{prefix}_acc", (logits.argmax(1) == labels).float().mean(), batch_size=n, prog_bar=True)
        if self.top5:
            top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean()
            self.log(f"{prefix}_acc5", top5, batch_size=n)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        recipe, params = self.recipe, self.model.parameters()
        lr = recipe.scaled_lr(self.batch_size)
        if recipe.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                params,
                lr=lr,
                momentum=recipe.momentum,
                nesterov=recipe.nesterov and recipe.momentum > 0,
                weight_decay=recipe.weight_decay,
            )
        elif recipe.optimizer == "rmsprop":
            optimizer = torch.optim.RMSprop(
                params,
                lr=lr,
                alpha=recipe.rmsprop_decay,
                momentum=recipe.momentum,
                eps=recipe.eps,
                weight_decay=recipe.weight_decay,
            )
        else:
            optimizer = torch.optim.AdamW(params, lr=lr, eps=recipe.eps, weight_decay=recipe.weight_decay)
        total = self.epochs * self.steps_per_epoch
        if recipe.schedule == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=lr, total_steps=total, pct_start=recipe.warmup_fraction
            )
        elif recipe.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        elif recipe.schedule == "exponential":
            per_step = recipe.gamma ** (1 / self.steps_per_epoch)  # x gamma per epoch, applied smoothly
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, per_step)
        else:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@dataclass
class TrainResult:
    """What one training run measured."""

    val_acc: float  # best over epochs
    test_acc: float  # with the best-validation weights
    epochs: int
    train_seconds: float  # wall time of fit, per-epoch validation included
    train_images_per_second: float  # training images / time in training steps only
    train_step_seconds: float  # time in training steps (data preparation included)
    eval_seconds: float  # time in validation and test loops
    device: str
    seed: int
    memory_format: str
    run_dir: str
    checkpoint: str
    history: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return asdict(self)


class _Clock(pl.Callback):
    """Training-step time per epoch (until validation starts) and per-epoch metrics."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.seconds, self.images, self.history = cuda, 0.0, 0, []
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
        self.images += len(batch[1])

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


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' is the first GPU where there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device: got {device!r} but no CUDA GPU is available here; use 'cpu' or 'auto'")
    return resolved


def hardware_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({torch.get_num_threads()} threads)"


def configure_cpu(threads: int | None = None) -> None:
    """Flush subnormals to zero (10x faster small-model training here) and set the thread count."""
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_FORMAT_CACHE: dict[tuple, bool] = {}


def prefers_channels_last(spec: ArchSpec, device: torch.device, batch_size: int) -> bool:
    """channels_last on GPUs; on the CPU, whichever format is faster for this model, measured.

    The probe times forward + backward at up to 16 images in both formats (cached per shape), since
    on CPUs either format can be 2x faster depending on the model; it costs about 0.1 s.
    """
    if device.type == "cuda":
        return True
    key = (
        spec.blocks,
        spec.stem_channels,
        spec.head_channels,
        spec.resolution,
        min(batch_size, 16),
        torch.get_num_threads(),
    )
    if key not in _FORMAT_CACHE:
        # on its own random stream: a probe that ran or was cached must not change the seeded run
        with torch.random.fork_rng(devices=[]):
            _FORMAT_CACHE[key] = _probe_channels_last(spec, min(batch_size, 16))
    return _FORMAT_CACHE[key]


def _probe_channels_last(spec: ArchSpec, batch_size: int) -> bool:
    model = build_model(spec)
    images = torch.randn(batch_size, 3, spec.resolution, spec.resolution)
    timings = {}
    for channels_last in (False, True):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        x = images.contiguous(memory_format=fmt)
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            model(x).sum().backward()
            seconds.append(time.perf_counter() - start)
        timings[channels_last] = min(seconds[1:])  # the first run is warm-up
    return timings[True] < timings[False]


def build_trainer(
    run_dir: Path,
    epochs: int,
    device: torch.device,
    precision: str,
    callbacks: Sequence[pl.Callback] = (),
    max_minutes: float | None = None,
) -> pl.Trainer:
    """The one Trainer factory: CSV metrics and the best checkpoint in run_dir, no per-step overhead."""
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    checkpoint = ModelCheckpoint(
        dirpath=run_dir, filename="best", monitor="val_acc", mode="max", save_top_k=1, save_weights_only=True
    )
    return pl.Trainer(
        default_root_dir=run_dir,
        max_epochs=epochs,
        max_time={"minutes": max_minutes} if max_minutes else None,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=precision,
        logger=CSVLogger(run_dir, name="", version="", flush_logs_every_n_steps=10_000),
        callbacks=[checkpoint, *callbacks],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10_000,  # metrics are logged per epoch only
        deterministic=device.type == "cpu",
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto': bf16 mixed precision on GPUs that support it, fp16 mixed on older ones, fp32 on the CPU."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def train(
    spec: ArchSpec,
    data: TensorData | FolderData,
    *,
    epochs: int,
    batch_size: int,
    recipe: Recipe,
    seed: int,
    run_dir: str | Path,
    device: str = "auto",
    precision: str = "auto",
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto",
    compile: bool = False,
    callbacks: Sequence[pl.Callback] = (),
    progress: bool = False,
    max_minutes: float | None = None,
) -> TrainResult:
    """Train one variant and evaluate it; raises TrainingError subclasses on divergence or OOM.

    Args:
        spec: the architecture.
        data: a loaded dataset (data.load_dataset) at spec.resolution.
        epochs, batch_size: the training budget.
        recipe: optimizer, schedule and regularization (RECIPES or custom).
        seed: seeds weights, batch order and augmentation; the same seed on the CPU repeats the metrics.
        run_dir: folder for metrics.csv and best.ckpt.
        device: 'auto', 'cpu', 'cuda' or 'cuda:N'.
        precision: a Lightning precision, or 'auto'.
        memory_format: 'auto' measures on the CPU, channels_last on GPUs.
        compile: torch.compile the model.
        callbacks: extra Lightning callbacks (the search passes its reporter here).
        progress: show a rich progress bar over epochs.
        max_minutes: stop training after this long.
    """
    torch_device = resolve_device(device)
    if torch_device.type == "cpu":
        configure_cpu()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(seed, workers=True, verbose=False)
    if recipe.dropout is not None and recipe.dropout != spec.dropout:
        from dataclasses import replace

        spec = replace(spec, dropout=recipe.dropout)
    channels_last = memory_format == "channels_last" or (
        memory_format == "auto" and prefers_channels_last(spec, torch_device, batch_size)
    )
    model = build_model(spec)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader = data.loader("train", batch_size, train=True, seed=seed, channels_last=channels_last)
    val_loader = data.loader("val", batch_size * 2, channels_last=channels_last)
    test_loader = data.loader("test", batch_size * 2, channels_last=channels_last)
    module = Classifier(
        torch.compile(model) if compile else model,
        recipe,
        batch_size=batch_size,
        epochs=epochs,
        steps_per_epoch=len(train_loader),
        num_classes=data.num_classes,
        check_every=1 if torch_device.type == "cpu" else 25,
    )
    clock = _Clock(torch_device.type == "cuda")
    extra = [clock, *callbacks, *([RichEpochProgress()] if progress else [])]
    trainer = build_trainer(
        run_dir, epochs, torch_device, resolve_precision(precision, torch_device), extra, max_minutes
    )
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning 2.6 on torch 2.14
            trainer.fit(module, train_loader, val_loader)
            fit_seconds = time.perf_counter() - start
            checkpoint = trainer.checkpoint_callback.best_model_path
            tested = trainer.test(module, test_loader, ckpt_path=checkpoint or None, verbose=False)
    except torch.OutOfMemoryError as err:
        raise TrainingOutOfMemory(
            f"out of GPU memory on {torch_device} at batch size {batch_size}, resolution {spec.resolution}: {str(err).splitlines()[0]}"
        ) from None
    best = trainer.checkpoint_callback.best_model_score
    return TrainResult(
        val_acc=float(best) if best is not None else float("nan"),
        test_acc=float(tested[0]["test_acc"]),
        epochs=trainer.current_epoch,
        train_seconds=fit_seconds,
        train_images_per_second=clock.images / clock.seconds if clock.seconds else float("nan"),
        train_step_seconds=clock.seconds,
        eval_seconds=clock.eval_seconds,
        device=str(torch_device),
        seed=seed,
        memory_format="channels_last" if channels_last else "contiguous",
        run_dir=str(run_dir),
        checkpoint=checkpoint,
        history=clock.history,
    )
