"""GPU training throughput: the project's path (on-device data, bf16, channels_last) vs a DataLoader
baseline (CPU tensors through a DataLoader, fp32, default memory format, default Trainer settings).

Runs on digits and on CIFAR-shaped random tensors (50,000 x 3 x 32 x 32, 10 classes) at 32 px with
the CIFAR strides. Prints images/second (median over epochs after the first) and the ratio.

With --candidates: distinct candidates per hour of a real search (`mbv2-search run`, random sampler,
widths 0.35-1.0, 5 epochs of CIFAR-shaped random data written in the CIFAR-10 python format) for K
workers per GPU, eager vs CUDA graphs; the ratio is against one eager worker, measured in the same run.

Usage: python benchmarks/bench_gpu.py [--device cuda] [--epochs 4] [--images 50000]
       python benchmarks/bench_gpu.py --candidates [--workers-per-gpu 1,2,4,8] [--epochs 5]
"""

from __future__ import annotations

import argparse
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
from mbv2_search.data import Split, TensorData, load_digits  # noqa: E402
from mbv2_search.knobs import Knobs
from mbv2_search.model import build_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_candidates  # noqa: E402
import bench_train  # noqa: E402
from bench_train import plain  # noqa: E402

BATCH = 256


def random_cifar(images: int, device: torch.device) -> TensorData:
    """CIFAR-shaped uint8 tensors with random labels: measures speed, not accuracy."""
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
        return Split(x.to(device), torch.randint(0, 10, (n,), generator=generator).to(device))

    return TensorData(
        "random-cifar",
        split(images),
        split(images // 10),
        split(images // 10),
        10,
        (0.5,) * 3,
        (0.25,) * 3,
        32,
        flip=True,
        translate=0.125,
    )


def project(spec, data: TensorData, epochs: int, device: str, compile: bool = False) -> float:
    rate, memory_format = bench_train.project(spec, data, epochs, device, BATCH, compile)
    print(f"  project: {memory_format}, precision auto, compile {compile}, {device}", file=sys.stderr)
    return rate


class _Baseline(pl.LightningModule):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9, nesterov=True)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _Rates(pl.Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _sync()
        self.start, self.images = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[1])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        _sync()
        self.rates.append(self.images / (time.perf_counter() - self.start))


def baseline(spec, data: TensorData, epochs: int, device: str) -> float:
    """CPU tensors through a DataLoader (pinned, 4 workers), fp32, default format, default Trainer."""
    loader_batches = data.loader("train", len(data.train), train=False)  # normalized, unaugmented, once
    x, y = next(iter(loader_batches))
    dataset = torch.utils.data.TensorDataset(x.cpu(), y.cpu())
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=4, pin_memory=True, persistent_workers=True
    )
    rates = _Rates()
    with tempfile.TemporaryDirectory() as root:
        accelerator = "gpu" if device.startswith("cuda") else "cpu"
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator=accelerator,
            devices=1,
            default_root_dir=root,
            callbacks=[rates],
            enable_model_summary=False,
        )
        trainer.fit(_Baseline(build_model(spec)), loader)
    return statistics.median(rates.rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--data", default="digits,cifar", help="digits, cifar (random CIFAR-shaped) or both")
    parser.add_argument("--compile", action="store_true", help="Add a column: the project's path with torch.compile")
    parser.add_argument("--plain", action="store_true", help="Add a column: a hand-written loop (bench_train.plain)")
    parser.add_argument(
        "--formats", action="store_true", help="Then the plain loop in fp32/bf16 x contiguous/channels_last"
    )
    parser.add_argument("--candidates", action="store_true", help="Distinct candidates per hour of a search instead")
    parser.add_argument("--workers-per-gpu", default="1,2,4,8", help="K values for --candidates")
    args = parser.parse_args()
    if args.candidates:
        bench_candidates.main(
            [int(k) for k in args.workers_per_gpu.split(",")],
            epochs=args.epochs,
            images=args.images,
            device=args.device,
        )
        return
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; batch {BATCH}; {args.epochs} epochs (first is warm-up)")
    extra = " project + torch.compile img/s | compiled / baseline |" if args.compile else ""
    extra += " plain loop img/s (same model, data, bf16) | project / plain |" if args.plain else ""
    print(
        "| data | width | project img/s (on-device, bf16, channels_last) | DataLoader baseline img/s (fp32) | ratio |"
        + extra
    )
    print("|---|---:|---:|---:|---:|" + "---:|---:|" * (args.compile + args.plain))
    cifar = dict(stem_stride=1, strides=(1, 1, 2, 2, 1, 2, 1), num_classes=10, resolution=32)
    datasets = {"digits": lambda: load_digits(32, device), "cifar": lambda: random_cifar(args.images, device)}
    for key in args.data.split(","):
        data = datasets[key]()
        for width in (0.5, 1.0):
            spec = build_spec(Knobs(width=width, **cifar))
            ours = project(spec, data, args.epochs, args.device)
            theirs = baseline(spec, data, args.epochs, args.device)
            row = f"| {data.name} | {width} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.1f}x |"
            if args.compile:
                compiled = project(spec, data, args.epochs, args.device, compile=True)
                row += f" {compiled:,.0f} | {compiled / theirs:.1f}x |"
            if args.plain:
                hand = plain(spec, data, args.epochs, args.device, BATCH)
                row += f" {hand:,.0f} | {ours / hand:.2f}x |"
            print(row, flush=True)
    if args.formats:
        _formats(args, cifar, device)


def _formats(args, cifar: dict, device: torch.device) -> None:
    """The plain loop under each precision and memory format: which the GPU prefers at this size."""
    print("\n| data | width | fp32 contiguous | fp32 channels_last | bf16 contiguous | bf16 channels_last |")
    print("|---|---:|---:|---:|---:|---:|")
    data = random_cifar(args.images, device)
    for width in (0.5, 1.0):
        spec = build_spec(Knobs(width=width, **cifar))
        rates = [
            plain(spec, data, args.epochs, args.device, BATCH, bf16=bf16, channels_last=cl)
            for bf16 in (False, True)
            for cl in (False, True)
        ]
        print(f"| {data.name} | {width} | " + " | ".join(f"{r:,.0f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
