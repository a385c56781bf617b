"""Analytic cost model vs fvcore on the same random specs, in one run: time per spec and ratio.

Usage: python benchmarks/bench_cost.py [--specs 40] [--resolution-max 224]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mbv2_search.arch import build_spec  # noqa: E402
from mbv2_search.cost import costs, fvcore_count  # noqa: E402
from mbv2_search.model import build_model  # noqa: E402
from tests.conftest import random_knobs  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of fn() over repeats, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--specs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    resolutions = [96, 128, 160, 192, 224]
    specs = [
        build_spec(random_knobs(rng, resolution=rng.choice(resolutions), stem_stride=2, strides=(1, 2, 2, 2, 1, 2, 1)))
        for _ in range(args.specs)
    ]
    analytic_times, fvcore_times, build_times, equal = [], [], [], 0
    for spec in specs:
        analytic_s, analytic = timed(lambda spec=spec: costs(spec), repeats=50)
        fvcore_s, counted = timed(lambda spec=spec: fvcore_count(spec), repeats=3)
        build_times.append(timed(lambda spec=spec: build_model(spec), repeats=3)[0])
        analytic_times.append(analytic_s)
        fvcore_times.append(fvcore_s)
        equal += analytic.madds == counted.madds
    a, f, b = statistics.median(analytic_times), statistics.median(fvcore_times), statistics.median(build_times)
    print(
        f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}; {args.specs} random specs at 96..224 px"
    )
    print("| counter | median per spec | ratio vs analytic | MAdds identical |")
    print("|---|---:|---:|---:|")
    print(f"| analytic (cost.costs) | {a * 1e6:.1f} us | 1.0x | {equal}/{len(specs)} |")
    print(f"| fvcore (build + trace + count) | {f * 1e3:.1f} ms | {f / a:,.0f}x slower | {equal}/{len(specs)} |")
    print(f"| of which building the module | {b * 1e3:.1f} ms | {b / a:,.0f}x | |")


if __name__ == "__main__":
    main()
