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
    epoch_curves,
    error_edf,
    front_data,
    hypervolume_history,
    reference_point,
    retrained_results,
    trials_frame,
    variant_summary,
    width_resolution_points,
)
from mbv2_search.report.front_table import front_table, readable


@dataclass
class StudyData:
    """One study's trials as frames, with what the report needs to label them."""

    name: str
    objectives: list[str]
    knobs: list[str]
    config: dict[str, Any]
    frame: pd.DataFrame
    counts: dict[str, int]  # search.counts of the same trials
    front_data: FrontData  # its variants and their front over the study's objectives, computed once
    supernet_seconds: float = 0.0  # one-shot: training the supernet (the trials' and retrainings' are in frame)

    def panel(self, cost: str) -> FrontData:
        """The variants with the front of accuracy against this one cost, ordered along it (a figure's panel)."""
        return front_data(self.name, self.frame, objectives=["val_acc", cost], knobs=self.knobs, along=cost)

    @property
    def seeds(self) -> bool:
        """Whether the space varies the seed: repeats of a variant are one point."""
        return "seed" in self.knobs


def study_data(
    name: str,
    trials: list[Any],
    *,
    objectives: list[str],
    knobs: list[str],
    config: dict[str, Any],
    study_attrs: dict[str, Any] | None = None,
) -> StudyData:
    """Frames for one study from its Optuna trials and attrs (the report's only input from storage)."""
    frame = trials_frame(trials, retrained_results(study_attrs or {}))
    front = front_data(name, frame, objectives=objectives, knobs=knobs)
    supernet = (study_attrs or {}).get("supernet") or {}
    return StudyData(
        name, objectives, knobs, config, frame, counts(trials), front, float(supernet.get("train_seconds", 0.0))
    )


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


def _points(count: int) -> str:
    return f"{count} point" + ("" if count == 1 else "s")


def noise_notes(data: StudyData) -> list[str]:
    """What the ± and the ≈ marks mean, how seed repeats are shown, and where one-shot accuracies come from."""
    spread = "; for a mean over seeds also their spread, std / sqrt(n)" if data.seeds else ""
    notes = [f"val_acc ± 1 standard error: binomial over the validation images{spread}", data.front_data.tie_note]
    if "inherited" in data.frame and data.frame["inherited"].eq(True).any():
        notes.append(
            "one-shot: the search's val_acc is inherited from the supernet (BatchNorm recalibrated); "
            "retrained val_acc: the front's points trained on their own afterwards"
            + _agreement_clause(data.front_data.front)
        )
    if data.seeds:
        notes.append("seed repeats of a variant are one point: mean, std over its n runs; fronts use the means")
    return notes


def one_shot_agreement(front: pd.DataFrame) -> tuple[float, int] | None:
    """How well inherited accuracy ranks the retrained front points: (Spearman, points), where three or more
    are retrained."""
    if "retrained_val_acc" not in front:
        return None
    pairs = front[["val_acc", "retrained_val_acc"]].dropna().astype(float)
    if len(pairs) < 3:
        return None
    return pairs["val_acc"].rank().corr(pairs["retrained_val_acc"].rank()), len(pairs)


def _agreement_clause(front: pd.DataFrame) -> str:
    agreement = one_shot_agreement(front)
    if agreement is None:
        return ""
    return f"; Spearman rank correlation of the two over {agreement[1]} front points: {agreement[0]:.2f}"


