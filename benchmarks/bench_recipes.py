"""The paper recipe (TensorFlow's RMSProp, TF-Slim's flags) beside the fast recipe on digits, same epochs.

Usage: python benchmarks/bench_recipes.py [--epochs 15] [--seeds 0 1 2] [--width 0.5] [--resolution 32]
Prints the validation accuracy per recipe and seed, the median, and the median curve per epoch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mbv2_search.arch import build_spec  # noqa: E402
from mbv2_search.data import load_digits  # noqa: E402
from mbv2_search.devices import configure_cpu  # noqa: E402
from mbv2_search.knobs import Knobs  # noqa: E402
from mbv2_search.recipes import RECIPES, recipe_with  # noqa: E402
from mbv2_search.train import train  # noqa: E402

# torch's RMSprop with the old paper values, for contrast: eps outside the root, mean square from 0
TORCH_RMSPROP = {"optimizer": "rmsprop", "eps": 1e-3, "decay_epochs": None, "l2_depthwise": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    configure_cpu()
    spec = build_spec(Knobs(width=args.width, resolution=args.resolution, num_classes=10))
    data = load_digits(args.resolution, torch.device("cpu"))
    recipes = {
        "fast": RECIPES["fast"],
        "paper (RMSpropTF)": RECIPES["paper"],
        "paper with torch RMSprop": recipe_with("paper", TORCH_RMSPROP, path="bench"),
    }
    curves: dict[str, list[list[float]]] = {name: [] for name in recipes}
    print(f"digits, width {args.width}, {args.resolution} px, {args.epochs} epochs, batch {args.batch_size}")
    print(
        "| recipe | "
        + " | ".join(f"seed {s}" for s in args.seeds)
        + " | median val_acc |\n|---|"
        + "---:|" * (len(args.seeds) + 1)
    )
    for name, recipe in recipes.items():
        finals = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as run_dir:
                result = train(spec, data, epochs=args.epochs, batch_size=args.batch_size, recipe=recipe,
                               seed=seed, run_dir=run_dir, device="cpu")  # fmt: skip
            finals.append(result.val_acc)
            curves[name].append([row["val_acc"] for row in result.history if "val_acc" in row])
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in finals) + f" | {statistics.median(finals):.4f} |")
    print("\nmedian validation accuracy per epoch")
    print("| epoch | " + " | ".join(recipes) + " |\n|---:|" + "---:|" * len(recipes))
    for epoch in range(args.epochs):
        cells = [statistics.median(c[epoch] for c in curves[name] if len(c) > epoch) for name in recipes]
        print(f"| {epoch + 1} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")


if __name__ == "__main__":
    main()
