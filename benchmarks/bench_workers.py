"""Trials per hour with 1, 2 and 4 local workers on the default journal file and on PostgreSQL,
with tiny trials (digits, 1 epoch, width 0.25), and each storage's own overhead per trial
(ask + the ~30 user attributes a trial writes + tell, no training), measured in one run.

PostgreSQL comes from MBV2_TEST_POSTGRES (bash scripts/with-postgres.sh starts a throwaway one).

Usage: bash scripts/with-postgres.sh .venv/bin/python benchmarks/bench_workers.py [--trials 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbv2_search.ledger import counts  # noqa: E402
from mbv2_search.search import load_context  # noqa: E402
from mbv2_search.storage import make_storage, open_study  # noqa: E402
from mbv2_search.supervisor import start_workers  # noqa: E402

SPACE = {
    "knobs": {"num_classes": 10},
    "vary": {"width": {"choices": [0.25]}, "resolution": {"choices": [17, 18, 19, 20, 21, 22, 23, 24]}},
}


def storage_overhead_ms(url: str, trials: int = 40) -> float:
    """Median milliseconds of the storage operations of one trial, without any training."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"overhead-{uuid.uuid4().hex[:8]}", storage=make_storage(url), directions=["maximize", "minimize"]
    )
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        trial = study.ask()
        trial.suggest_categorical("width", [0.25, 0.5])
        for key in range(30):
            trial.set_user_attr(f"attr{key}", 1.0)
        study.tell(trial, [0.9, 1e6])
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def trials_per_hour(folder: Path, url: str | None, workers: int, trials: int) -> tuple[float, int]:
    name = f"workers-{workers}-{uuid.uuid4().hex[:6]}"
    study = {
        "name": name,
        "space": SPACE,
        "data": {"dataset": "digits"},
        "training": {"epochs": 1, "batch_size": 256, "device": "cpu"},
        "sampler": {"name": "random", "seed": 0},
        "n_trials": trials,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    ctx = load_context(path, url, reports_root=folder / "reports")
    start = time.perf_counter()
    for process in start_workers(ctx, workers, reports_root=folder / "reports"):
        process.join()
    wall = time.perf_counter() - start
    done = counts(open_study(ctx).get_trials(deepcopy=False))["complete"]
    return done / wall * 3600, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    postgres = os.environ.get("MBV2_TEST_POSTGRES")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        backends = [("journal file", f"journal:{folder / 'overhead.journal'}", None)]
        if postgres:
            backends.append(("PostgreSQL", postgres, postgres))
        print(
            f"2-core CPU; tiny trials (digits, 1 epoch, width 0.25, 17-24 px), {args.trials} trials per run; worker start-up included"
        )
        print(
            "| storage | storage overhead per trial (ms) | 1 worker trials/h | 2 workers trials/h | 4 workers trials/h | 2 vs 1 | 4 vs 1 |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, overhead_url, run_url in backends:
            overhead = storage_overhead_ms(overhead_url)
            rates = {}
            for workers in (1, 2, 4):
                rate, done = trials_per_hour(folder, run_url, workers, args.trials)
                assert done == args.trials, f"{label}: {done} of {args.trials} trials completed with {workers} workers"
                rates[workers] = rate
            print(
                f"| {label} | {overhead:.1f} | {rates[1]:.0f} | {rates[2]:.0f} | {rates[4]:.0f} | {rates[2] / rates[1]:.2f}x | {rates[4] / rates[1]:.2f}x |",
                flush=True,
            )
        if not postgres:
            print("PostgreSQL skipped: MBV2_TEST_POSTGRES is not set (run under scripts/with-postgres.sh)")


if __name__ == "__main__":
    main()
