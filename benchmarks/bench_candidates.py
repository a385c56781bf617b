"""Distinct candidates per hour of a real search on one GPU: K workers per GPU, eager vs CUDA graphs.

Each configuration is its own study run by the CLI (`mbv2-search run --workers-per-gpu K`), on
CIFAR-shaped random images written in the CIFAR-10 python format (speed, not accuracy), 32 px,
widths 0.35-1.0, a random sampler seeded per trial (every configuration draws the same candidates
in the same order). The rate is counted trials over the span from the first trial's start to the
last one's end (read from the study's storage); the wall time includes the workers' start-up.
Run through bench_gpu.py --candidates.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SPACE = {
    "knobs": {"resolution": 32, "stem_stride": 1, "strides": [1, 1, 2, 2, 1, 2, 1]},
    "vary": {
        "width": {"choices": [0.35, 0.5, 0.75, 1.0]},
        "expansion": {"choices": [3, 4, 6]},
        "kernels": {"choices": [3, 5]},
    },
}


def write_cifar(root: Path, images: int) -> None:
    """Random uint8 images and labels in the CIFAR-10 python format (5 training batches and a test batch)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = images // 5
        entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))


def run_study(root: Path, *, k: int, graphs: bool, epochs: int, trials: int, device: str) -> dict[str, float]:
    """One configuration's search; returns its counted trials, span, wall time and candidates per hour."""
    import optuna

    name = f"k{k}-{'graphs' if graphs else 'eager'}"
    study = {
        "name": name,
        "space": SPACE,
        "data": {"dataset": "cifar10", "dir": str(root / "data")},
        "training": {"epochs": epochs, "batch_size": 256, "device": device, "cuda_graphs": "on" if graphs else "off"},
        "objectives": ["val_acc", "madds"],
        "sampler": {"name": "random", "seed": 0},
        "n_trials": trials,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    command = [sys.executable, "-c", "from mbv2_search.cli import main; main()", "run", str(path)]
    done = subprocess.run(
        [*command, "--workers-per-gpu", str(k), "--reports", str(root / "reports")],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode:
        print(done.stderr[-2000:], file=sys.stderr)
    journal = optuna.storages.journal.JournalFileBackend(str(root / "reports" / name / "study.journal"))
    loaded = optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(journal))
    counted = [t for t in loaded.get_trials() if "duplicate_of" not in t.user_attrs and "excluded" not in t.user_attrs]
    finished = [t for t in counted if t.datetime_complete]
    span = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
    graphed = sum(bool(t.user_attrs.get("cuda_graphs")) for t in finished)
    return {
        "trials": len(finished),
        "span": span,
        "wall": wall,
        "rate": 3600 * len(finished) / span,
        "graphed": graphed,
    }


def main(ks: list[int], *, epochs: int, images: int, device: str = "cuda") -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_cifar(root / "data", images)
        print(f"\n{images:,} CIFAR-shaped random images, 32 px, {epochs} epochs, batch 256, widths 0.35-1.0")
        print("| steps | workers per GPU | trials | span s | wall s | candidates/hour | vs 1 eager worker |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        base = None
        for graphs in (False, True):
            for k in ks:
                got = run_study(root, k=k, graphs=graphs, epochs=epochs, trials=max(4, 2 * k), device=device)
                base = base or got["rate"]
                steps = f"CUDA graphs ({got['graphed']} graphed)" if graphs else "eager"
                print(
                    f"| {steps} | {k} | {got['trials']} | {got['span']:.1f} | {got['wall']:.1f} | "
                    f"{got['rate']:,.0f} | {got['rate'] / base:.2f}x |",
                    flush=True,
                )
