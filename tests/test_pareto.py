from __future__ import annotations

import itertools
import random

from mbv2_search.pareto import Front, dominance, minimised, non_dominated

OBJECTIVES = ["val_acc", "madds", "params"]


def dominates_by_hand(a: dict, b: dict) -> bool:
    """Accuracy maximised, costs minimised: no worse in all, better in one."""
    no_worse = a["val_acc"] >= b["val_acc"] and all(a[c] <= b[c] for c in OBJECTIVES[1:])
    better = a["val_acc"] > b["val_acc"] or any(a[c] < b[c] for c in OBJECTIVES[1:])
    return no_worse and better


def test_dominance_matches_the_definition_on_ties_and_random_points():
    rng = random.Random(0)
    # few distinct values, so ties in every objective are common
    points = [
        {"val_acc": rng.choice([0.1, 0.25, 0.5, 0.9]), "madds": rng.choice([10, 20, 30]), "params": rng.choice([1, 2])}
        for _ in range(40)
    ]
    columns = {name: [p[name] for p in points] for name in OBJECTIVES}
    matrix = dominance(minimised(columns, OBJECTIVES), minimised(columns, OBJECTIVES))
    for i, j in itertools.product(range(len(points)), repeat=2):
        assert matrix[i, j] == dominates_by_hand(points[i], points[j])
    front = non_dominated(minimised(columns, OBJECTIVES))
    assert front.tolist() == [not any(dominates_by_hand(q, p) for q in points) for p in points]


def test_accuracy_becomes_error_and_costs_stay_as_they_are():
    row = minimised({"val_acc": 0.75, "madds": 300, "params": 7}, OBJECTIVES)
    assert row.tolist() == [[0.25, 300.0, 7.0]]


def test_a_front_kept_point_by_point_is_the_front_of_all_points():
    rng = random.Random(1)
    values = {"val_acc": [0.1, 0.5, 0.9, float("nan")], "madds": [10, 20, 30], "params": [1, 2]}  # ties and NaN
    for _ in range(20):
        rows = minimised({k: [rng.choice(v) for _ in range(30)] for k, v in values.items()}, OBJECTIVES)
        front = Front()
        for count, row in enumerate(rows, start=1):
            front.add(row)
            assert len(front) == int(non_dominated(rows[:count]).sum())
