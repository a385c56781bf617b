"""Multi-objective early stopping on the quickstart study: epochs saved and hypervolume kept.

For each sampler seed, the quickstart study runs twice with the same trial count: without early
stopping, and with it (the study file's pruning settings, or the defaults). Hypervolume is of
(validation error, MAdds) over completed trials, against one reference point per seed pair
(error 1.0, 1.1 x the largest MAdds seen in either run).

Usage: python benchmarks/bench_pruning.py [--seeds 0,1,2] [--trials 20] [--set min_epochs=2 ...]
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
from mbv2_search.search import load_context, open_study, work  # noqa: E402


def run(folder: Path, seed: int, trials: int, pruning: bool, settings: dict) -> list:
    study = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    name = f"prune-{'on' if pruning else 'off'}-{seed}"
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


def summary(trials: list, reference: np.ndarray) -> tuple[int, float, int]:
    frame = trials_frame(trials, ["val_acc", "madds"])
    epochs = int(frame["epochs"].fillna(0).sum())
    done = frame[frame["eligible"]]
    points = np.column_stack([1 - done["val_acc"].astype(float), done["madds"].astype(float)])
    return epochs, hypervolume(points, reference) / float(np.prod(reference)), int((frame["state"] == "PRUNED").sum())


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
    args = parser.parse_args()
    settings = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            off = run(Path(tmp), seed, args.trials, False, settings)
            on = run(Path(tmp), seed, args.trials, True, settings)
            largest = max(t.user_attrs["madds"] for t in off + on)
            reference = np.array([1.0, 1.1 * largest])
            rows.append((seed, summary(off, reference), summary(on, reference)))
    print(
        f"quickstart study (digits, CPU), {args.trials} trials per run, TPE; hypervolume of (error, MAdds), normalised"
    )
    print(
        "| sampler seed | epochs without | epochs with | epochs saved | stopped early | HV without | HV with | HV kept |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seed, (epochs_off, hv_off, _), (epochs_on, hv_on, stopped) in rows:
        print(
            f"| {seed} | {epochs_off} | {epochs_on} | {1 - epochs_on / epochs_off:.0%} | {stopped} | {hv_off:.4f} | {hv_on:.4f} | {hv_on / hv_off:.1%} |"
        )
    total_off = sum(r[1][0] for r in rows)
    total_on = sum(r[2][0] for r in rows)
    kept = [r[2][1] / r[1][1] for r in rows]
    print(f"| all | {total_off} | {total_on} | {1 - total_on / total_off:.0%} | | | | mean {np.mean(kept):.1%} |")


if __name__ == "__main__":
    main()
