"""Multi-objective early stopping on the quickstart study: epochs saved and hypervolume kept.

For each sampler seed, the quickstart study runs twice with the same trial count: without early
stopping, and with it (the study file's pruning settings, or the defaults). Hypervolume is of
(validation error, MAdds) over completed trials, against one reference point per seed pair
(error 1.0, 1.1 x the largest MAdds seen in either run).

Two columns put the hypervolume in context: the best validation accuracy each run found, and the
hypervolume kept when as many completed trials as early stopping stopped are instead dropped at
random from the run without it (median of 1,000 draws): a pruner worth having keeps more than that.

Usage: python benchmarks/bench_pruning.py [--seeds 0,1,2] [--trials 20] [--set min_epochs=2 ...] [--dir DIR]
(--dir keeps the runs: a second call with other --set values reuses the runs without early stopping.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbv2_search.report.analysis import hypervolume, trials_frame  # noqa: E402
from mbv2_search.search import load_context  # noqa: E402
from mbv2_search.storage import open_study  # noqa: E402
from mbv2_search.workers import work  # noqa: E402


def run(folder: Path, seed: int, trials: int, pruning: bool, settings: dict) -> list:
    study = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    tag = "-".join(f"{key}{value}" for key, value in sorted(settings.items()))
    name = f"prune-on-{seed}{'-' + tag if tag else ''}" if pruning else f"prune-off-{seed}"
    study.update(
        name=name,
        n_trials=trials,
        space=str(ROOT / "search_spaces" / "quickstart.yaml"),
        sampler={"name": "tpe", "seed": seed},
    )
    study["pruning"] = {**study.get("pruning", {}), **settings, "enabled": pruning}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    ctx = load_context(path, reports_root=folder / "reports")
    work(ctx)
    return open_study(ctx).get_trials()


def points(frame) -> np.ndarray:
    """(validation error, MAdds) of the completed trials in a trials_frame."""
    done = frame[frame["eligible"]]
    return np.column_stack([1 - done["val_acc"].astype(float), done["madds"].astype(float)])


def summary(trials: list, reference: np.ndarray) -> tuple[int, float, int, float, int]:
    """Epochs trained, normalised hypervolume, trials stopped early, best validation accuracy, duplicates."""
    frame = trials_frame(trials)
    epochs = int(frame["epochs"].fillna(0).sum())
    front = points(frame)
    stopped = int((frame["state"] == "PRUNED").sum())
    duplicates = int(frame["duplicate_of"].notna().sum())
    return epochs, hypervolume(front, reference) / float(np.prod(reference)), stopped, 1 - front[:, 0].min(), duplicates


def random_drop(trials: list, reference: np.ndarray, drop: int, draws: int = 1000) -> float:
    """Median normalised hypervolume after dropping `drop` completed trials at random."""
    all_points = points(trials_frame(trials))
    rng = np.random.default_rng(0)
    keep = len(all_points) - drop
    volumes = [
        hypervolume(all_points[rng.choice(len(all_points), keep, replace=False)], reference) for _ in range(draws)
    ]
    return float(np.median(volumes)) / float(np.prod(reference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a pruning setting, e.g. --set min_epochs=2",
    )
    parser.add_argument("--dir", type=Path, help="Keep the runs here (and reuse those already there)")
    args = parser.parse_args()
    settings = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for seed in (int(s) for s in args.seeds.split(",")):
            off = run(folder, seed, args.trials, False, settings)
            on = run(folder, seed, args.trials, True, settings)
            largest = max(t.user_attrs["madds"] for t in off + on)
            reference = np.array([1.0, 1.1 * largest])
            without, with_ = summary(off, reference), summary(on, reference)
            rows.append((seed, without, with_, random_drop(off, reference, with_[2])))
    print(
        f"quickstart study (digits, CPU), {args.trials} trials per run, TPE; hypervolume of (error, MAdds), normalised"
    )
    print(
        "| sampler seed | epochs without | epochs with | epochs saved | stopped early | HV without | HV with | HV kept"
        " | HV kept, as many dropped at random | best val_acc without | best val_acc with | duplicates without / with |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seed, (epochs_off, hv_off, _, best_off, dup_off), (
        epochs_on,
        hv_on,
        stopped,
        best_on,
        dup_on,
    ), hv_random in rows:
        print(
            f"| {seed} | {epochs_off} | {epochs_on} | {1 - epochs_on / epochs_off:.0%} | {stopped} | {hv_off:.4f}"
            f" | {hv_on:.4f} | {hv_on / hv_off:.1%} | {hv_random / hv_off:.1%} | {best_off:.4f} | {best_on:.4f} | {dup_off} / {dup_on} |"
        )
    total_off = sum(r[1][0] for r in rows)
    total_on = sum(r[2][0] for r in rows)
    kept = [r[2][1] / r[1][1] for r in rows]
    kept_random = [r[3] / r[1][1] for r in rows]
    print(
        f"| all | {total_off} | {total_on} | {1 - total_on / total_off:.0%} | | | | mean {np.mean(kept):.1%}"
        f" | mean {np.mean(kept_random):.1%} | | | |"
    )


if __name__ == "__main__":
    main()
