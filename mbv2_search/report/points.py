"""One point per variant: seed repeats averaged, each point's standard error, and the neighbours on a
front that noise cannot tell apart. No torch.

A space that varies `seed` trains each variant (the same other knobs) several times; the report shows
the variant once, at the mean accuracy, with the standard deviation and the number of runs, and
computes its fronts on these means.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mbv2_search.noise import distinguishable, mean_stderr

COSTS = ("madds", "params", "peak_activation_bytes", "latency_ms")
POINT_COLUMNS = ("val_acc", "val_acc_err", "val_acc_std", "runs", "trials")


def variant_knobs(knobs: list[str]) -> list[str]:
    """The knobs that make a variant: all but the seed."""
    return [k for k in knobs if k != "seed"]


def variant_points(frame: pd.DataFrame, knobs: list[str]) -> pd.DataFrame:
    """One row per trained variant: its knobs, costs, mean val_acc (and test_acc), the standard deviation
    over seeds, runs, the trial numbers (`trials`; `number` is the first) and `val_acc_err`."""
    if frame.empty or not frame["eligible"].any():
        return pd.DataFrame(columns=["number", *variant_knobs(knobs), *COSTS, *POINT_COLUMNS])
    eligible = frame[frame["eligible"]].sort_values("number")
    by = [k for k in variant_knobs(knobs) if k in eligible]
    if "seed" not in knobs:  # every trained trial is its own variant (a repeat would be a duplicate)
        groups = [eligible.iloc[[i]] for i in range(len(eligible))]
    else:
        groups = [rows for _, rows in eligible.groupby(by, dropna=False, sort=False)] if by else [eligible]
    return pd.DataFrame([_point(rows, by) for rows in groups]).reset_index(drop=True)


def _point(rows: pd.DataFrame, by: list[str]) -> dict[str, object]:
    """A variant's runs as one point."""
    first = rows.iloc[0]
    accuracy = rows["val_acc"].astype(float)
    std = float(accuracy.std()) if len(rows) > 1 else float("nan")
    stderrs = rows["val_acc_stderr"].astype(float).tolist() if "val_acc_stderr" in rows else [float("nan")]
    point = {"number": int(first["number"]), **{k: first[k] for k in by}}
    # the analytic costs are the variant's, exact integers as stored; measured values are averaged
    point |= {c: int(first[c]) for c in COSTS[:3] if c in rows and pd.notna(first[c])}
    point |= {
        c: rows[c].astype(float).mean() for c in ("latency_ms", "test_acc") if c in rows and rows[c].notna().any()
    }
    if "retrained_val_acc" in rows:  # one-shot (no seed repeats): the front point's stand-alone accuracy
        point |= {
            "retrained_val_acc": first["retrained_val_acc"],
            "retrained_val_acc_err": first["retrained_val_acc_stderr"],
        }
    point |= {"inherited": bool(pd.notna(first.get("inherited")) and first.get("inherited"))}
    point |= {
        "val_acc": float(accuracy.mean()),
        "val_acc_err": mean_stderr(stderrs, std=std),
        "val_acc_std": std,
        "runs": len(rows),
        "trials": ", ".join(str(int(n)) for n in rows["number"]),
    }
    return point


def neighbour_ties(front: pd.DataFrame) -> list[str]:
    """For each point of a front in its drawn order: the trial numbers of its neighbours whose accuracy it
    cannot be told apart from (noise.distinguishable), '' where none, '?' where an error is unknown."""
    accuracy, error = front["val_acc"].to_numpy(float), front["val_acc_err"].to_numpy(float)
    numbers = front["number"].astype(int).tolist()
    ties: list[list[str]] = [[] for _ in numbers]
    for i in range(len(numbers) - 1):
        apart = distinguishable(accuracy[i], error[i], other=accuracy[i + 1], other_stderr=error[i + 1])
        if apart is None:
            ties[i].append("?")
            ties[i + 1].append("?")
        elif not apart:
            ties[i].append(str(numbers[i + 1]))
            ties[i + 1].append(str(numbers[i]))
    return [", ".join(dict.fromkeys(t)) for t in ties]


def jittered(values: pd.Series, *, seed: int = 0, spread: float = 0.3) -> tuple[np.ndarray, list[float], list[str]]:
    """Positions for a knob panel: each distinct value at an integer slot, every point moved by a seeded
    uniform offset (at most spread / 2) so that points on one value do not hide each other; the slots
    and their labels for the axis."""
    labels = sorted({str(v) for v in values}, key=_natural)
    slot = {label: float(i) for i, label in enumerate(labels)}
    offsets = np.random.default_rng(seed).uniform(-spread / 2, spread / 2, len(values))
    return np.array([slot[str(v)] for v in values]) + offsets, list(slot.values()), labels


def _natural(label: str) -> tuple[int, float, str]:
    """Numbers in numeric order, then the rest by name."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)
