"""The search's own overhead per trial on the quickstart study, and trials/hour with 1 vs 2 workers.

Overhead is everything but training and evaluation steps: wall time of the whole run minus the time
inside training steps (data preparation included) and validation/test loops, as a share of wall
time. Both runs use the quickstart study (digits, CPU) with the same sampler seed and n_trials.

Usage: python benchmarks/bench_search.py [--trials 12]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbv2_search.search import load_context, open_study  # noqa: E402
from mbv2_search.workers import start_workers, work  # noqa: E402


def study_copy(folder: Path, name: str, trials: int, workers: int) -> Path:
    """The quickstart study under another name and trial count, its space path made absolute."""
    study = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    study.update(name=name, n_trials=trials, workers=workers, space=str(ROOT / "search_spaces" / "quickstart.yaml"))
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def run(folder: Path, name: str, trials: int, workers: int) -> dict[str, float]:
    """Run a copy of the quickstart study; return wall time and its trials' step times."""
    ctx = load_context(study_copy(folder, name, trials, workers), reports_root=folder / "reports")
    start = time.perf_counter()
    if workers == 1:
        work(ctx)
    else:
        for process in start_workers(ctx, workers, folder / "reports"):
            process.join()
    wall = time.perf_counter() - start
    done = [t for t in open_study(ctx).get_trials() if t.state.name == "COMPLETE" and t.user_attrs.get("trained")]
    steps = sum(t.user_attrs["train_step_seconds"] + t.user_attrs["eval_seconds"] for t in done)
    per_trial = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        - t.user_attrs["train_step_seconds"]
        - t.user_attrs["eval_seconds"]
        for t in done
    ]
    return {
        "wall": wall,
        "trials": len(done),
        "steps": steps,
        "per_trial_overhead": statistics.median(per_trial),
        "mean_trial": statistics.mean((t.datetime_complete - t.datetime_start).total_seconds() for t in done),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        one = run(folder, "bench-1w", args.trials, 1)
        two = run(folder, "bench-2w", args.trials, 2)
    print(f"machine: {platform.machine()}, 2 cores; quickstart study (digits, CPU), {args.trials} trials per run")
    print(
        "| workers | trials | wall s | mean trial s | median overhead per trial s | overhead share of wall | trials/hour | vs 1 worker |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for workers, result in ((1, one), (2, two)):
        share = (result["wall"] * workers - result["steps"]) / (result["wall"] * workers)  # worker-seconds not in steps
        rate = result["trials"] / result["wall"] * 3600
        base = one["trials"] / one["wall"] * 3600
        print(
            f"| {workers} | {result['trials']} | {result['wall']:.1f} | {result['mean_trial']:.2f} | {result['per_trial_overhead']:.2f} | {share:.1%} | {rate:.0f} | {rate / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
