"""The paper's width x resolution table, reproduced beside the published numbers."""

from __future__ import annotations

import pandas as pd

from mbv2_search.arch import build_spec
from mbv2_search.cost import costs
from mbv2_search.knobs import Knobs
from mbv2_search.reference import tf_slim_checkpoints, torchvision_params


def paper_grid(convention: str = "tf-slim") -> pd.DataFrame:
    """The 22 TF-Slim checkpoints with reproduced MAdds and params, the published ones and the differences.

    MAdds in millions are floored as TF-Slim publishes them; params in millions rounded to 2 decimals.
    Under torchvision, `tv_params` is torchvision's own count where the reference lists the width.
    """
    published = tf_slim_checkpoints()
    tv_counts = torchvision_params()
    rows = []
    for ref in published.itertuples():
        spec = build_spec(Knobs(width=float(ref.width), resolution=int(ref.resolution), convention=convention))
        cost = costs(spec)
        row = {
            "model": ref.model,
            "width": ref.width,
            "resolution": ref.resolution,
            "madds": cost.madds,
            "params": cost.params,
            "madds_m": cost.madds // 1_000_000,
            "madds_m_published": int(ref.macs_m),
            "madds_m_diff": cost.madds // 1_000_000 - int(ref.macs_m),
            "params_m": round(cost.params / 1e6, 2),
            "params_m_published": float(ref.params_m),
            "params_m_diff": round(round(cost.params / 1e6, 2) - float(ref.params_m), 2),
            "top1_published": ref.top1,
        }
        if convention == "torchvision":
            tv = tv_counts.get(float(ref.width))
            row["tv_params"] = tv
            row["tv_params_diff"] = None if tv is None else cost.params - tv
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "tv_params" in frame:
        frame["tv_params"] = frame["tv_params"].astype("Int64")
        frame["tv_params_diff"] = frame["tv_params_diff"].astype("Int64")
    return frame


def with_study(grid: pd.DataFrame, trials: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Add the study's measured accuracy (mean over its trained trials) beside each grid point.

    A study run at scaled-down resolutions (e.g. 20-36 for digits) is matched by rank when it has as
    many resolutions as the published grid; the returned note says which mapping was used.
    """
    from mbv2_search.report.analysis import spearman

    eligible = trials[trials["eligible"]] if len(trials) else trials
    if eligible.empty or "width" not in eligible or "resolution" not in eligible:
        out = grid.assign(measured_acc=float("nan"), measured_runs=0)
        return out, "the study has no trained trials with width and resolution"
    published = sorted(grid["resolution"].unique())
    studied = sorted(eligible["resolution"].unique())
    if set(studied) <= set(published):
        mapping, note = {r: r for r in studied}, "resolutions matched exactly"
    elif len(studied) == len(published):
        mapping = dict(zip(studied, published))
        note = "resolutions matched by rank: " + ", ".join(f"{a}->{b}" for a, b in mapping.items())
    else:
        mapping, note = {}, f"resolutions {studied} do not match the published {published}"
    measured = eligible.assign(resolution=eligible["resolution"].map(mapping)).dropna(subset=["resolution"])
    summary = (
        measured.groupby(["width", "resolution"])["val_acc"]
        .agg(measured_acc="mean", measured_runs="count")
        .reset_index()
        .round({"measured_acc": 4})
    )
    out = grid.merge(summary, on=["width", "resolution"], how="left")
    out["measured_runs"] = out["measured_runs"].fillna(0).astype(int)
    rho = spearman(out["measured_acc"], out["top1_published"])
    return (
        out,
        f"{note}; Spearman rank correlation with published top-1 over {int(out['measured_acc'].notna().sum())} points: {rho:.3f}",
    )


def with_latency(
    grid: pd.DataFrame, latency_ms: dict[tuple[float, int], float], *, host: str
) -> tuple[pd.DataFrame, str]:
    """Add this host's measured batch-1 latency beside the published Pixel-1 latency, with their rank correlation."""
    from mbv2_search.reference import tf_slim_checkpoints
    from mbv2_search.report.analysis import spearman

    pixel = tf_slim_checkpoints().set_index("model")["pixel1_ms"]
    out = grid.assign(
        latency_ms=[latency_ms.get((w, r)) for w, r in zip(grid["width"], grid["resolution"])],
        pixel1_ms_published=grid["model"].map(pixel),
    )
    rho = spearman(out["latency_ms"], out["pixel1_ms_published"])
    return (
        out,
        f"batch-1 latency on {host}, median of repeated runs after warm-up; Spearman rank correlation with Pixel-1: {rho:.3f}",
    )
