"""One-shot search against training every candidate, on digits and this CPU, in three parts:

1. rank: `--candidates` distinct members of the quick start's space, spread evenly over its MAdds, each
   trained on its own with the quick start's budget and evaluated from the one-shot study's supernet:
   Spearman and Kendall rank correlations of the two accuracies. With --ceiling, each is trained again
   with another seed: the correlation of two stand-alone runs, the most a ranking can agree on 270
   validation images, and the inherited ranking against the two seeds' mean (less noisy than either).
   The ranking by MAdds alone, with no training, is printed too: what a supernet has to beat.
2. front: `mbv2-search run studies/quickstart.yaml` (per candidate) and `run studies/quickstart_oneshot.yaml`
   (supernet, search, retrained front), each as a fresh process: CPU time (user + system of the process
   and its workers) and wall time, and the hypervolume of (validation error, MAdds): all trained trials
   for the first, the retrained front points for the second; the reference point (error 1.0, 1.1 x the
   space's largest MAdds) is the same for both.
3. speed: sub-networks evaluated per minute from the trained supernet (extract, recalibrate BatchNorm,
   validate; the data loaded once per resolution), and the one-shot search's own trials per minute.

Usage: python benchmarks/bench_oneshot.py [--candidates 24] [--ceiling] [--skip rank,front,speed]
       [--supernet-epochs N] [--random-members N]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbv2_search import space  # noqa: E402
from mbv2_search.cost import costs  # noqa: E402
from mbv2_search.oneshot import ensure_supernet, inherit, load_supernet, members  # noqa: E402
from mbv2_search.report.analysis import hypervolume, retrained_results, trials_frame  # noqa: E402
from mbv2_search.search import load_context, load_data  # noqa: E402
from mbv2_search.storage import open_study  # noqa: E402
from mbv2_search.train import train  # noqa: E402

STUDIES = ROOT / "studies"


def study_copy(folder: Path, name: str, **changes: Any) -> Path:
    """A shipped study with changes, written into folder (the space path made absolute)."""
    study = yaml.safe_load((STUDIES / name).read_text())
    study["space"] = str((STUDIES / study["space"]).resolve())
    for key, value in changes.items():
        study[key] = {**study.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / name
    path.write_text(yaml.safe_dump(study))
    return path


def spread(ctx: Any, count: int) -> list[dict[str, Any]]:
    """`count` grid points evenly spaced in MAdds order (ties broken by a seeded shuffle)."""
    grid = space.grid(ctx.arch_file)
    points = [dict(zip(grid, values)) for values in np.array(np.meshgrid(*grid.values())).T.reshape(-1, len(grid))]
    points = [
        {k: (int(v) if float(v).is_integer() and k == "resolution" else float(v)) for k, v in p.items()} for p in points
    ]
    random.Random(0).shuffle(points)
    every = members(ctx)
    points.sort(key=lambda p: costs(every.spec(p)).madds)
    return [points[round(i * (len(points) - 1) / (count - 1))] for i in range(count)]


def stand_alone(ctx: Any, params: dict[str, Any], *, seed: int, folder: Path, cache: Path | None) -> float:
    """Validation accuracy of a member trained on its own with the study's budget (read from the cache
    file where an earlier run stored it: training is deterministic on the CPU)."""
    key = json.dumps([params, seed, ctx.study.training.model_dump(mode="json")], sort_keys=True)
    known = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    if key in known:
        return known[key]
    spec, training = members(ctx).spec(params), ctx.study.training
    data = load_data(ctx, spec.resolution, torch.device("cpu"))
    result = train(
        spec,
        data,
        epochs=training.epochs,
        batch_size=training.batch_size,
        recipe=training.recipe_model(),
        seed=seed,
        run_dir=folder / f"alone-{seed}-{abs(hash(json.dumps(params, sort_keys=True)))}",
        device="cpu",
    )
    if cache is not None:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
        cache.write_text(json.dumps({**known, key: result.val_acc}, indent=0))
    return result.val_acc


def rank_part(folder: Path, args: argparse.Namespace, oneshot: Path) -> None:
    ctx = load_context(oneshot, reports_root=folder / "reports")
    study = open_study(ctx)
    start = time.process_time()
    ensure_supernet(ctx, study, torch.device("cpu"))
    trained = study.user_attrs["supernet"]
    print(
        f"supernet: {time.process_time() - start:.0f} s CPU, {trained['train_seconds']:.0f} s wall training; "
        f"largest member {trained['val_acc']:.4f}"
    )
    supernet, every = load_supernet(ctx, torch.device("cpu")), members(ctx)
    rows = []
    for params in spread(ctx, args.candidates):
        spec = every.spec(params)
        data = load_data(ctx, spec.resolution, torch.device("cpu"))
        inherited, _ = inherit(ctx, supernet, spec, data)
        alone = [
            stand_alone(ctx, params, seed=s, folder=folder, cache=args.cache)
            for s in ((0, 1) if args.ceiling else (0,))
        ]
        rows.append((params, costs(spec).madds, inherited.val_acc, *alone))
        print(
            f"  {params} MAdds {rows[-1][1]:,}: inherited {inherited.val_acc:.4f}, alone {', '.join(f'{a:.4f}' for a in alone)}",
            flush=True,
        )
    inherited, alone, madds = [r[2] for r in rows], [r[3] for r in rows], [r[1] for r in rows]
    print("\n| pair | candidates | Spearman | Kendall |\n|---|---:|---:|---:|")
    agreement("inherited vs stand-alone (seed 0)", inherited, alone)
    if args.ceiling:
        again = [r[4] for r in rows]
        mean = [(a + b) / 2 for a, b in zip(alone, again)]  # less noisy than either seed
        agreement("stand-alone seed 0 vs seed 1", alone, again)
        agreement("inherited vs stand-alone (seed 1)", inherited, again)
        agreement("inherited vs stand-alone (mean of seeds 0, 1)", inherited, mean)
    # the ranking by MAdds alone, with no training: what a supernet's ranking has to beat
    agreement("MAdds alone vs stand-alone (seed 0)", madds, alone)
    if args.ceiling:
        agreement("MAdds alone vs stand-alone (mean of seeds 0, 1)", madds, mean)
    low, high = min(inherited), max(inherited)
    print(f"inherited accuracies {low:.3f}-{high:.3f}; stand-alone (seed 0) {min(alone):.3f}-{max(alone):.3f}")


def agreement(pair: str, x: list[float], y: list[float]) -> None:
    """One row of the rank table: Spearman and Kendall of two lists over the same candidates."""
    print(f"| {pair} | {len(x)} | {stats.spearmanr(x, y)[0]:.3f} | {stats.kendalltau(x, y)[0]:.3f} |")


def run_cli(study: Path, folder: Path) -> tuple[float, float]:
    """Run a study in a fresh process: (CPU seconds of it and its workers, wall seconds)."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mbv2_search", "run", str(study), "--reports", str(folder / "reports")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), time.perf_counter() - start


