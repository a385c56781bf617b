from __future__ import annotations

import math
from pathlib import Path

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
    front = "s: Pareto front (val_acc vs madds), ± 1 standard error"
    assert by_name == {front: 4, "s: dominated": 1, "s: infeasible (not trained)": 1}  # no error stored: no rings
    assert figure.layout.xaxis.title.text == "MAdds (M)" and max(figure.data[0].x) == 400 / 1e6


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
    before = set(tmp_path.rglob("*"))
    written = write_report([data], study_dirs=[ctx.report_dir], out_dir=tmp_path / "out")
    new_files = {p for p in set(tmp_path.rglob("*")) - before if p.is_file()}
    assert new_files == set(written.values())  # every file written is listed, pareto.csv too
    page = written["report.html"].read_text()
    assert page.count("plotly.js v") == 1  # the library embedded once: the page opens offline
    assert page.count('class="plotly-graph-div"') == 6  # 2 fronts, reference, hypervolume, knobs, EDF
    assert "<script src=" not in page  # nothing fetched when opened
    drawn = figures.pareto_figure([data.front_data], "madds").data
    shown = sum(len(t.x) for t in drawn if "distinguishable" not in t.name)  # rings mark front points again
    assert shown == sum(t.state == TrialState.COMPLETE for t in trials)
    csv = pd.read_csv(ctx.report_dir / "trials.csv")
    assert len(csv) == 3 and {"width", "madds", "val_acc", "feasible"} <= set(csv.columns)
    assert "# tiny" in summary_markdown(data)


def test_report_command_lists_every_file_it_writes(tmp_path, capsys):
    from mbv2_search.cli import main
    from tests.test_search import write_study

    path = write_study(tmp_path, n_trials=2)
    reports = tmp_path / "reports"
    main(["run", path, "--reports", str(reports)])
    before = set(reports.rglob("*"))
    capsys.readouterr()
    main(["report", path, "--reports", str(reports)])
    out = capsys.readouterr().out
    written = {p for p in set(reports.rglob("*")) - before if p.is_file()}
    listed = {Path(line.strip()) for line in out.splitlines()[1:]}
    assert out.startswith("wrote 4 files:") and listed == written and len(written) == 4


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


