from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from mbv2_search.report import figures
from mbv2_search.report.analysis import (
    error_edf,
    front_data,
    hypervolume,
    hypervolume_history,
    pareto_mask,
    spearman,
    trials_frame,
    variant_summary,
    width_resolution_points,
)
from mbv2_search.report.build import build_html, study_data, summary_markdown, write_report

OBJECTIVES = ["val_acc", "madds"]


def made(number, acc, madds, *, feasible=True, state=TrialState.COMPLETE, width=1.0, resolution=32, **attrs):
    """A hand-made finished trial with the attributes the search writes."""
    user_attrs = {
        "val_acc": acc,
        "madds": madds,
        "params": madds // 10,
        "feasible": feasible,
        "trained": feasible,
        "train_seconds": 1.0,
        "device": "cpu",
        **attrs,
    }
    values = [acc, madds] if state == TrialState.COMPLETE else None
    trial = create_trial(
        state=state,
        params={"width": width, "resolution": resolution},
        distributions={"width": CategoricalDistribution([width]), "resolution": CategoricalDistribution([resolution])},
        user_attrs=user_attrs,
        values=values,
    )
    trial.number = number
    return trial


TRIALS = [
    made(0, 0.90, 100),
    made(1, 0.95, 200),  # front
    made(2, 0.93, 300),  # dominated by 1
    made(3, 0.80, 50),  # front (cheapest)
    made(4, 0.0, 20, feasible=False),  # infeasible: never on the front
    made(5, 0.99, 400),  # front
    made(6, 0.0, 10, state=TrialState.FAIL),
]


def frame():
    return trials_frame(TRIALS)


def test_pareto_membership():
    data = frame()
    assert sorted(data.loc[pareto_mask(data, OBJECTIVES), "number"]) == [0, 1, 3, 5]


def test_hypervolume_2d_and_3d_known_values():
    assert hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), np.array([3.0, 3.0])) == pytest.approx(3.0)
    assert hypervolume(np.array([[1.0, 1.0, 1.0]]), np.array([2.0, 2.0, 2.0])) == pytest.approx(1.0)
    two = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert hypervolume(two, np.array([2.0, 2.0, 2.0])) == pytest.approx(2 + 4 - 1)  # boxes of 2 and 4 overlapping in 1
    assert hypervolume(np.array([[3.0, 3.0]]), np.array([2.0, 2.0])) == 0.0


def test_hypervolume_history_never_decreases():
    history = hypervolume_history(frame(), OBJECTIVES)
    assert list(history["number"]) == list(range(7))
    assert (np.diff(history["hypervolume"]) >= 0).all() and 0 < history["hypervolume"].iloc[-1] <= 1


def test_error_edf_is_monotone_up_to_one():
    edf = error_edf(frame())
    assert (np.diff(edf["share"]) > 0).all() and (np.diff(edf["error"]) >= 0).all()
    assert edf["share"].iloc[-1] == 1.0 and len(edf) == 5  # only trained trials


def test_spearman_on_known_orderings():
    a = pd.Series([1, 2, 3, 4])
    assert spearman(a, a * 10) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(spearman(pd.Series([1, 2]), pd.Series([2, 1])))


def test_variant_summary_mean_and_std():
    trials = [made(i, acc, 100, width=w) for i, (acc, w) in enumerate([(0.9, 0.5), (0.8, 0.5), (0.95, 1.0)])]
    table = variant_summary(trials_frame(trials), ["width"])
    row = table[table["width"] == 0.5].iloc[0]
    assert (
        row["runs"] == 2
        and row["mean"] == pytest.approx(0.85)
        and row["std"] == pytest.approx(np.std([0.9, 0.8], ddof=1))
    )


def test_front_data_splits_trials_into_front_dominated_and_infeasible():
    data = front_data("s", frame(), objectives=OBJECTIVES, knobs=["width", "resolution"])
    assert sorted(data.front["number"]) == [0, 1, 3, 5]
    assert list(data.dominated["number"]) == [2] and list(data.infeasible["number"]) == [4]
    empty = front_data("e", trials_frame([]), objectives=OBJECTIVES, knobs=[])
    assert empty.front.empty and empty.dominated.empty and empty.infeasible.empty


