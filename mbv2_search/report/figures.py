"""Plotly figures drawn from analysis data (fronts already computed). No torch, no computation beyond layout."""

from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mbv2_search.noise import TIE_RULE
from mbv2_search.reference import paper_table4, tf_slim_checkpoints
from mbv2_search.report.analysis import FrontData
from mbv2_search.report.points import jittered

# Costs are integers in storage and millions (KiB for memory) in reports: (axis title, divisor).
COST_AXES = {
    "madds": ("MAdds (M)", 1e6),
    "params": ("params (M)", 1e6),
    "peak_activation_bytes": ("peak activation (KiB)", 1024),
    "latency_ms": ("latency (ms)", 1),
}


def cost_axis(cost: str) -> tuple[str, float]:
    """A cost's axis title with its unit, and what to divide stored values by."""
    return COST_AXES.get(cost, (cost, 1))


def _hover(frame: pd.DataFrame, knobs: list[str]) -> list[str]:
    """Trial number(s), knobs and, for seed repeats, mean ± std over n runs; HTML-escaped (user strings)."""
    texts = []
    for _, row in frame.iterrows():
        parts = [f"{html.escape(str(k))}={html.escape(str(row[k]))}" for k in knobs if k in row and pd.notna(row[k])]
        head = f"trial {int(row['number'])}"
        if row.get("runs", 1) > 1:
            head = f"trials {row['trials']}: {row['val_acc']:.4f} ± {row['val_acc_std']:.4f} (std over {row['runs']} seeds)"
        texts.append(head + "<br>" + "<br>".join(parts))
    return texts


def _errors(frame: pd.DataFrame) -> dict:
    """Error bars of ± val_acc_err; none where the error is unknown."""
    errors = [None if pd.isna(e) else float(e) for e in frame["val_acc_err"]]
    return {"type": "data", "array": errors, "visible": True, "thickness": 1}


def pareto_figure(studies: list[FrontData], cost: str) -> go.Figure:
    """Validation accuracy against one cost: the front of that cost joined, with ± 1 standard error bars
    and rings on points noise cannot tell from a neighbour; dominated faded, infeasible as a rug at 0.

    studies: one FrontData per study, its front computed along this cost (analysis.front_data).
    """
    figure = go.Figure()
    title, scale = cost_axis(cost)
    for data in studies:
        if data.frame.empty:
            continue
        label, knobs = html.escape(data.name), data.knobs
        front, dominated, infeasible = data.front, data.dominated, data.infeasible
        figure.add_trace(
            go.Scatter(
                x=front[cost] / scale,
                y=front["val_acc"],
                error_y=_errors(front),
                mode="lines+markers",
                name=f"{label}: Pareto front ({' vs '.join(data.objectives)}), ± 1 standard error",
                text=_hover(front, knobs),
                hoverinfo="text+x+y",
            )
        )
        tied = front[(front["ties"] != "") & ~front["ties"].str.contains("?", regex=False)]
        if len(tied):
            figure.add_trace(_tie_rings(tied, cost, label=label))
        figure.add_trace(
            go.Scatter(
                x=dominated[cost] / scale,
                y=dominated["val_acc"],
                mode="markers",
                name=f"{label}: dominated",
                marker={"opacity": 0.45},
                text=_hover(dominated, knobs),
                hoverinfo="text+x+y",
            )
        )
        if len(infeasible):
            figure.add_trace(
                go.Scatter(
                    x=infeasible[cost] / scale,
                    y=[0.0] * len(infeasible),
                    mode="markers",
                    name=f"{label}: infeasible (not trained)",
                    marker={"symbol": "x", "color": "grey"},
                    text=_hover(infeasible, knobs),
                    hoverinfo="text+x",
                )
            )
    figure.update_layout(
        title=f"validation accuracy vs {title}",
        xaxis_title=title,
        yaxis_title="validation accuracy",
        xaxis_type="log" if cost != "latency_ms" else "linear",
    )
    return figure


def _tie_rings(tied: pd.DataFrame, cost: str, *, label: str) -> go.Scatter:
    """Rings on the front points that noise cannot tell from a neighbour."""
    return go.Scatter(
        x=tied[cost] / cost_axis(cost)[1],
        y=tied["val_acc"],
        mode="markers",
        name=f"{label}: not distinguishable from a front neighbour ({TIE_RULE})",
        marker={"symbol": "circle-open", "size": 16, "line": {"width": 2}},
        text=[f"trial {n}: within noise of trial(s) {t}" for n, t in zip(tied["number"], tied["ties"])],
        hoverinfo="text",
    )


