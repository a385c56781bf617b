"""Training throughput of the project's path against (a) a plain PyTorch loop and (b) the naive
Optuna/Lightning-example path, in one run, on the digits data. Prints images/second and ratios.

(a) plain: the same model, optimizer, schedule, on-device tensors and memory format, in a hand loop.
(b) naive: a DataLoader over a Dataset with per-image torchvision transforms, a default Trainer
    (progress bar, model summary, per-step logging), default memory format, subnormals not flushed.
Each figure is the median over the epochs after the first (warm-up) of training-step throughput.

Usage: python benchmarks/bench_train.py [--epochs 4] [--configs 0.35:32,1.0:32,0.35:64,1.0:64]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mbv2_search.arch import build_spec  # noqa: E402
from mbv2_search.callbacks import TrainingClock  # noqa: E402
from mbv2_search.data import TensorData, load_digits  # noqa: E402
from mbv2_search.devices import configure_cpu, prefers_channels_last  # noqa: E402
from mbv2_search.knobs import Knobs  # noqa: E402
from mbv2_search.model import build_model  # noqa: E402
from mbv2_search.recipes import RECIPES  # noqa: E402
from mbv2_search.train import Classifier, train  # noqa: E402

BATCH = 64


def project(
    spec, data: TensorData, epochs: int, device: str = "cpu", batch: int = BATCH, compile: bool = False
) -> tuple[float, str]:
    """The product's path: mbv2_search.train.train; per-epoch training-step throughput and the memory
    format it chose."""
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(
            spec,
            data,
            epochs=epochs,
            batch_size=batch,
            recipe=RECIPES["fast"],
            seed=0,
            run_dir=run_dir,
            device=device,
            compile=compile,
        )
    return statistics.median(h["train_images_per_second"] for h in result.history[1:]), result.memory_format


def plain(
    spec,
    data: TensorData,
    epochs: int,
    device: str = "cpu",
    batch: int = BATCH,
    bf16: bool | None = None,
    channels_last: bool | None = None,
) -> float:
    """A hand-written loop over the same model, tensors, optimizer and memory format. By default as the
    project's path chooses: bf16 autocast on a GPU, the memory format its probe prefers."""
    dev = torch.device(device)
    if dev.type == "cpu":
        configure_cpu()
    torch.manual_seed(0)
    if channels_last is None:
        channels_last = prefers_channels_last(spec, dev, batch_size=batch)
    model = build_model(spec).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = data.loader("train", batch, train=True, seed=0, channels_last=channels_last)
    module = Classifier(
        model, RECIPES["fast"], batch_size=batch, epochs=epochs, steps_per_epoch=len(loader), num_classes=10
    )
    setup = module.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    cuda = dev.type == "cuda"
    bf16 = cuda if bf16 is None else bf16
    rates = []
    for _ in range(epochs):
        model.train()
        if cuda:
            torch.cuda.synchronize()
        start, images = time.perf_counter(), 0
        for x, y in loader:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            images += len(y)
        if cuda:
            torch.cuda.synchronize()
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates[1:])


class _PerImage(torch.utils.data.Dataset):
    """What the examples do: one image at a time through torchvision transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shift: int) -> None:
        from torchvision import transforms

        self.images, self.labels = images.cpu(), labels.cpu()
        size = images.shape[-1]
        self.transform = transforms.RandomAffine(0, translate=(shift / size, shift / size))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]).expand(3, -1, -1), self.labels[index]


class _NaiveModule(pl.LightningModule):
    def __init__(self, model, epochs: int, steps: int) -> None:
        super().__init__()
        self.model, self.epochs, self.steps = model, epochs, steps

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("train_loss", loss)  # per step, as the examples do
        return loss

    def configure_optimizers(self):
        return Classifier(
            self.model,
            RECIPES["fast"],
            batch_size=BATCH,
            epochs=self.epochs,
            steps_per_epoch=self.steps,
            num_classes=10,
        ).configure_optimizers()


def naive(spec, data: TensorData, epochs: int) -> float:
    """DataLoader + per-image transforms + default Trainer, subnormals not flushed."""
    torch.set_flush_denormal(False)
    torch.manual_seed(0)
    dataset = _PerImage(data.train.images, data.train.labels, shift=round(data.translate * data.resolution))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)
    clock = TrainingClock(cuda=False)
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            default_root_dir=root,
            callbacks=[clock, _EpochRates(clock)],
        )
        trainer.fit(_NaiveModule(build_model(spec), epochs, len(loader)), loader)
    torch.set_flush_denormal(True)
    return statistics.median(clock.rates[1:])


class _EpochRates(pl.Callback):
    """Per-epoch training throughput for a run without validation."""

    def __init__(self, clock: TrainingClock) -> None:
        clock.rates = []
        self.clock = clock

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start, self.images = time.perf_counter(), self.clock.images

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.clock.rates.append((self.clock.images - self.images) / (time.perf_counter() - self.start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--configs", default="0.35:32,1.0:32,0.35:64,1.0:64")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; digits, batch {BATCH}, {args.epochs} epochs (first is warm-up)"
    )
    print("| width | res | format | project img/s | plain img/s | naive img/s | project / plain | project / naive |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for config in args.configs.split(","):
        width, resolution = float(config.split(":")[0]), int(config.split(":")[1])
        spec = build_spec(Knobs(width=width, resolution=resolution, num_classes=10))
        data = load_digits(resolution, torch.device("cpu"))
        ours, memory_format = project(spec, data, args.epochs)
        hand = plain(spec, data, args.epochs)
        slow = naive(spec, data, args.epochs)
        print(
            f"| {width} | {resolution} | {memory_format} | {ours:,.0f} | {hand:,.0f} | {slow:,.0f} | {ours / hand:.2f}x | {ours / slow:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