def trial(number, knob_values, acc, madds, *, stderr=None, **attrs):
    """A trained trial with any params (knobs and seed) and, where given, the standard error of its accuracy."""
    user_attrs = {"val_acc": acc, "madds": madds, "params": madds // 10, "feasible": True, "trained": True}
    user_attrs |= {"train_seconds": 1.0, "device": "cpu", **attrs}
    if stderr is not None:
        user_attrs["val_acc_stderr"] = stderr
    made_trial = create_trial(
        state=TrialState.COMPLETE,
        params=knob_values,
        distributions={k: CategoricalDistribution([v]) for k, v in knob_values.items()},
        user_attrs=user_attrs,
        values=[acc, madds],
    )
    made_trial.number = number
    return made_trial


def test_old_trials_take_their_error_from_split_sizes_or_show_none():
    trials = [
        trial(0, {"width": 0.5}, 0.9, 100, split_sizes={"train": 10, "val": 400, "test": 5}),
        trial(1, {"width": 1.0}, 0.95, 200),  # stored by 0.1.0: neither
        trial(2, {"width": 2.0}, 0.97, 300, stderr=0.01),
    ]
    frame = trials_frame(trials)
    assert frame["val_acc_stderr"].tolist()[0] == pytest.approx((0.9 * 0.1 / 400) ** 0.5)
    assert pd.isna(frame["val_acc_stderr"].tolist()[1]) and frame["val_acc_stderr"].tolist()[2] == 0.01
    data = front_data("s", frame, objectives=OBJECTIVES, knobs=["width"])
    assert list(data.front["ties"]) == ["?", "?", "?"]  # trial 1's error is unknown: neither verdict
    assert data.tie_note.endswith("3 without a stored error")
    bars = figures.pareto_figure([data], "madds").data[0].error_y.array
    assert bars[0] == pytest.approx(0.015) and bars[1] is None and bars[2] == 0.01


NOISY = [  # se 0.01 each: 0 and 1 differ by 0.01 < 2 x sqrt(2) x 0.01; 2 is 0.05 above 1
    trial(0, {"width": 0.5}, 0.90, 100, stderr=0.01),
    trial(1, {"width": 0.75}, 0.91, 200, stderr=0.01),
    trial(2, {"width": 1.0}, 0.96, 400, stderr=0.01),
    trial(3, {"width": 1.4}, 0.85, 500, stderr=0.01),  # dominated
]


def test_front_neighbours_within_noise_are_marked_in_figure_table_and_summary():
    data = front_data("s", trials_frame(NOISY), objectives=OBJECTIVES, knobs=["width"])
    assert list(data.front["number"]) == [0, 1, 2] and list(data.front["ties"]) == ["1", "0", ""]
    assert data.tie_note.startswith("2 of 3 front points not distinguishable from a neighbour")
    rings = [t for t in figures.pareto_figure([data], "madds").data if "distinguishable" in t.name]
    assert len(rings) == 1 and list(rings[0].x) == [100 / 1e6, 200 / 1e6] and "2 x sqrt(se1^2 + se2^2)" in rings[0].name
    summary = summary_markdown(study_data("s", NOISY, objectives=OBJECTIVES, knobs=["width"], config={}))
    assert "0.9000 ± 0.0100" in summary and "≈ neighbour" in summary and "2 of 3 front points" in summary


SEEDS = [  # width 0.75's best seed (0.85) beats width 0.5's mean at more cost, but its mean does not
    *(trial(i, {"width": 0.5, "seed": i}, acc, 100, stderr=0.01) for i, acc in enumerate([0.80, 0.82, 0.84])),
    *(trial(3 + i, {"width": 0.75, "seed": i}, acc, 150, stderr=0.01) for i, acc in enumerate([0.85, 0.77])),
    *(trial(5 + i, {"width": 1.0, "seed": i}, acc, 200, stderr=0.02) for i, acc in enumerate([0.90, 0.92, 0.91])),
]


def test_seed_repeats_are_one_point_and_the_front_uses_the_means():
    frame = trials_frame(SEEDS)
    assert sorted(frame.loc[pareto_mask(frame, OBJECTIVES), "number"]) == [2, 3, 6]  # per trial: seed luck
    data = front_data("s", frame, objectives=OBJECTIVES, knobs=["width", "seed"])
    assert len(data.points) == 3 and data.knobs == ["width"]
    assert list(data.front["width"]) == [0.5, 1.0] and list(data.dominated["width"]) == [0.75]
    wide = data.points[data.points["width"] == 1.0].iloc[0]
    assert wide["runs"] == 3 and wide["val_acc"] == pytest.approx(0.91) and wide["trials"] == "5, 6, 7"
    assert wide["val_acc_std"] == pytest.approx(0.01)
    assert wide["val_acc_err"] == pytest.approx((0.02**2 + 0.01**2 / 3) ** 0.5)  # sampling + seed spread
    report = study_data("s", SEEDS, objectives=OBJECTIVES, knobs=["width", "seed"], config={})
    summary = summary_markdown(report)
    assert "Pareto front: 2 points" in summary and "seed repeats of a variant are one point" in summary
    assert "std over seeds" in summary and "best validation accuracy: 0.9100 ± 0.0" in summary
    from mbv2_search.report.front_table import front_table

    table = front_table(data)
    assert list(table["trials"]) == ["0, 1, 2", "5, 6, 7"] and table["madds"].dtype.kind == "i"  # exact costs
    hover = figures.pareto_figure([data], "madds").data[0].text[1]
    assert "0.9100 ± 0.0100 (std over 3 seeds)" in hover


def test_each_cost_panel_draws_its_own_front():
    trials = [trial(0, {"width": 0.5}, 0.8, 100, params=50), trial(1, {"width": 1.0}, 0.9, 200, params=10)]
    report = study_data("s", trials, objectives=OBJECTIVES, knobs=["width"], config={})
    assert list(report.panel("madds").front["number"]) == [0, 1]
    assert list(report.panel("params").front["number"]) == [1]  # trial 0 is dominated on params
    figure = figures.pareto_figure([report.panel("params")], "params")
    assert figure.layout.xaxis.title.text == "params (M)" and list(figure.data[0].x) == [10 / 1e6]
    assert "val_acc vs params" in figure.data[0].name


def test_reference_points_are_labelled_and_apart():
    figure = figures.reference_figure()
    table4 = [t for t in figure.data if t.name.startswith("paper Table 4")]
    slim = [t for t in figure.data if t.name.startswith("TF-Slim")]
    from mbv2_search.reference import tf_slim_checkpoints

    widths = tf_slim_checkpoints()["width"].nunique()
    assert len(table4) == 1 and len(slim) == widths and figure.data[-1] is table4[0]  # Table 4 drawn on top
    assert "text" in table4[0].mode and "MobileNetV2 (1.4)" in table4[0].text
    assert {t.marker.symbol for t in slim} == {"circle"} and table4[0].marker.symbol == "star-open"
    assert figure.layout.xaxis.title.text == "MAdds (M)"


def test_knob_panels_jitter_the_same_way_every_time():
    from mbv2_search.report.points import jittered

    values = pd.Series([0.5, 0.5, 0.5, 1.0, 1.0, "x"])
    x, slots, labels = jittered(values, seed=1)
    again, _, _ = jittered(values, seed=1)
    assert np.array_equal(x, again) and labels == ["0.5", "1.0", "x"] and slots == [0.0, 1.0, 2.0]
    assert len(set(x[:3])) == 3 and np.all(np.abs(x - np.array([0, 0, 0, 1, 1, 2])) <= 0.15)
    data = front_data("s", trials_frame(NOISY), objectives=OBJECTIVES, knobs=["width"])
    panel = figures.knob_figure(data.points, data.knobs)
    assert list(panel.layout.xaxis.ticktext) == ["0.5", "0.75", "1.0", "1.4"]


def test_figure6_studies_draw_accuracy_per_epoch_for_each_variant():
    from mbv2_search.report.analysis import epoch_curves

    knobs = ["shortcut", "seed"]
    trials = [
        trial(i, {"shortcut": s, "seed": seed}, 0.9, 100, val_acc_history=history)
        for i, (s, seed, history) in enumerate(
            [("none", 0, [0.5, 0.7]), ("none", 1, [0.6, 0.8]), ("bottleneck", 0, [0.7, 0.9, 0.95])]
        )
    ]
    curves = epoch_curves(trials_frame(trials), knobs)
    none = curves[curves["variant"] == "shortcut=none"]
    assert list(none["mean"]) == pytest.approx([0.55, 0.75]) and list(none["runs"]) == [2, 2]
    assert len(curves[curves["variant"] == "shortcut=bottleneck"]) == 3
    figure = figures.epoch_figure(curves)
    assert sorted(t.name for t in figure.data) == ["shortcut=bottleneck", "shortcut=none"]
    assert epoch_curves(trials_frame(trials), ["width", "seed"]) is None  # not a Figure 6 study
    page = build_html([study_data("f6", trials, objectives=["val_acc"], knobs=knobs, config={})], "t")
    assert "Figure 6 view" in page
