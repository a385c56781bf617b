"""Latency prediction from a lookup table against measurement, batch 1 on this CPU (or --device cuda).

For each space: build its table (every unit of every candidate), then for random candidates compare
the predicted latency with the measured one (median of repeated runs after warm-up): mean absolute
percentage error. Goal: at most 10%.

Usage: python benchmarks/bench_latency.py [--candidates 30] [--spaces quickstart,paper_grid_imagenet] [--device cpu]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mbv2_search.config import load_arch_file  # noqa: E402
from mbv2_search.cost import costs, measure_latency_ms  # noqa: E402
from mbv2_search.devices import configure_cpu, hardware_name  # noqa: E402
from mbv2_search.latency import build_table, space_specs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--spaces", default="quickstart,paper_grid_imagenet")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = args.device
    if device == "cpu":
        configure_cpu()
    print(
        f"{hardware_name(torch.device(device))}, torch {torch.__version__}; batch 1, median of {args.repeats} runs after 5 warm-up"
    )
    print(
        "| space | table units | table build s | candidates | measured ms (range) | MAPE | max APE | Spearman(MAdds, latency) |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for name in args.spaces.split(","):
        arch_file = load_arch_file(ROOT / "search_spaces" / f"{name}.yaml")
        specs, _ = space_specs(arch_file, samples=300, num_classes=10 if name == "quickstart" else None)
        start = time.perf_counter()
        table = build_table(specs, device, repeats=args.repeats, warmup=5)
        built = time.perf_counter() - start
        chosen = random.Random(1).sample(specs, min(args.candidates, len(specs)))
        errors, measured_all, madds = [], [], []
        for spec in chosen:
            measured = measure_latency_ms(spec, device, repeats=args.repeats, warmup=5)
            errors.append(abs(table.predict(spec) - measured) / measured)
            measured_all.append(measured)
            madds.append(costs(spec).madds)
        rank = lambda values: [sorted(values).index(v) for v in values]  # noqa: E731
        rho = statistics.correlation(rank(madds), rank(measured_all))
        print(
            f"| {name} | {len(table.units)} | {built:.1f} | {len(chosen)} | {min(measured_all):.2f}-{max(measured_all):.2f} | {statistics.mean(errors):.1%} | {max(errors):.1%} | {rho:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
