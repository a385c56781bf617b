"""One candidate on 1 vs N devices (DDP), in one run: training images/second, steps per epoch, wall time per
epoch and val_acc, with ratios against one device. On the CPU the N processes split the machine's threads
(gloo), so the ratio says what the launch, the gradient all-reduce and the sharding cost or gain there; on
GPUs (--device cuda) it is the scaling of one trial over N GPUs (NCCL).

Images/second is the median over the epochs after the first (warm-up) of training-step throughput, all
ranks' images counted. batch_size is per device: N devices step a global batch N times larger, at the
recipe's learning rate for it, so val_acc after the same epochs is not expected to match.

Usage: python benchmarks/bench_ddp.py [--devices 2] [--epochs 4] [--width 0.35] [--resolution 32] [--device cpu]
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

import torch  # noqa: E402

from mbv2_search.arch import build_spec  # noqa: E402
from mbv2_search.data import load_dataset  # noqa: E402
from mbv2_search.devices import available_cores, rank_devices  # noqa: E402
from mbv2_search.knobs import Knobs  # noqa: E402
from mbv2_search.recipes import RECIPES  # noqa: E402
from mbv2_search.train import train  # noqa: E402

BATCH = 64


def measure(spec, data, *, devices: int, device: str, epochs: int) -> dict[str, float]:
    """Train once on `devices` devices; throughput, steps per epoch, wall seconds per epoch, val_acc."""
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        result = train(
            spec,
            data,
            epochs=epochs,
            batch_size=BATCH,
            recipe=RECIPES["fast"],
            seed=0,
            run_dir=run_dir,
            device=device,
            devices=devices,
            memory_format="contiguous",  # the same layout for both: the comparison is the launch, not the format
        )
        wall = time.perf_counter() - start
    steps = data.split_sizes()["train"] // (BATCH * devices)
    return {
        "images_per_second": statistics.median(h["train_images_per_second"] for h in result.history[1:]),
        "steps_per_epoch": steps,
        "fit_seconds_per_epoch": result.train_seconds / epochs,
        "wall_seconds": wall,
        "val_acc": result.val_acc,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--width", type=float, default=0.35)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    first = rank_devices(args.device, args.devices)[0]
    spec = build_spec(Knobs(width=args.width, resolution=args.resolution, num_classes=10))
    data = load_dataset("digits", args.resolution, device=first)
    rows = {n: measure(spec, data, devices=n, device=args.device, epochs=args.epochs) for n in (1, args.devices)}
    where = torch.cuda.get_device_name(first) if first.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"digits, width {args.width}, {args.resolution} px, batch {BATCH} per device, {args.epochs} epochs, "
        f"{where}, {available_cores()} cores, torch {torch.__version__}"
    )
    print(f"{'devices':>8} {'images/s':>10} {'steps/epoch':>12} {'fit s/epoch':>12} {'wall s':>8} {'val_acc':>8}")
    for n, row in rows.items():
        print(
            f"{n:>8} {row['images_per_second']:>10,.0f} {row['steps_per_epoch']:>12} "
            f"{row['fit_seconds_per_epoch']:>12.2f} {row['wall_seconds']:>8.1f} {row['val_acc']:>8.4f}"
        )
    one, many = rows[1], rows[args.devices]
    print(
        f"ratio {args.devices} vs 1: images/s x{many['images_per_second'] / one['images_per_second']:.2f}, "
        f"steps/epoch x{many['steps_per_epoch'] / one['steps_per_epoch']:.2f}, "
        f"fit time/epoch x{many['fit_seconds_per_epoch'] / one['fit_seconds_per_epoch']:.2f}, "
        f"wall time x{many['wall_seconds'] / one['wall_seconds']:.2f}"
    )


if __name__ == "__main__":
    main()
