"""Write a study's report folder: report.html (self-contained), trials.csv, pareto.csv, summary.md."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import yaml
from plotly.offline import get_plotlyjs

from mbv2_search.ledger import counts
from mbv2_search.report import figures
from mbv2_search.report.analysis import (
    FrontData,
    error_edf,
    hypervolume_history,
    pareto_mask,
    reference_point,
    trials_frame,
    variant_summary,
    width_resolution_points,
)


@dataclass
class StudyData:
    """One study's trials as frames, with what the report needs to label them."""

    name: str
    objectives: list[str]
    knobs: list[str]
    config: dict[str, Any]
    frame: pd.DataFrame
    counts: dict[str, int]  # search.counts of the same trials
    front_mask: pd.Series  # analysis.pareto_mask of frame over objectives, computed once

    @property
    def front_data(self) -> FrontData:
        """The trials with their front, as the figures take them."""
        return FrontData(self.name, self.frame, self.front_mask, self.knobs, self.objectives)

    @property
    def front(self) -> pd.DataFrame:
        """The Pareto-optimal trials, cheapest first."""
        if self.frame.empty:
            return self.frame
        return self.frame[self.front_mask].sort_values(self.objectives[-1])


def study_data(
    name: str, trials: list[Any], *, objectives: list[str], knobs: list[str], config: dict[str, Any]
) -> StudyData:
    """Frames for one study from its Optuna trials (the report's only input from storage)."""
    frame = trials_frame(trials)
    return StudyData(name, objectives, knobs, config, frame, counts(trials), pareto_mask(frame, objectives))


def _front_table(data: StudyData) -> pd.DataFrame:
    columns = ["number", *data.knobs, "madds", "params", "peak_activation_bytes", "latency_ms", "val_acc", "test_acc"]
    front = data.front
    return front[[c for c in columns if c in front and front[c].notna().any()]].reset_index(drop=True)


def _readable(front: pd.DataFrame) -> pd.DataFrame:
    """Costs in millions (KiB for memory) for people; the CSV files keep exact integers."""
    shown = front.copy()
    for column, scale, label in (
        ("madds", 1e6, "MAdds (M)"),
        ("params", 1e6, "params (M)"),
        ("peak_activation_bytes", 1024, "peak act. (KiB)"),
    ):
        if column in shown:
            shown[column] = (shown[column] / scale).round(3)
            shown = shown.rename(columns={column: label})
    return shown


def _counts(data: StudyData) -> dict[str, int]:
    """The search's counts, labelled for people; complete means trained here."""
    c = data.counts
    return {
        "complete (trained)": c["complete"] - c["infeasible"],
        "infeasible (not trained)": c["infeasible"],
        "stopped early (pruned)": c["pruned"],
        "failed": c["failed"],
        "running": c["running"],
        "duplicates (proposed again, not trained or counted)": c["duplicate"],
        "excluded (interrupted, stale, environment, surplus; not counted)": c["excluded"],
    }


def _hardware(frame: pd.DataFrame) -> str:
    if frame.empty or "device" not in frame:
        return "-"
    devices = frame["device"].dropna().unique().tolist()
    hardware = frame["hardware"].dropna().unique().tolist() if "hardware" in frame else []
    return ", ".join(str(x) for x in hardware + devices) or "-"


def summary_markdown(data: StudyData) -> str:
    """The front and headline numbers in Markdown, fit to paste into a paper or an issue."""
    frame = data.frame
    lines = [f"# {data.name}", ""]
    if frame.empty or not frame["eligible"].any():
        return "\n".join([*lines, "No trained trials yet."]) + "\n"
    best = frame[frame["eligible"]].sort_values("val_acc", ascending=False).iloc[0]
    total = frame["train_seconds"].fillna(0).sum()
    lines += [
        f"- objectives: {', '.join(data.objectives)}",
        "- trials: " + ", ".join(f"{v} {k}" for k, v in _counts(data).items()),
        f"- best validation accuracy: {best['val_acc']:.4f} (trial {int(best['number'])}, {best['madds'] / 1e6:.2f} M MAdds, {best['params'] / 1e6:.3f} M params)",
        f"- Pareto front: {len(data.front)} trials; total training time {total / 60:.1f} min on {_hardware(frame)}",
        "",
        "## Pareto front",
        "",
        _readable(_front_table(data)).to_markdown(index=False, floatfmt=".4g"),
        "",
    ]
    return "\n".join(lines)


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _figure_html(figure: go.Figure) -> str:
    return figure.to_html(full_html=False, include_plotlyjs=False)


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(
        index=False, escape=True, float_format=lambda v: f"{v:.4g}", na_rep="", border=0, classes="table"
    )


