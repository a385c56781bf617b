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
    columns += ["latency_ms", "val_acc", "val_acc_err", *(["val_acc_std", "runs"] if seeds else []), "test_acc"]
    if "inherited" in front and front["inherited"].eq(True).any():  # one-shot: the search's accuracy was inherited
        columns += ["inherited", "retrained_val_acc", "retrained_val_acc_err"]
    columns.append("ties")
    kept = [c for c in columns if c in front and (c in ("ties", "inherited") or front[c].notna().any())]
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
    inherited = bool(shown.pop("inherited").any()) if "inherited" in shown else False
    for column in ("val_acc", "retrained_val_acc"):
        if column in shown:
            errors = shown.pop(f"{column}_err") if f"{column}_err" in shown else [float("nan")] * len(shown)
            shown[column] = [_with_error(a, e) if pd.notna(a) else "-" for a, e in zip(shown[column], errors)]
    names = {"val_acc": "inherited val_acc ± se" if inherited else "val_acc ± se"}
    names |= {"retrained_val_acc": "retrained val_acc ± se", "val_acc_std": "std over seeds", "ties": TIES}
    return shown.rename(columns=names)
