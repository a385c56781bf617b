"""Training: a thin LightningModule, its callbacks, and the one place a Trainer is built.

Knows nothing of Optuna: the search passes callbacks in. Recipes live in recipes, devices in devices.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from mbv2_search.arch import ArchSpec
from mbv2_search.callbacks import RichEpochProgress, TrainingClock, quiet_fit
from mbv2_search.data import FolderData, TensorData
from mbv2_search.devices import configure_cpu, prefers_channels_last, rank_devices, resolve_precision
from mbv2_search.distributed import RankSync, ddp_strategy, train_distributed
from mbv2_search.errors import TrainingError
from mbv2_search.graphs import batch_sample, capture, prefers_cuda_graphs
from mbv2_search.model import build_model
from mbv2_search.noise import binomial_stderr
from mbv2_search.optim import WeightEMA, build_optimizer, build_schedule
from mbv2_search.recipes import Recipe
from mbv2_search.weights import load_into

for _name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)  # no banner per trial


class TrainingDiverged(TrainingError):
    """The loss became NaN or infinite."""


class TrainingOutOfMemory(TrainingError):
    """The GPU ran out of memory."""


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
        graph_sample: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model, self.recipe = model, recipe
        self.graph_sample = graph_sample  # a batch shape to replay from CUDA graphs
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
        synced, n = self.trainer.world_size > 1, len(labels)  # over all ranks' shards, once per epoch
        self.log("train_loss", loss.detach(), on_step=False, on_epoch=True, batch_size=n, sync_dist=synced)
        accuracy = (logits.argmax(1) == labels).float().mean()
        self.log("train_acc", accuracy, on_step=False, on_epoch=True, batch_size=n, sync_dist=synced)
        return loss

    def on_train_start(self) -> None:
        # here, on the device and after the EMA's copy (a copy must not share the captured graphs)
        if self.graph_sample is not None:
            capture(self.model, self.graph_sample, precision=str(self.trainer.precision))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model)

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], prefix: str) -> None:
        images, labels = batch
        logits = self.evaluation_model()(images)
        # every rank evaluates the whole split with the same weights (RankSync): the mean is rank 0's number
        n, synced = len(labels), self.trainer.world_size > 1
        self.log(f"{prefix}_loss", F.cross_entropy(logits, labels), batch_size=n, sync_dist=synced)
        accuracy = (logits.argmax(1) == labels).float().mean()
        self.log(f"{prefix}_acc", accuracy, batch_size=n, prog_bar=True, sync_dist=synced)
        if self.top5:
            top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean()
            self.log(f"{prefix}_acc5", top5, batch_size=n, sync_dist=synced)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        lr = self.recipe.scaled_lr(self.batch_size)
        optimizer = build_optimizer(self.model, self.recipe, lr=lr)
        scheduler = build_schedule(
            optimizer, self.recipe, lr=lr, epochs=self.epochs, steps_per_epoch=self.steps_per_epoch
        )
        if scheduler is None:
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
    cuda_graphs: bool = False  # training steps replayed from CUDA graphs
    init: str = ""  # what loading initial weights changed (the classifier re-initialised), if anything
    split_sizes: dict[str, int] = field(default_factory=dict)  # images in train, val and test
    val_acc_stderr: float = float("nan")  # binomial standard error of val_acc over the validation images

    def as_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return asdict(self)


def build_trainer(
    run_dir: Path,
    *,
    epochs: int,
    devices: Sequence[torch.device],
    precision: str,
    callbacks: Sequence[pl.Callback] = (),
    max_minutes: float | None = None,
    best_checkpoint: bool = True,
) -> pl.Trainer:
    """The one Trainer factory: CSV metrics and (best_checkpoint) the best epoch's weights in run_dir, no
    per-step overhead; DDP over several devices (distributed.py launches the ranks; training batches come
    sharded)."""
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    best = ModelCheckpoint(
        dirpath=run_dir, filename="best", monitor="val_acc", mode="max", save_top_k=1, save_weights_only=True
    )
    device = devices[0]
    return pl.Trainer(
        default_root_dir=run_dir,
        max_epochs=epochs,
        max_time={"minutes": max_minutes} if max_minutes else None,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[d.index or 0 for d in devices] if device.type == "cuda" else len(devices),
        strategy=ddp_strategy(device.type) if len(devices) > 1 else "auto",
        use_distributed_sampler=False,  # every rank evaluates the full val and test sets
        precision=precision,
        logger=CSVLogger(run_dir, name="", version="", flush_logs_every_n_steps=10_000),
        callbacks=[*([best] if best_checkpoint else []), *callbacks],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10_000,  # metrics are logged per epoch only
        deterministic=device.type == "cpu",
    )


@dataclass(frozen=True)
class TrainJob:
    """What every rank needs to train the same candidate (picklable: helpers get a copy)."""

    spec: ArchSpec
    epochs: int
    batch_size: int  # per device
    recipe: Recipe
    seed: int
    run_dir: Path
    precision: str
    memory_format: str
    compile: bool
    cuda_graphs: str
    max_minutes: float | None
    init: dict[str, Any] | None


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
    devices: int = 1,
    precision: str = "auto",
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto",
    compile: bool = False,
    cuda_graphs: Literal["auto", "on", "off"] = "auto",
    callbacks: Sequence[pl.Callback] = (),
    progress: bool = False,
    max_minutes: float | None = None,
    init: dict[str, Any] | None = None,
) -> TrainResult:
    """Train one variant and evaluate it; raises TrainingError subclasses on divergence or OOM.

    Args:
        spec: the architecture.
        data: a loaded dataset (data.load_dataset) at spec.resolution.
        epochs, batch_size: the training budget; batch_size is per device (the global batch is x devices).
        recipe: optimizer, schedule and regularization (RECIPES or custom); its lr scales with the global batch.
        seed: seeds weights, batch order and augmentation; the same seed on the CPU repeats the metrics.
        run_dir: folder for metrics.csv and best.ckpt.
        device: 'auto', 'cpu', 'cuda', 'cuda:N' or the GPUs of one run ('cuda:2,3').
        devices: train on this many devices with DDP (on the CPU: processes splitting the threads).
        precision: a Lightning precision, or 'auto'.
        memory_format: 'auto' measures on the CPU, channels_last on GPUs.
        compile: torch.compile the model.
        cuda_graphs: replay training steps from CUDA graphs; 'auto' measures (one GPU only; eager on the CPU).
        callbacks: extra Lightning callbacks (the search passes its reporter here); on rank 0 only.
        progress: show a rich progress bar over epochs.
        max_minutes: stop training after this long.
        init: initial weights in our layout (weights.read_weights), to fine-tune from.
    """
    ranks = rank_devices(device, devices)
    if len(ranks) > 1 and cuda_graphs == "on":
        raise TrainingError(f"cuda_graphs: got 'on' with {len(ranks)} devices; CUDA graphs train on one (use 'auto')")
    if len(ranks) > 1 and memory_format == "auto":  # measured once: every rank must lay out its weights alike
        channels_last = prefers_channels_last(spec, ranks[0], batch_size=batch_size)
        memory_format = "channels_last" if channels_last else "contiguous"
    job = TrainJob(
        spec,
        epochs,
        batch_size,
        recipe,
        seed,
        Path(run_dir),
        precision,
        memory_format,
        compile,
        cuda_graphs,
        max_minutes,
        init,
    )
    if len(ranks) == 1:
        return train_rank(job, data, ranks=ranks, rank=0, callbacks=callbacks, progress=progress)
    return train_distributed(train_rank, job, data, ranks=ranks, callbacks=callbacks, progress=progress)


def train_rank(
    job: TrainJob,
    data: TensorData | FolderData,
    *,
    ranks: Sequence[torch.device],
    rank: int,
    callbacks: Sequence[pl.Callback],
    progress: bool,
    before_fit: Callable[[], None] = lambda: None,
) -> TrainResult:
    """One rank's training (the only one with one device); ranks > 0 are distributed.py's helpers."""
    torch_device, world, batch_size = ranks[rank], len(ranks), job.batch_size
    run_dir = _prepare_run(torch_device, job.run_dir, job.seed)
    spec = job.spec
    if job.recipe.dropout is not None and job.recipe.dropout != spec.dropout:
        spec = replace(spec, dropout=job.recipe.dropout)
    channels_last = job.memory_format == "channels_last" or (
        job.memory_format == "auto" and prefers_channels_last(spec, torch_device, batch_size=batch_size)
    )
    model = build_model(spec)  # before the loaders: the seeded stream draws the weights first
    note = "" if job.init is None else load_into(model, job.init, source="--init")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loaders = _loaders(data, batch_size=batch_size, seed=job.seed, channels_last=channels_last, shard=(rank, world))
    precision = resolve_precision(job.precision, torch_device)
    steps_batch = min(batch_size, data.split_sizes()["train"])  # training drops the last partial batch
    # with DDP eager: its gradient hooks do not run inside replayed graphs
    graphs = world == 1 and _use_graphs(
        job.cuda_graphs, spec, torch_device, batch_size=steps_batch, precision=precision, compile=job.compile
    )
    module = Classifier(
        torch.compile(model) if job.compile else model,
        job.recipe,
        batch_size=batch_size * world,  # the global batch sets the learning rate
        epochs=job.epochs,
        steps_per_epoch=len(loaders.train),
        num_classes=data.num_classes,
        check_every=1 if torch_device.type == "cpu" else 25,
        graph_sample=batch_sample(spec, steps_batch, torch_device, channels_last=channels_last) if graphs else None,
    )
    clock = TrainingClock(torch_device.type == "cuda", ranks=world)
    shown = [RichEpochProgress()] if progress else []
    trainer = build_trainer(
        run_dir,
        epochs=job.epochs,
        devices=ranks,
        precision=precision,
        callbacks=[clock, *callbacks, *shown, *([RankSync()] if world > 1 else [])],
        max_minutes=job.max_minutes,
    )
    where = f"on {torch_device} at batch size {batch_size}" + (f" x {world} devices" if world > 1 else "")
    before_fit()
    fitted = _fit_and_test(trainer, module, loaders, f"{where}, resolution {spec.resolution}")
    result = _result(fitted, clock, device=torch_device, seed=job.seed, channels_last=channels_last, run_dir=run_dir)
    sizes = data.split_sizes()
    stderr = binomial_stderr(result.val_acc, sizes["val"])
    device_name = ",".join(map(str, ranks)) if world > 1 and torch_device.type == "cuda" else str(torch_device)
    device_name += f" x {world}" if world > 1 and torch_device.type == "cpu" else ""
    return replace(result, init=note, split_sizes=sizes, val_acc_stderr=stderr, cuda_graphs=graphs, device=device_name)


def _use_graphs(
    choice: str, spec: ArchSpec, device: torch.device, *, batch_size: int, precision: str, compile: bool
) -> bool:
    """CUDA graphs where asked for ('on') or measured faster ('auto'); never on the CPU or with torch.compile."""
    if choice == "on" and device.type != "cuda":
        raise TrainingError(f"cuda_graphs: got 'on' but the device is {device}; CUDA graphs need a GPU (use 'auto')")
    if device.type != "cuda" or compile or choice == "off":
        return False
    return choice == "on" or prefers_cuda_graphs(spec, device, batch_size=batch_size, precision=precision)


def _prepare_run(device: torch.device, run_dir: Path, seed: int) -> Path:
    """Threads and subnormals on the CPU, the run folder, and every random stream seeded."""
    if device.type == "cpu":
        configure_cpu()
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(seed, workers=True, verbose=False)
    return run_dir


class _Loaders(NamedTuple):
    train: Any
    val: Any
    test: Any


def _loaders(
    data: TensorData | FolderData, *, batch_size: int, seed: int, channels_last: bool, shard: tuple[int, int]
) -> _Loaders:
    """Shuffled, augmented training batches (this rank's share); evaluation of the whole splits at twice the
    batch size (no gradients to keep)."""
    return _Loaders(
        data.loader("train", batch_size, train=True, seed=seed, channels_last=channels_last, shard=shard),
        data.loader("val", batch_size * 2, channels_last=channels_last),
        data.loader("test", batch_size * 2, channels_last=channels_last),
    )


class _Fitted(NamedTuple):
    trainer: pl.Trainer
    fit_seconds: float
    checkpoint: str
    tested: list[dict[str, float]]


def _fit_and_test(trainer: pl.Trainer, module: Classifier, loaders: _Loaders, where: str) -> _Fitted:
    """Fit, then test the best-validation checkpoint; running out of GPU memory is the candidate's failure."""
    start = time.perf_counter()
    try:
        with quiet_fit():
            trainer.fit(module, loaders.train, loaders.val)
            fit_seconds = time.perf_counter() - start
            checkpoint = trainer.checkpoint_callback.best_model_path
            tested = trainer.test(module, loaders.test, ckpt_path=checkpoint or None, verbose=False)
    except torch.OutOfMemoryError as err:
        raise TrainingOutOfMemory(f"out of GPU memory {where}: {str(err).splitlines()[0]}") from None
    return _Fitted(trainer, fit_seconds, checkpoint, tested)


def _result(
    fitted: _Fitted, clock: TrainingClock, *, device: torch.device, seed: int, channels_last: bool, run_dir: Path
) -> TrainResult:
    best = fitted.trainer.checkpoint_callback.best_model_score
    return TrainResult(
        val_acc=float(best) if best is not None else float("nan"),
        test_acc=float(fitted.tested[0]["test_acc"]),
        epochs=fitted.trainer.current_epoch,
        train_seconds=fitted.fit_seconds,
        train_images_per_second=clock.images / clock.seconds if clock.seconds else float("nan"),
        train_step_seconds=clock.seconds,
        eval_seconds=clock.eval_seconds,
        device=str(device),
        seed=seed,
        memory_format="channels_last" if channels_last else "contiguous",
        run_dir=str(run_dir),
        checkpoint=fitted.checkpoint,
        history=clock.history,
    )
