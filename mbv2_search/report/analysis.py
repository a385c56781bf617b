"""Study analysis that returns data (pandas): the trials table and the Pareto front. No torch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mbv2_search.config import OBJECTIVES

TRIAL_COLUMNS = (
    "val_acc",
    "test_acc",
    "madds",
    "params",
    "peak_activation_bytes",
    "latency_ms",
    "feasible",
    "trained",
    "epochs",
    "train_seconds",
    "train_images_per_second",
    "train_step_seconds",
    "eval_seconds",
    "device",
    "seed",
    "fvcore_madds",
    "fail_reason",
    "excluded",
    "baseline",
)


def trials_frame(trials: list[Any], objectives: list[str]) -> pd.DataFrame:
    """One row per trial: number, state, every knob (params), every cost and metric from user attrs."""
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        row.update(t.params)
        for column in TRIAL_COLUMNS:
            row[column] = t.user_attrs.get(column)
        row["duration_s"] = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["eligible"] = (frame["state"] == "COMPLETE") & frame["trained"].eq(True) & frame["excluded"].isna()
    return frame


def pareto_mask(frame: pd.DataFrame, objectives: list[str]) -> pd.Series:
    """True for eligible trials (complete, feasible, trained) that no other eligible trial dominates."""
    mask = pd.Series(False, index=frame.index)
    if frame.empty:
        return mask
    eligible = frame[frame["eligible"]]
    if eligible.empty:
        return mask
    # minimise everything: negate the maximised objectives
    points = np.column_stack(
        [(-1 if OBJECTIVES[name] == "maximize" else 1) * eligible[name].astype(float).to_numpy() for name in objectives]
    )
    no_worse = (points[:, None, :] <= points[None, :, :]).all(axis=2)
    better = (points[:, None, :] < points[None, :, :]).any(axis=2)
    dominated = (no_worse & better).any(axis=0)  # row j dominated by some i
    mask.loc[eligible.index] = ~dominated
    return mask
