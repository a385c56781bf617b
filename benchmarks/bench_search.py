"""Distinct candidates evaluated per hour on the quickstart study, 1 worker vs 2, side by side in one run.

Each arm is a copy of studies/quickstart.yaml (digits, CPU, TPE seed 0) under its own name, run to
the same n_trials the way `mbv2-search run` runs it (one worker in-process; K workers as processes
watched by their parent). A candidate is counted once however often the sampler proposes it:
duplicates are never trained nor counted, so candidates/hour is n_trials over wall time, and the
duplicates skipped are shown apart. Also: the search's own overhead per trained trial (wall time
of the trial minus its training steps and evaluation loops), median.

Usage: python benchmarks/bench_search.py [--trials 16] [--workers 2]
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

from mbv2_search import ledger  # noqa: E402
from mbv2_search.devices import hardware_name  # noqa: E402
from mbv2_search.search import load_context  # noqa: E402
from mbv2_search.storage import open_study  # noqa: E402
from mbv2_search.supervisor import supervise  # noqa: E402
from mbv2_search.workers import work  # noqa: E402


def study_copy(folder: Path, name: str, trials: int) -> Path:
    """The quickstart study under another name and trial count, its space path made absolute."""
    study = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    study.update(name=name, n_trials=trials, space=str(ROOT / "search_spaces" / "quickstart.yaml"))
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def run(folder: Path, trials: int, workers: int) -> dict[str, float]:
    """Run one arm; wall time, distinct candidates, duplicates skipped, per-trial overhead."""
    ctx = load_context(study_copy(folder, f"bench-{workers}w", trials), reports_root=folder / "reports")
    start = time.perf_counter()
    if workers == 1:
        work(ctx)
    else:
        failures, _ = supervise(ctx, workers, reports_root=folder / "reports", on_note=lambda line: None)
        assert not failures, failures
    wall = time.perf_counter() - start
    stored = open_study(ctx).get_trials()
    counted = [t for t in stored if ledger.counted(t)]
    trained = [t for t in counted if t.user_attrs.get("trained")]
    overhead = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        - t.user_attrs["train_step_seconds"]
        - t.user_attrs["eval_seconds"]
        for t in trained
    ]
    return {
        "wall": wall,
        "distinct": len({ledger.candidate_key(t.params) for t in counted}),
        "trained": len(trained),
        "duplicates": ledger.counts(stored)["duplicate"],
        "overhead": statistics.median(overhead),
        "best": max(t.user_attrs["val_acc"] for t in trained),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        arms = {k: run(Path(tmp), args.trials, k) for k in (1, args.workers)}
    from mbv2_search.devices import resolve_device

    print(
        f"machine: {hardware_name(resolve_device('cpu'))}, {platform.machine()}; quickstart study, n_trials {args.trials}"
    )
    print(
        "| workers | distinct candidates | trained | duplicates skipped | wall s | candidates/hour | vs 1 worker | median overhead per trial s | best val_acc |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = arms[1]["distinct"] / arms[1]["wall"]
    for workers, arm in arms.items():
        rate = arm["distinct"] / arm["wall"]
        print(
            f"| {workers} | {arm['distinct']} | {arm['trained']} | {arm['duplicates']} | {arm['wall']:.1f} | "
            f"{rate * 3600:.0f} | {rate / base:.2f}x | {arm['overhead']:.2f} | {arm['best']:.4f} |"
        )


if __name__ == "__main__":
    main()
