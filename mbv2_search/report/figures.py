"""Plotly figures drawn from analysis data (fronts already computed). No torch, no computation beyond layout."""

from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mbv2_search.reference import paper_table4, tf_slim_checkpoints
from mbv2_search.report.analysis import FrontData

COST_TITLES = {
    "madds": "MAdds",
    "params": "parameters",
    "peak_activation_bytes": "peak activation bytes",
    "latency_ms": "latency (ms)",
}


def _hover(frame: pd.DataFrame, knobs: list[str]) -> list[str]:
    """Trial number and knobs, HTML-escaped (knob values may be user strings)."""
    texts = []
    for _, row in frame.iterrows():
        parts = [f"{html.escape(str(k))}={html.escape(str(row[k]))}" for k in knobs if k in row and pd.notna(row[k])]
        texts.append(f"trial {int(row['number'])}<br>" + "<br>".join(parts))
    return texts


def pareto_figure(studies: list[FrontData], cost: str) -> go.Figure:
    """Validation accuracy against one cost: front joined, dominated faded, infeasible as a rug at 0.

    studies: one FrontData per study (analysis.front_data); several overlay.
    """
    figure = go.Figure()
    for data in studies:
        if data.frame.empty:
            continue
        label, objectives, knobs = html.escape(data.name), data.objectives, data.knobs
        front = data.front.sort_values(cost)  # joined left to right
        dominated, infeasible = data.dominated, data.infeasible
        figure.add_trace(
            go.Scatter(
                x=front[cost],
                y=front["val_acc"],
                mode="lines+markers",
                name=f"{label}: Pareto front ({', '.join(objectives)})",
                text=_hover(front, knobs),
                hoverinfo="text+x+y",
            )
        )
        figure.add_trace(
            go.Scatter(
                x=dominated[cost],
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
                    x=infeasible[cost],
                    y=[0.0] * len(infeasible),
                    mode="markers",
                    name=f"{label}: infeasible (not trained)",
                    marker={"symbol": "x", "color": "grey"},
                    text=_hover(infeasible, knobs),
                    hoverinfo="text+x",
                )
            )
    figure.update_layout(
        title=f"validation accuracy vs {COST_TITLES.get(cost, cost)}",
        xaxis_title=COST_TITLES.get(cost, cost),
        yaxis_title="validation accuracy",
        xaxis_type="log" if cost != "latency_ms" else "linear",
    )
    return figure


def reference_figure() -> go.Figure:
    """The published ImageNet numbers: 22 TF-Slim checkpoints (one line per width) and paper Table 4."""
    slim = tf_slim_checkpoints()
    figure = go.Figure()
    for width, group in slim.groupby("width"):
        group = group.sort_values("macs_m")
        figure.add_trace(
            go.Scatter(
                x=group["macs_m"] * 1e6,
                y=group["top1"],
                mode="lines+markers",
                name=f"TF-Slim width {width:g}",
                text=[f"{m}<br>{r} px" for m, r in zip(group["model"], group["resolution"])],
                hoverinfo="text+x+y",
            )
        )
    table4 = paper_table4()
    figure.add_trace(
        go.Scatter(
            x=table4["madds_m"] * 1e6,
            y=table4["top1"],
            mode="markers",
            name="paper Table 4",
            text=table4["network"],
            hoverinfo="text+x+y",
            marker={"symbol": "diamond", "size": 10},
        )
    )
    figure.update_layout(
        title="published ImageNet top-1 vs MAdds (TF-Slim checkpoints, paper Table 4)",
        xaxis_title="MAdds",
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


def knob_figure(frame: pd.DataFrame, knobs: list[str]) -> go.Figure:
    """Validation accuracy against each knob, one panel per knob."""
    shown = [k for k in knobs if k in frame]
    figure = make_subplots(
        rows=1, cols=max(1, len(shown)), subplot_titles=[html.escape(k) for k in shown], shared_yaxes=True
    )
    eligible = frame[frame["eligible"]]
    for column, knob in enumerate(shown, start=1):
        figure.add_trace(
            go.Scatter(
                x=eligible[knob].astype(str) if eligible[knob].dtype == object else eligible[knob],
                y=eligible["val_acc"],
                mode="markers",
                name=html.escape(knob),
                text=_hover(eligible, knobs),
                hoverinfo="text+y",
                showlegend=False,
            ),
            row=1,
            col=column,
        )
    figure.update_layout(
        title="how each knob matters: validation accuracy per knob value", yaxis_title="validation accuracy"
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
                x=group["madds"],
                y=group["val_acc"],
                mode="lines+markers",
                name=f"width {width:g}",
                text=[f"{r} px, {n} run(s)" for r, n in zip(group["resolution"], group["runs"])],
                hoverinfo="text+x+y",
            )
        )
    figure.update_layout(
        title="Figure 5 view: accuracy vs MAdds, one line per width across resolutions",
        xaxis_title="MAdds",
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