def reference_figure() -> go.Figure:
    """The published ImageNet numbers: 22 TF-Slim checkpoints (a line per width, small dots) and paper
    Table 4 (open stars, each named), drawn on top so that neither hides the other."""
    slim = tf_slim_checkpoints()
    figure = go.Figure()
    for width, group in slim.groupby("width"):
        group = group.sort_values("macs_m")
        figure.add_trace(
            go.Scatter(
                x=group["macs_m"],
                y=group["top1"],
                mode="lines+markers",
                name=f"TF-Slim checkpoints, width {width:g}",
                marker={"symbol": "circle", "size": 6},
                text=[f"TF-Slim {m}<br>{r} px" for m, r in zip(group["model"], group["resolution"])],
                hoverinfo="text+x+y",
            )
        )
    table4 = paper_table4()
    figure.add_trace(
        go.Scatter(
            x=table4["madds_m"],
            y=table4["top1"],
            mode="markers+text",
            name="paper Table 4 (named)",
            text=table4["network"],
            textposition="top center",
            hovertext=[f"paper Table 4: {n}" for n in table4["network"]],
            hoverinfo="text+x+y",
            marker={"symbol": "star-open", "size": 14, "line": {"width": 2}, "color": "black"},
        )
    )
    figure.update_layout(
        title="published ImageNet top-1 vs MAdds (TF-Slim checkpoints, paper Table 4)",
        xaxis_title="MAdds (M)",
        yaxis_title="ImageNet top-1 (%)",
        xaxis_type="log",
    )
    return figure


def hypervolume_figure(histories: list[tuple[str, pd.DataFrame]], reference_text: str) -> go.Figure:
    """Normalised hypervolume of the front after each trial."""
    figure = go.Figure()
    for name, history in histories:
        figure.add_trace(
            go.Scatter(x=history["number"], y=history["hypervolume"], mode="lines+markers", name=html.escape(name))
        )
    figure.update_layout(
        title=f"hypervolume vs trial (reference point: {html.escape(reference_text)})",
        xaxis_title="trial number",
        yaxis_title="hypervolume (share of the reference box)",
    )
    return figure


def knob_figure(points: pd.DataFrame, knobs: list[str]) -> go.Figure:
    """Validation accuracy against each knob, one panel per knob; points on one value are spread by a
    seeded jitter (the same every time), each value's slot labelled.

    points: analysis variant points (seeds averaged); knobs: the variant's knobs.
    """
    shown = [k for k in knobs if k in points]
    figure = make_subplots(
        rows=1, cols=max(1, len(shown)), subplot_titles=[html.escape(k) for k in shown], shared_yaxes=True
    )
    for column, knob in enumerate(shown, start=1):
        x, slots, labels = jittered(points[knob], seed=column)
        figure.add_trace(
            go.Scatter(
                x=x,
                y=points["val_acc"],
                mode="markers",
                name=html.escape(knob),
                marker={"opacity": 0.7},
                text=_hover(points, knobs),
                hoverinfo="text+y",
                showlegend=False,
            ),
            row=1,
            col=column,
        )
        figure.update_xaxes(tickvals=slots, ticktext=[html.escape(t) for t in labels], row=1, col=column)
    figure.update_layout(
        title="how each knob matters: validation accuracy per knob value (points jittered sideways)",
        yaxis_title="validation accuracy",
    )
    return figure


def figure5(points: pd.DataFrame) -> go.Figure:
    """Paper Figure 5 view: accuracy vs MAdds, one line per width across resolutions.

    points: analysis.width_resolution_points (means over seeds per width and resolution).
    """
    figure = go.Figure()
    for width, group in points.groupby("width"):
        group = group.sort_values("resolution")
        figure.add_trace(
            go.Scatter(
                x=group["madds"] / 1e6,
                y=group["val_acc"],
                mode="lines+markers",
                name=f"width {width:g}",
                text=[f"{r} px, {n} run(s)" for r, n in zip(group["resolution"], group["runs"])],
                hoverinfo="text+x+y",
            )
        )
    figure.update_layout(
        title="Figure 5 view: accuracy vs MAdds, one line per width across resolutions",
        xaxis_title="MAdds (M)",
        yaxis_title="validation accuracy",
        xaxis_type="log",
    )
    return figure


def edf_figure(edfs: list[tuple[str, pd.DataFrame]]) -> go.Figure:
    """Error EDFs, one curve per study (Radosavovic et al. 2019)."""
    figure = go.Figure()
    for name, edf in edfs:
        figure.add_trace(
            go.Scatter(x=edf["error"], y=edf["share"], mode="lines", line_shape="hv", name=html.escape(name))
        )
    figure.update_layout(
        title="error EDF: share of trained models with validation error <= e",
        xaxis_title="validation error e",
        yaxis_title="share of models",
        yaxis_range=[0, 1],
    )
    return figure


def epoch_figure(curves: pd.DataFrame) -> go.Figure:
    """Paper Figure 6 view: validation accuracy per epoch, one line per variant (mean over seeds, ± std).

    curves: analysis.epoch_curves.
    """
    figure = go.Figure()
    for variant, group in curves.groupby("variant", sort=True):
        figure.add_trace(
            go.Scatter(
                x=group["epoch"],
                y=group["mean"],
                error_y={"type": "data", "array": group["std"].fillna(0).tolist(), "visible": True, "thickness": 1},
                mode="lines+markers",
                name=html.escape(str(variant)),
                text=[f"{n} run(s)" for n in group["runs"]],
                hoverinfo="text+x+y",
            )
        )
    figure.update_layout(
        title="Figure 6 view: validation accuracy during training, per variant (mean ± std over seeds)",
        xaxis_title="epoch",
        yaxis_title="validation accuracy",
    )
    return figure
