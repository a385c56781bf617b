"""Dominance, defined once for the report's Pareto front and the pruner's rungs. No torch.

Every objective becomes a value to minimise (error = 1 - accuracy; costs as they are); a point
dominates another when it is no worse in every objective and strictly better in at least one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mbv2_search.study import OBJECTIVES


def minimised(columns: Mapping[str, Any], objectives: Sequence[str]) -> np.ndarray:
    """One row per point, one column per objective: error = 1 - accuracy, costs as they are.

    columns maps each objective to its values: a trials frame, or a dict of lists or scalars.
    """
    return np.column_stack(
        [_minimised(name, np.atleast_1d(np.asarray(columns[name], dtype=float))) for name in objectives]
    )


def _minimised(name: str, values: np.ndarray) -> np.ndarray:
    return 1 - values if OBJECTIVES[name] == "maximize" else values


def dominance(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """[i, j] is True where points[i] dominates others[j] (both minimisation rows, as from minimised)."""
    no_worse = (points[:, None, :] <= others[None, :, :]).all(axis=2)
    better = (points[:, None, :] < others[None, :, :]).any(axis=2)
    return no_worse & better


def non_dominated(points: np.ndarray) -> np.ndarray:
    """True for each row that no other row dominates: the Pareto front of a set of minimisation rows."""
    return ~dominance(points, points).any(axis=0)


class Front:
    """The non-dominated points among those added so far, kept as each arrives: what non_dominated
    would keep of them all (dominance is a strict partial order), at the cost of the front, not of
    every point."""

    def __init__(self) -> None:
        self.points: list[np.ndarray] = []

    def add(self, point: np.ndarray) -> None:
        """Add one minimisation row (as from minimised)."""
        if self.points:
            front = np.vstack(self.points)
            if dominance(front, point[None, :]).any():
                return
            beaten = dominance(point[None, :], front)[0]
            self.points = [p for p, out in zip(self.points, beaten) if not out]
        self.points.append(point)

    def __len__(self) -> int:
        return len(self.points)