def build_html(studies: list[StudyData], title: str) -> str:
    """One self-contained page: plotly's script embedded once, every figure and table after it."""
    parts = []
    costs = [c for c in ("madds", "params") if any(c in s.frame for s in studies)]
    series = [s.front_data for s in studies]
    parts.append(_section("Pareto front", "".join(_figure_html(figures.pareto_figure(series, cost)) for cost in costs)))
    parts.append(
        _section("Published reference (ImageNet; different data, own panel)", _figure_html(figures.reference_figure()))
    )
    histories, references = [], []
    for s in studies:
        if not s.frame.empty and s.frame["eligible"].any():
            histories.append((s.name, hypervolume_history(s.frame, s.objectives)))
            point = reference_point(s.frame, s.objectives)
            references.append(
                f"{s.name}: "
                + ", ".join(f"{'error' if o == 'val_acc' else o} {v:.4g}" for o, v in zip(s.objectives, point))
            )
    parts.append(_section("Hypervolume", _figure_html(figures.hypervolume_figure(histories, "; ".join(references)))))
    for s in studies:
        knob_parts = [_figure_html(figures.knob_figure(s.frame, s.knobs))] if not s.frame.empty else []
        points = width_resolution_points(s.frame, s.knobs) if not s.frame.empty else None
        if points is not None:
            knob_parts.append(_figure_html(figures.figure5(points)))
        parts.append(_section(f"How each knob matters: {s.name}", "".join(knob_parts)))
    parts.append(
        _section(
            "Error EDF",
            _figure_html(figures.edf_figure([(s.name, error_edf(s.frame)) for s in studies if not s.frame.empty])),
        )
    )
    for s in studies:
        body = _table_html(_readable(_front_table(s))) if not s.frame.empty else "<p>no trials</p>"
        variants = [k for k in s.knobs if k != "seed"]
        if "seed" in s.knobs and not s.frame.empty:
            body += "<h3>accuracy per variant over seeds</h3>" + _table_html(variant_summary(s.frame, variants))
        counts = "".join(f"<li>{html.escape(k)}: {v}</li>" for k, v in _counts(s).items())
        total = s.frame["train_seconds"].fillna(0).sum() if not s.frame.empty else 0
        body += f"<ul>{counts}<li>total training time: {total / 60:.1f} min</li><li>hardware: {html.escape(_hardware(s.frame))}</li></ul>"
        body += f"<h3>configuration</h3><pre>{html.escape(yaml.safe_dump(s.config, sort_keys=False))}</pre>"
        parts.append(_section(f"Study {s.name}", body))
    style = "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}pre{background:#f6f6f6;padding:8px}"
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>"
    )


def write_report(studies: list[StudyData], *, study_dirs: list[Path], out_dir: Path) -> dict[str, Path]:
    """Write each study's trials.csv and pareto.csv in its folder; report.html and summary.md in out_dir."""
    written = {}
    for data, folder in zip(studies, study_dirs):
        folder.mkdir(parents=True, exist_ok=True)
        data.frame.to_csv(folder / "trials.csv", index=False)
        _front_table(data).to_csv(folder / "pareto.csv", index=False)
        written[f"{data.name}/trials.csv"] = folder / "trials.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    title = "mbv2-search report: " + ", ".join(s.name for s in studies)
    (out_dir / "report.html").write_text(build_html(studies, title), encoding="utf-8")
    (out_dir / "summary.md").write_text("\n".join(summary_markdown(s) for s in studies), encoding="utf-8")
    written["report.html"] = out_dir / "report.html"
    written["summary.md"] = out_dir / "summary.md"
    return written
