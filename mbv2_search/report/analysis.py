"""Study analysis that returns data (pandas): the trials table and the Pareto front. No torch.

Figures draw what these return and compute nothing of their own (Optuna's plotting split).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from mbv2_search.ledger import RETRAINED
from mbv2_search.noise import TIE_RULE, binomial_stderr
from mbv2_search.pareto import minimised, non_dominated
from mbv2_search.report.points import neighbour_ties, variant_knobs, variant_points
from mbv2_search.study import OBJECTIVES

TRIAL_COLUMNS = (
    "val_acc",
    "val_acc_stderr",
    "test_acc",
    "madds",
    "params",
    "peak_activation_bytes",
    "latency_ms",
    "feasible",
    "trained",
    "inherited",
    "inherited_val_acc",
    "epochs",
    "train_seconds",
    "train_images_per_second",
    "train_step_seconds",
    "eval_seconds",
    "device",
    "hardware",
    "seed",
    "fvcore_madds",
    "fail_reason",
    "prune_reason",
    "excluded",
    "duplicate_of",
    "baseline",
)


def _stderr(attrs: dict[str, Any]) -> float | None:
    """The stored standard error of val_acc; for trials stored without one, from split_sizes where known."""
    stored, accuracy, sizes = attrs.get("val_acc_stderr"), attrs.get("val_acc"), attrs.get("split_sizes") or {}
    if stored is None and accuracy is not None and sizes.get("val"):
        return binomial_stderr(accuracy, sizes["val"])
    return stored


def retrained_results(study_attrs: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """A one-shot study's retrained front points: trial number -> what stand-alone training measured."""
    return {int(k.removeprefix(RETRAINED)): v for k, v in study_attrs.items() if k.startswith(RETRAINED)}