def summary_markdown(data: StudyData) -> str:
    """The front and headline numbers in Markdown, fit to paste into a paper or an issue."""
    frame, points = data.frame, data.front_data.points
    lines = [f"# {data.name}", ""]
    if points.empty:
        return "\n".join([*lines, "No trained trials yet."]) + "\n"
    best = points.sort_values("val_acc", ascending=False).iloc[0]
    total = frame["train_seconds"].fillna(0).sum() + data.supernet_seconds
    if "retrained_train_seconds" in frame:
        total += frame["retrained_train_seconds"].fillna(0).sum()
    lines += [
        f"- objectives: {', '.join(data.objectives)}",
        "- trials: " + ", ".join(f"{v} {k}" for k, v in _counts(data).items()),
        f"- best validation accuracy: {readable(best.to_frame().T[['val_acc', 'val_acc_err']]).iloc[0, 0]} "
        f"(trial{'s' if best['runs'] > 1 else ''} {best['trials']}: {best['madds'] / 1e6:.2f} M MAdds, {best['params'] / 1e6:.3f} M params)",
        f"- Pareto front: {_points(len(data.front_data.front))}; total training time {total / 60:.1f} min{' (supernet and retrained points included)' if data.supernet_seconds else ''} on {_hardware(frame)}",
        *(f"- {note}" for note in noise_notes(data)),
        "",
        "## Pareto front",
        "",
        readable(front_table(data.front_data)).to_markdown(index=False, floatfmt=".4g"),
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


def _fronts(studies: list[StudyData]) -> str:
    """A panel per cost, each with its own front (accuracy against that cost alone)."""
    costs = [c for c in ("madds", "params") if any(c in s.frame for s in studies)]
    panels = [figures.pareto_figure([s.panel(cost) for s in studies], cost) for cost in costs]
    notes = "".join(f"<li>{html.escape(s.name)}: {html.escape('; '.join(noise_notes(s)))}</li>" for s in studies)
    return "".join(_figure_html(f) for f in panels) + f"<ul>{notes}</ul>"


def _hypervolume(studies: list[StudyData]) -> str:
    histories, references = [], []
    for s in studies:
        if not s.frame.empty and s.frame["eligible"].any():
            histories.append((s.name, hypervolume_history(s.frame, s.objectives)))
            point = reference_point(s.frame, s.objectives)
            references.append(
                f"{s.name}: "
                + ", ".join(f"{'error' if o == 'val_acc' else o} {v:.4g}" for o, v in zip(s.objectives, point))
            )
    return _figure_html(figures.hypervolume_figure(histories, "; ".join(references)))


def _knobs(s: StudyData) -> str:
    """Accuracy per knob; the Figure 5 view for width x resolution grids, Figure 6 curves for its ablations."""
    if s.frame.empty:
        return ""
    parts = [_figure_html(figures.knob_figure(s.front_data.points, s.front_data.knobs))]
    grid = width_resolution_points(s.frame, s.knobs)
    if grid is not None:
        parts.append(_figure_html(figures.figure5(grid)))
    curves = epoch_curves(s.frame, s.knobs)
    if curves is not None:
        parts.append(_figure_html(figures.epoch_figure(curves)))
    return "".join(parts)


def _study(s: StudyData) -> str:
    body = _table_html(readable(front_table(s.front_data))) if not s.frame.empty else "<p>no trials</p>"
    if s.seeds and not s.frame.empty:
        variants = s.front_data.knobs
        body += "<h3>accuracy per variant over seeds</h3>" + _table_html(variant_summary(s.frame, variants))
    counts = "".join(f"<li>{html.escape(k)}: {v}</li>" for k, v in _counts(s).items())
    total = s.frame["train_seconds"].fillna(0).sum() if not s.frame.empty else 0
    body += f"<ul>{counts}<li>total training time: {total / 60:.1f} min</li><li>hardware: {html.escape(_hardware(s.frame))}</li></ul>"
    return body + f"<h3>configuration</h3><pre>{html.escape(yaml.safe_dump(s.config, sort_keys=False))}</pre>"


def build_html(studies: list[StudyData], title: str) -> str:
    """One self-contained page: plotly's script embedded once, every figure and table after it."""
    parts = [
        _section("Pareto front", _fronts(studies)),
        _section("Published reference (ImageNet; different data, own panel)", _figure_html(figures.reference_figure())),
        _section("Hypervolume", _hypervolume(studies)),
        *(_section(f"How each knob matters: {s.name}", _knobs(s)) for s in studies),
        _section(
            "Error EDF",
            _figure_html(figures.edf_figure([(s.name, error_edf(s.frame)) for s in studies if not s.frame.empty])),
        ),
        *(_section(f"Study {s.name}", _study(s)) for s in studies),
    ]
    style = "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}pre{background:#f6f6f6;padding:8px}"
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>"
    )


def write_report(studies: list[StudyData], *, study_dirs: list[Path], out_dir: Path) -> dict[str, Path]:
    """Write each study's trials.csv and pareto.csv in its folder, report.html and summary.md in out_dir;
    every file written, by name."""
    written = {}
    for data, folder in zip(studies, study_dirs):
        folder.mkdir(parents=True, exist_ok=True)
        written[f"{data.name}/trials.csv"] = folder / "trials.csv"
        data.frame.to_csv(written[f"{data.name}/trials.csv"], index=False)
        written[f"{data.name}/pareto.csv"] = folder / "pareto.csv"
        front_table(data.front_data).to_csv(written[f"{data.name}/pareto.csv"], index=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = "mbv2-search report: " + ", ".join(s.name for s in studies)
    written["report.html"] = out_dir / "report.html"
    written["report.html"].write_text(build_html(studies, title), encoding="utf-8")
    written["summary.md"] = out_dir / "summary.md"
    written["summary.md"].write_text("\n".join(summary_markdown(s) for s in studies), encoding="utf-8")
    return written