def front_part(folder: Path, oneshot: Path) -> Path:
    per_candidate = study_copy(folder, "quickstart.yaml")
    cpu_pc, wall_pc = run_cli(per_candidate, folder)
    print(f"per-candidate: {cpu_pc:.0f} s CPU, {wall_pc:.0f} s wall", flush=True)
    cpu_os, wall_os = run_cli(oneshot, folder)
    print(f"one-shot: {cpu_os:.0f} s CPU, {wall_os:.0f} s wall", flush=True)
    ctx_pc = load_context(per_candidate, reports_root=folder / "reports")
    ctx_os = load_context(oneshot, reports_root=folder / "reports")
    study_pc, study_os = open_study(ctx_pc, create=False), open_study(ctx_os, create=False)
    largest = costs(members(ctx_os).corner(largest=True)).madds
    reference = np.array([1.0, 1.1 * largest])
    frame = trials_frame(study_pc.get_trials())
    done = frame[frame["eligible"]]
    hv_pc = hypervolume(np.column_stack([1 - done["val_acc"].astype(float), done["madds"].astype(float)]), reference)
    again = {n: r for n, r in retrained_results(study_os.user_attrs).items() if "val_acc" in r}  # not failed
    madds = {t.number: t.user_attrs["madds"] for t in study_os.get_trials() if "madds" in t.user_attrs}
    hv_os = hypervolume(np.array([[1 - r["val_acc"], madds[n]] for n, r in again.items()]), reference)
    supernet = study_os.user_attrs["supernet"]
    print("\n| study | CPU s | wall s | trained | hypervolume | vs per-candidate |\n|---|---:|---:|---:|---:|---:|")
    box = float(np.prod(reference))
    print(
        f"| per-candidate (quickstart.yaml) | {cpu_pc:.0f} | {wall_pc:.0f} | {len(done)} | {hv_pc / box:.4f} | 1.00x CPU, 100% |"
    )
    print(
        f"| one-shot (quickstart_oneshot.yaml) | {cpu_os:.0f} | {wall_os:.0f} | supernet + {len(again)} | {hv_os / box:.4f} | {cpu_os / cpu_pc:.2f}x CPU, {100 * hv_os / hv_pc:.1f}% |"
    )
    print(
        f"one-shot: supernet {supernet['train_seconds']:.0f} s wall over {supernet['epochs']} epochs, largest member {supernet['val_acc']:.4f}"
    )
    return oneshot