def trials_frame(trials: list[Any], retrained: dict[int, dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per trial: number, state, every knob (params), every cost and metric from user attrs; for a
    one-shot study, the retrained accuracy of its front points beside the inherited one."""
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        row.update(t.params)
        for column in TRIAL_COLUMNS:
            row[column] = t.user_attrs.get(column)
        row["val_acc_stderr"] = _stderr(t.user_attrs)
        row["val_acc_history"] = t.user_attrs.get("val_acc_history")
        if retrained:
            again = retrained.get(t.number, {})
            row |= {f"retrained_{k}": again.get(k) for k in ("val_acc", "val_acc_stderr", "test_acc", "train_seconds")}
        row["duration_s"] = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # trained results, each once: a duplicate repeats an earlier trial's point
    frame["eligible"] = (
        (frame["state"] == "COMPLETE")
        & (frame["trained"].eq(True) | frame["inherited"].eq(True))
        & frame["excluded"].isna()
        & frame["duplicate_of"].isna()
    )
    return frame


def pareto_mask(frame: pd.DataFrame, objectives: list[str]) -> pd.Series:
    """True for eligible trials (complete, feasible, trained) that no other eligible trial dominates."""
    mask = pd.Series(False, index=frame.index)
    if frame.empty:
        return mask
    eligible = frame[frame["eligible"]]
    if eligible.empty:
        return mask
    mask.loc[eligible.index] = non_dominated(minimised(eligible, objectives))
    return mask


class FrontData(NamedTuple):
    """One study's trials, its variants as points (seeds averaged) and their front: what a figure draws."""

    name: str
    frame: pd.DataFrame  # every trial
    points: pd.DataFrame  # one row per trained variant (report.points)
    front_mask: pd.Series  # over points: True on the front
    knobs: list[str]  # the variant's knobs (no seed)
    objectives: list[str]  # the objectives the front is computed on
    along: str  # the column the front is ordered and joined along

    @property
    def front(self) -> pd.DataFrame:
        """The Pareto-optimal points in order along `along`, with `ties`: the neighbours noise cannot tell apart."""
        front = self.points[self.front_mask].sort_values([self.along, "val_acc"])
        return front.assign(ties=pd.Series(neighbour_ties(front), index=front.index, dtype=object))

    @property
    def dominated(self) -> pd.DataFrame:
        """Trained points off the front."""
        return self.points[~self.front_mask]

    @property
    def infeasible(self) -> pd.DataFrame:
        """Complete trials that broke a constraint (never trained)."""
        if self.frame.empty:
            return self.frame
        return self.frame[(self.frame["state"] == "COMPLETE") & self.frame["feasible"].eq(False)]

    @property
    def tie_note(self) -> str:
        """How many front points noise cannot tell from a neighbour, and by what rule."""
        ties = self.front["ties"].astype(str)
        unknown = int(ties.str.contains("?", regex=False).sum())
        told = int((ties != "").sum()) - unknown
        note = f"{told} of {len(ties)} front points not distinguishable from a neighbour ({TIE_RULE})"
        return note + (f"; {unknown} without a stored error" if unknown else "")


def front_data(
    name: str, frame: pd.DataFrame, *, objectives: list[str], knobs: list[str], along: str | None = None
) -> FrontData:
    """A study's variants and their Pareto front over the objectives, ordered along a cost (default: the
    last objective): a figure's panel passes ["val_acc", cost] and the cost, to draw that cost's own front."""
    points = variant_points(frame, knobs)
    mask = pd.Series(False, index=points.index)
    if len(points):
        mask[:] = non_dominated(minimised(points, objectives))
    return FrontData(name, frame, points, mask, variant_knobs(knobs), objectives, along or objectives[-1])


def reference_point(frame: pd.DataFrame, objectives: list[str]) -> np.ndarray:
    """Hypervolume reference: error 1.0 (chance or worse) and 1.1 x the largest cost seen."""
    eligible = frame[frame["eligible"]]
    return np.array(
        [1.0 if OBJECTIVES[name] == "maximize" else 1.1 * float(eligible[name].max()) for name in objectives]
    )


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact dominated hypervolume of minimisation points below a reference (2 or 3 objectives; 1 is a length)."""
    points = points[(points < reference).all(axis=1)]
    if len(points) == 0:
        return 0.0
    if points.shape[1] == 1:
        return float(reference[0] - points[:, 0].min())
    if points.shape[1] == 2:
        ordered = points[np.argsort(points[:, 0])]
        volume, best_y = 0.0, reference[1]
        for x, y in ordered:
            if y < best_y:
                volume += (reference[0] - x) * (best_y - y)
                best_y = y
        return float(volume)
    # 3 objectives: slice along the last axis, 2-D hypervolume of each slab
    ordered = points[np.argsort(points[:, 2])]
    volume = 0.0
    for index, z in enumerate(ordered[:, 2]):
        top = ordered[index + 1, 2] if index + 1 < len(ordered) else reference[2]
        volume += hypervolume(ordered[: index + 1, :2], reference[:2]) * (top - z)
    return float(volume)


def hypervolume_history(frame: pd.DataFrame, objectives: list[str]) -> pd.DataFrame:
    """Hypervolume of the front after each trial number, normalised by the reference box."""
    if frame.empty or not frame["eligible"].any():
        return pd.DataFrame(columns=["number", "hypervolume"])
    reference = reference_point(frame, objectives)
    ordered = frame.sort_values("number")
    points = minimised(ordered, objectives)
    eligible = ordered["eligible"].to_numpy()
    box = float(np.prod(reference))
    rows = [
        {"number": number, "hypervolume": hypervolume(points[: i + 1][eligible[: i + 1]], reference) / box}
        for i, number in enumerate(ordered["number"])
    ]
    return pd.DataFrame(rows)


def error_edf(frame: pd.DataFrame) -> pd.DataFrame:
    """Empirical distribution of validation error: share of trained models with error <= e (pycls)."""
    errors = np.sort(1 - frame.loc[frame["eligible"], "val_acc"].astype(float).to_numpy())
    if len(errors) == 0:
        return pd.DataFrame(columns=["error", "share"])
    return pd.DataFrame({"error": errors, "share": np.arange(1, len(errors) + 1) / len(errors)})


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman rank correlation over the pairs where both are known (NaN under 3 pairs)."""
    pairs = pd.DataFrame({"a": a, "b": b}).dropna()
    if len(pairs) < 3:
        return float("nan")
    return float(pairs["a"].rank().corr(pairs["b"].rank()))


def variant_summary(frame: pd.DataFrame, knobs: list[str]) -> pd.DataFrame:
    """Mean and standard deviation of validation accuracy per variant (knob combination), over seeds."""
    eligible = frame[frame["eligible"]]
    if eligible.empty:
        return pd.DataFrame()
    grouped = eligible.groupby(knobs, dropna=False)["val_acc"]
    return grouped.agg(runs="count", mean="mean", std="std").reset_index().sort_values("mean", ascending=False)


def width_resolution_points(frame: pd.DataFrame, knobs: list[str]) -> pd.DataFrame | None:
    """MAdds and mean accuracy per (width, resolution) over seeds, for the paper's Figure 5 view.

    Only for studies whose varied knobs are width and resolution (and seed: points are means over
    seeds); with other knobs varying, a line per width would zigzag between unrelated variants.
    """
    if not {"width", "resolution"} <= set(knobs) <= {"width", "resolution", "seed"}:
        return None
    eligible = frame[frame["eligible"]]
    return (
        eligible.groupby(["width", "resolution"])
        .agg(madds=("madds", "first"), val_acc=("val_acc", "mean"), runs=("val_acc", "count"))
        .reset_index()
    )


FIGURE6_KNOBS = ("bottleneck_activation", "shortcut")  # the paper's Figure 6 ablations


def epoch_curves(frame: pd.DataFrame, knobs: list[str]) -> pd.DataFrame | None:
    """Validation accuracy per epoch for each variant, mean and standard deviation over its seeds, from
    each trial's val_acc_history: the paper's Figure 6 view, for studies that vary its ablation knobs."""
    if frame.empty or not set(FIGURE6_KNOBS) & set(knobs):
        return None
    eligible = frame[frame["eligible"]]
    by = [k for k in variant_knobs(knobs) if k in eligible]
    rows = [
        {"variant": ", ".join(f"{k}={trial[k]}" for k in by), "epoch": epoch, "val_acc": accuracy}
        for _, trial in eligible.iterrows()
        for epoch, accuracy in enumerate(
            trial["val_acc_history"] if isinstance(trial["val_acc_history"], list) else [], 1
        )
        if accuracy is not None
    ]
    if not rows:
        return None
    grouped = pd.DataFrame(rows).groupby(["variant", "epoch"])["val_acc"]
    return grouped.agg(mean="mean", std="std", runs="count").reset_index()
