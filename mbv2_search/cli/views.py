"""Rich views: the fvcore comparison, the search progress bar and a study's status with its front."""

from __future__ import annotations

from typing import Any

from rich.table import Table as RichTable

from mbv2_search.arch import ArchSpec
from mbv2_search.cli.app import console, print_frame
from mbv2_search.knobs import KNOBS


def print_fvcore(spec: ArchSpec, madds: int, *, params: int, bn_params: int, counted: Any) -> None:
    from mbv2_search.cost import MADD_OPERATORS
    from mbv2_search.layers import layers

    analytic = {
        "conv": sum(x.madds for x in layers(spec) if x.kind == "conv"),
        "linear": sum(x.madds for x in layers(spec) if x.kind == "linear"),
    }
    table = RichTable(title="analytic vs fvcore, by operator (batch 1)")
    for name in ("operator", "analytic", "fvcore", "difference", "in MAdds"):
        table.add_column(name, justify="left" if name == "operator" else "right")
    operators = list(dict.fromkeys([*analytic, *counted.by_operator]))
    for op in operators:
        ours = analytic.get(op, 0)
        theirs = counted.by_operator.get(op, 0)
        kept = op in MADD_OPERATORS
        table.add_row(
            op,
            f"{ours:,}" if kept else "0 (convention)",
            f"{theirs:,}",
            f"{ours - theirs:+,}" if kept else "",
            "yes" if kept else "no",
        )
    table.add_row("MAdds", f"{madds:,}", f"{counted.madds:,}", f"{madds - counted.madds:+,}", "")
    module_view = params + (0 if spec.count_bn_params else bn_params)
    table.add_row(
        "parameters (module, BN incl.)",
        f"{module_view:,}",
        f"{counted.module_params:,}",
        f"{module_view - counted.module_params:+,}",
        "",
    )
    console.print(table)


def _short(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class SearchProgress:
    """A rich progress bar: trials done/total, the running trial's knobs, Pareto front size, ETA."""

    def __init__(self, ctx: Any, study: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.ctx, self.study = ctx, study
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(ctx.study.name, total=ctx.study.n_trials, info="")

    def refresh(self, running: list[dict[str, Any]] | None = None) -> None:
        from mbv2_search.search import snapshot

        snap = snapshot(self.study, self.ctx)
        eta = f"ETA {snap['eta_seconds'] / 60:.1f} min" if snap["eta_seconds"] else "ETA -"
        shown = running if running is not None else snap["running_params"]
        knobs = "; ".join(_short(p) for p in shown[:2])
        counts = [f"front {snap['front']}", f"infeasible {snap['infeasible']}", f"failed {snap['failed']}"]
        counts += [
            f"{label} {snap[key]}" for key, label in (("pruned", "stopped"), ("duplicate", "duplicates")) if snap[key]
        ]
        self.progress.update(self.task, completed=snap["done"], info="  ".join([*counts, eta, knobs]))

    def on_event(self, kind: str, trial: Any) -> None:
        self.refresh([trial.params] if kind == "start" else [])


def _rows_joined(frame: Any) -> Any:
    """Per-row parameters (row_widths_0, row_widths_1, ...) as one column of comma-separated values."""
    import re

    groups: dict[str, list[str]] = {}
    for column in frame.columns:
        match = re.fullmatch(r"(\w+)_(\d+)", str(column))
        if match and match.group(1) in KNOBS and KNOBS[match.group(1)].per_row:
            groups.setdefault(match.group(1), []).append(column)
    for name, columns in groups.items():
        position = frame.columns.get_loc(columns[0])
        joined = frame[columns].apply(lambda row: ",".join(f"{v:g}" for v in row), axis=1)
        frame = frame.drop(columns=columns)
        frame.insert(position, name, joined)
    return frame


def print_status(ctx: Any, study: Any) -> None:
    from mbv2_search.ledger import counts
    from mbv2_search.report.analysis import front_data, retrained_results, trials_frame
    from mbv2_search.report.front_table import front_table, readable
    from mbv2_search.space import param_names

    trials = study.get_trials(deepcopy=False)
    state = counts(trials)
    counted = state["complete"] + state["pruned"] + state["failed"]
    share = state["infeasible"] / state["complete"] if state["complete"] else 0.0
    console.print(
        f"study [bold]{ctx.study.name}[/bold]: {counted} of {ctx.study.n_trials} trials counted: {state['complete']} complete "
        f"({state['infeasible']} infeasible, not trained: {share:.0%}), {state['pruned']} stopped early, "
        f"{state['failed']} failed; {state['running']} running, {state['waiting']} waiting\nnot counted: "
        f"{state['duplicate']} duplicates (not trained), {state['excluded']} excluded (interrupted, stale, environment, surplus)"
    )
    supernet = study.user_attrs.get("supernet")
    if supernet:  # one-shot
        console.print(
            f"supernet: {supernet['epochs']} epochs in {supernet['train_seconds'] / 60:.1f} min on {supernet['device']}; "
            f"its largest member's val_acc {supernet['val_acc']:.4f}; accuracies below are inherited from it, "
            "then retrained for the front"
        )
    elif ctx.study.strategy == "one-shot":
        console.print(_supernet_in_training(ctx))
    frame = trials_frame(trials, retrained_results(study.user_attrs))
    if frame.empty or not frame["eligible"].any():
        console.print("no trained trials yet")
        return
    data = front_data(ctx.study.name, frame, objectives=ctx.study.objectives, knobs=param_names(ctx.arch_file))
    shown = _rows_joined(readable(front_table(data)))
    title = f"Pareto front ({', '.join(ctx.study.objectives)}): {len(shown)} point" + ("" if len(shown) == 1 else "s")
    print_frame(shown.round(4), "table", title=title)
    console.print(data.tie_note, highlight=False)
    if ctx.study.strategy == "one-shot":
        from mbv2_search.report.build import one_shot_agreement

        agreement = one_shot_agreement(data.front)
        if agreement is not None:
            rho, points = agreement
            console.print(
                f"inherited vs retrained val_acc: Spearman {rho:.2f} over {points} front points", highlight=False
            )


def _supernet_in_training(ctx) -> str:
    """A one-shot study before its supernet is stored: how far its training got."""
    from mbv2_search.oneshot import resumed_epochs, supernet_epochs, training_checkpoint

    done = resumed_epochs(ctx)
    epochs = supernet_epochs(ctx)
    if not done:
        return "supernet: no epoch trained yet (`run` trains it before the search)"
    return (
        f"supernet: {done['epochs']} of {epochs} epochs trained ({training_checkpoint(ctx)}); `run` goes on from there"
    )
