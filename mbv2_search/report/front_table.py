"""The front as a table: exact numbers for pareto.csv, and a readable form for summary.md, the report
page and `status` (costs in millions, accuracy ± its standard error, the neighbours within noise)."""

from __future__ import annotations

import pandas as pd

from mbv2_search.report.analysis import FrontData

TIES = "≈ neighbour"  # the column of front neighbours noise cannot tell apart (noise.TIE_RULE)


def front_table(data: FrontData) -> pd.DataFrame:
    """The front in its order: trial number(s), knobs, costs, val_acc with its error (and, for seed
    repeats, std and runs), test_acc, and `ties`."""
    front = data.front
    seeds = bool(len(data.points)) and bool((data.points["runs"] > 1).any())
    columns = ["trials" if seeds else "number", *data.knobs, "madds", "params", "peak_activation_bytes"]
    columns += ["latency_ms", "val_acc", "val_acc_err", *(["val_acc_std", "runs"] if seeds else []), "test_acc", "ties"]
    kept = [c for c in columns if c in front and (c == "ties" or front[c].notna().any())]
    return front[kept].reset_index(drop=True)


def _with_error(accuracy: float, error: float) -> str:
    return f"{accuracy:.4f}" if pd.isna(error) else f"{accuracy:.4f} ± {error:.4f}"


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """Costs in millions (KiB for memory), accuracy as 'mean ± standard error', named for people; the CSV
    files keep exact numbers."""
    shown = table.copy()
    for column, scale, label in (
        ("madds", 1e6, "MAdds (M)"),
        ("params", 1e6, "params (M)"),
        ("peak_activation_bytes", 1024, "peak act. (KiB)"),
    ):
        if column in shown:
            shown[column] = (shown[column] / scale).round(3)
            shown = shown.rename(columns={column: label})
    if "val_acc" in shown:
        errors = shown.pop("val_acc_err") if "val_acc_err" in shown else [float("nan")] * len(shown)
        shown["val_acc"] = [_with_error(a, e) for a, e in zip(shown["val_acc"], errors)]
        shown = shown.rename(columns={"val_acc": "val_acc ± se"})
    return shown.rename(columns={"val_acc_std": "std over seeds", "ties": TIES})