def speed_part(folder: Path, oneshot: Path, count: int = 200) -> None:
    ctx = load_context(oneshot, reports_root=folder / "reports")
    ensure_supernet(ctx, open_study(ctx), torch.device("cpu"))
    supernet, every, rng = load_supernet(ctx, torch.device("cpu")), members(ctx), random.Random(1)
    data: dict[int, Any] = {}
    start = time.perf_counter()
    for _ in range(count):
        spec = every.draw(rng)
        if spec.resolution not in data:
            data[spec.resolution] = load_data(ctx, spec.resolution, torch.device("cpu"))
        inherit(ctx, supernet, spec, data[spec.resolution])
    seconds = time.perf_counter() - start
    print(
        f"\nsub-networks evaluated: {count} in {seconds:.1f} s: {60 * count / seconds:.0f} per minute (torch threads {torch.get_num_threads()})"
    )
    trials = [t for t in open_study(ctx, create=False).get_trials() if t.datetime_complete]
    if trials:
        span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
        print(
            f"the one-shot study's search: {len(trials)} trials in {span:.1f} s: {60 * len(trials) / span:.0f} per minute"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--ceiling", action="store_true", help="train each candidate with a second seed too")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: rank, front, speed")
    parser.add_argument("--cache", type=Path, help="a JSON file keeping stand-alone accuracies between runs")
    parser.add_argument("--folder", type=Path, help="keep the studies here (default: a temporary folder)")
    parser.add_argument("--supernet-epochs", type=int, help="override one_shot.epochs")
    parser.add_argument("--random-members", type=int, help="override one_shot.random_members")
    parser.add_argument("--retrain", choices=["scratch", "finetune"], help="override one_shot.retrain")
    parser.add_argument("--retrain-epochs", type=int, help="override one_shot.retrain_epochs")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    overrides = {
        "epochs": args.supernet_epochs,
        "random_members": args.random_members,
        "retrain": args.retrain,
        "retrain_epochs": args.retrain_epochs,
    }
    changes = {k: v for k, v in overrides.items() if v is not None}
    print(f"machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        oneshot = study_copy(folder, "quickstart_oneshot.yaml", one_shot=changes)
        if "front" not in skip:
            front_part(folder, oneshot)
        if "rank" not in skip:
            rank_part(folder, args, oneshot)
        if "speed" not in skip:
            speed_part(folder, oneshot)


if __name__ == "__main__":
    main()