def test_pareto_figure_shows_every_trial_once():
    data = front_data("s", frame(), objectives=OBJECTIVES, knobs=["width", "resolution"])
    figure = figures.pareto_figure([data], "madds")
    by_name = {trace.name: len(trace.x) for trace in figure.data}
    assert by_name == {"s: Pareto front (val_acc, madds)": 4, "s: dominated": 1, "s: infeasible (not trained)": 1}


def test_figure5_only_for_width_resolution_grids():
    grid = [
        made(i, 0.9, 100 * i, width=w, resolution=r)
        for i, (w, r) in enumerate([(0.5, 16), (0.5, 32), (1.0, 16), (1.0, 32), (1.0, 32)])
    ]
    data = trials_frame(grid)
    points = width_resolution_points(data, ["width", "resolution"])
    assert len(points) == 4 and list(points["runs"]) == [1, 1, 1, 2]  # seeds of a variant averaged
    figure = figures.figure5(points)
    assert [len(t.x) for t in figure.data] == [2, 2]  # one line per width, one point per resolution
    assert width_resolution_points(data, ["width", "resolution", "expansion"]) is None


def test_user_strings_are_escaped(tmp_path):
    data = study_data(
        "<script>alert(1)</script>",
        TRIALS,
        objectives=OBJECTIVES,
        knobs=["width", "resolution"],
        config={"name": "<b>x</b>"},
    )
    page = build_html([data], "t")
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page


def test_report_from_a_tiny_real_study(tmp_path):
    from mbv2_search.storage import open_study
    from mbv2_search.workers import work
    from tests.test_search import context

    ctx = context(tmp_path, n_trials=3, constraints={"madds": "2e5"})
    work(ctx)
    trials = open_study(ctx).get_trials()
    data = study_data(
        "tiny",
        trials,
        objectives=ctx.study.objectives,
        knobs=["width", "resolution", "expansion"],
        config=ctx.study.model_dump(mode="json"),
    )
    written = write_report([data], study_dirs=[ctx.report_dir], out_dir=tmp_path / "out")
    page = written["report.html"].read_text()
    assert page.count("plotly.js v") == 1  # the library embedded once: the page opens offline
    assert page.count('class="plotly-graph-div"') == 6  # 2 fronts, reference, hypervolume, knobs, EDF
    assert "<script src=" not in page  # nothing fetched when opened
    shown = sum(len(t.x) for t in figures.pareto_figure([data.front_data], "madds").data)
    assert shown == sum(t.state == TrialState.COMPLETE for t in trials)
    csv = pd.read_csv(ctx.report_dir / "trials.csv")
    assert len(csv) == 3 and {"width", "madds", "val_acc", "feasible"} <= set(csv.columns)
    assert "# tiny" in summary_markdown(data)


def test_table_with_study_maps_scaled_resolutions_by_rank():
    from mbv2_search.report.paper import paper_grid, with_study

    resolutions = [20, 24, 28, 32, 36]
    trials = [made(i, 0.5 + 0.01 * i, 100, width=1.0, resolution=r) for i, r in enumerate(resolutions)]
    grid, note = with_study(paper_grid(), trials_frame(trials))
    measured = grid[grid["measured_runs"] > 0]
    assert sorted(measured["resolution"]) == [96, 128, 160, 192, 224] and (measured["width"] == 1.0).all()
    assert "20->96" in note and "Spearman rank correlation with published top-1 over 5 points: 1.000" in note


def test_table_latency_beside_pixel1(capsys):
    from mbv2_search.cli import main

    main(["table", "--latency", "--repeats", "1", "--format", "csv"])
    captured = capsys.readouterr()
    table = pd.read_csv(__import__("io").StringIO(captured.out))
    assert table["latency_ms"].gt(0).all() and table["pixel1_ms_published"].notna().all()
    assert "Spearman rank correlation with Pixel-1" in captured.err
