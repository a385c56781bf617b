"""Command line: parse, call, print. Bad input exits 2 with one line on stderr."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table as RichTable

from mbv2_search.arch import ArchError, ArchSpec, Knobs, build_spec
from mbv2_search.config import ConfigError, load_arch_file
from mbv2_search.errors import mask_url

console = Console(width=None if sys.stdout.isatty() else 160)  # no truncation when piped


class UserError(click.ClickException):
    """One-line error for bad input; exit code 2."""

    exit_code = 2


def _floats(name: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{name}: got {text!r}; allowed: comma-separated numbers") from None


def _ints(name: str, text: str | None) -> tuple[int, ...] | None:
    values = _floats(name, text)
    if values is not None and any(v != int(v) for v in values):
        raise UserError(f"{name}: got {text!r}; allowed: comma-separated integers")
    return None if values is None else tuple(int(v) for v in values)


# (flag, Knobs field, click options). Defaults come from Knobs or the --table file, never from here.
_ARCH_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--width", "width", {"type": float, "help": "Width multiplier (paper: 0.35..1.4)."}),
    ("--resolution", "resolution", {"type": int, "help": "Input resolution in pixels (paper: 96..224)."}),
    (
        "--expansion",
        "expansion",
        {"help": "Expansion factor t for rows with t > 1, or one value per row (comma-separated)."},
    ),
    ("--depth", "depth", {"type": float, "help": "Depth multiplier on each row's repeats n."}),
    (
        "--depth-rounding",
        "depth_rounding",
        {"type": click.Choice(["ceil", "round"]), "help": "Rounding of scaled repeats."},
    ),
    (
        "--fix-first-last/--scale-first-last",
        "fix_first_last",
        {"default": None, "help": "Depth scaling leaves the first and last rows alone."},
    ),
    ("--stem-stride", "stem_stride", {"type": int, "help": "Stride of the stem conv (1 for CIFAR-size inputs)."}),
    ("--strides", "strides", {"help": "Comma-separated stride per row, e.g. 1,1,2,2,1,2,1 for CIFAR."}),
    ("--kernels", "kernels", {"help": "Comma-separated depthwise kernel size per row (3, 5 or 7)."}),
    ("--classes", "num_classes", {"type": int, "help": "Number of classes (default: the convention's, 1000 or 1001)."}),
    (
        "--convention",
        "convention",
        {
            "type": click.Choice(["torchvision", "tf-slim", "timm"]),
            "help": "Rounding and counting convention (default torchvision).",
        },
    ),
    (
        "--head-rule",
        "head_rule",
        {
            "type": click.Choice(["keep", "scale"]),
            "help": "keep: head 1280 for width < 1 (reference); scale: 1280 x width.",
        },
    ),
    (
        "--fix-stem-head/--scale-stem-head",
        "fix_stem_head",
        {"default": None, "help": "Stem and head channels not scaled by width."},
    ),
    (
        "--bottleneck-activation",
        "bottleneck_activation",
        {
            "type": click.Choice(["linear", "relu6"]),
            "help": "Paper Fig. 6a ablation: linear (default) or ReLU6 bottleneck.",
        },
    ),
    (
        "--shortcut",
        "shortcut",
        {
            "type": click.Choice(["bottleneck", "expansion", "none"]),
            "help": "Paper Fig. 6b ablation: shortcut placement.",
        },
    ),
    ("--dropout", "dropout", {"type": float, "help": "Dropout before the classifier (default 0.2)."}),
]


def arch_options(command: Callable) -> Callable:
    """Add every architecture flag, and --table, to a command; it receives `spec` instead."""

    @functools.wraps(command)
    def wrapper(*args: Any, table: Path | None, **kwargs: Any) -> Any:
        given = {field: kwargs.pop(field) for _, field, _ in _ARCH_FLAGS}
        return command(*args, spec=spec_from_flags(table, given), **kwargs)

    for flag, field, options in reversed(_ARCH_FLAGS):
        wrapper = click.option(flag, field, **options)(wrapper)
    return click.option(
        "--table",
        type=click.Path(path_type=Path, dir_okay=True),
        help="Block-table YAML (a search_spaces/ file or an exported trial); flags override its knobs.",
    )(wrapper)


def spec_from_flags(table_path: Path | None, given: dict[str, Any]) -> ArchSpec:
    """ArchSpec from a table file's knobs (or the defaults) with the given flags on top."""
    given = {k: v for k, v in given.items() if v is not None}
    if "expansion" in given:
        values = _floats("--expansion", given["expansion"])
        given["expansion"] = values[0] if len(values) == 1 else values
    for name, field in (("--strides", "strides"), ("--kernels", "kernels")):
        if field in given:
            given[field] = _ints(name, given[field])
    try:
        if table_path is None:
            return build_spec(Knobs(**given))
        arch_file = load_arch_file(table_path)
        return build_spec(arch_file.knobs.to_knobs(**given), arch_file.to_table())
    except ArchError as err:
        flag = next(
            (f.split("/")[0] for f, field, _ in _ARCH_FLAGS if field == err.field_name.split("[")[0]), err.field_name
        )
        raise UserError(f"{flag}: got {err.value!r}; allowed: {err.allowed}") from None


def _print_frame(frame: Any, fmt: str, title: str | None = None) -> None:
    """A pandas frame as a rich table, Markdown or CSV on stdout."""
    if fmt == "csv":
        click.echo(frame.to_csv(index=False), nl=False)
    elif fmt == "md":
        click.echo(frame.astype(object).where(frame.notna(), "").to_markdown(index=False))
    else:
        table = RichTable(title=title)
        for column in frame.columns:
            table.add_column(str(column), justify="right" if frame[column].dtype.kind in "iuf" else "left")
        for values in frame.astype(object).where(frame.notna(), "").itertuples(index=False):
            table.add_row(*(f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v) for v in values))
        console.print(table)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="mbv2-search")
def cli() -> None:
    """mbv2-search: scaling experiments and architecture search on the MobileNetV2 design space."""


@cli.command()
@arch_options
@click.option(
    "--precision-bytes",
    default=2,
    show_default=True,
    type=click.IntRange(1, 8),
    help="Bytes per activation value (2 = 16-bit, as paper Table 3).",
)
@click.option(
    "--fvcore", "with_fvcore", is_flag=True, help="Also build the module and count it with fvcore, per operator."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def cost(spec: ArchSpec, precision_bytes: int, with_fvcore: bool, as_json: bool) -> None:
    """Exact MAdds, parameters and peak activation memory of one variant, before building it."""
    from mbv2_search.cost import costs, fvcore_count

    result = costs(spec, precision_bytes)
    counted = fvcore_count(spec) if with_fvcore else None
    if as_json:
        payload: dict[str, Any] = {
            "madds": result.madds,
            "params": result.params,
            "peak_activation_bytes": result.peak_activation_bytes,
            "bn_params": result.bn_params,
            "bn_params_counted": spec.count_bn_params,
            "precision_bytes": precision_bytes,
            "knobs": spec.knobs.as_dict(),
        }
        if counted:
            payload["fvcore"] = {
                "by_operator": counted.by_operator,
                "madds": counted.madds,
                "module_params": counted.module_params,
            }
        click.echo(json.dumps(payload))
        return
    table = RichTable(title=f"MobileNetV2 {spec.knobs.width:g} @ {spec.resolution} ({spec.convention})")
    table.add_column("cost")
    table.add_column("exact", justify="right")
    table.add_column("", justify="right")
    table.add_row("MAdds (conv + linear)", f"{result.madds:,}", f"{result.madds / 1e6:.2f} M")
    bn_note = "counted" if spec.count_bn_params else "not counted"
    table.add_row(f"parameters (BatchNorm {bn_note})", f"{result.params:,}", f"{result.params / 1e6:.2f} M")
    table.add_row(
        f"peak activation ({8 * precision_bytes}-bit, Table 3)",
        f"{result.peak_activation_bytes:,} B",
        f"{result.peak_activation_bytes / 1024:.0f} KiB",
    )
    console.print(table)
    if counted:
        _print_fvcore(spec, result.madds, result.params, result.bn_params, counted)


def _print_fvcore(spec: ArchSpec, madds: int, params: int, bn_params: int, counted: Any) -> None:
    from mbv2_search.cost import MADD_OPERATORS, layers

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


@cli.command()
@arch_options
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv"]), default="table", show_default=True)
@click.option(
    "--memory", is_flag=True, help="Also print the Table 3 view: widest materialized tensor per spatial size (16-bit)."
)
def arch(spec: ArchSpec, fmt: str, memory: bool) -> None:
    """The expanded layer table of a variant in the paper's Table 2 form, with per-row costs."""
    from mbv2_search.cost import costs
    from mbv2_search.report.arch_table import arch_table, memory_table

    _print_frame(
        arch_table(spec), fmt, title=f"MobileNetV2 {spec.knobs.width:g} @ {spec.resolution} ({spec.convention})"
    )
    if memory:
        _print_frame(memory_table(spec), fmt, title="activation memory per spatial size (16-bit, paper Table 3)")
    if fmt == "table":
        total = costs(spec)
        console.print(f"total: {total.madds:,} MAdds, {total.params:,} parameters")


_GRID_HEADERS = {
    "madds_m": "MAdds M",
    "madds_m_published": "published",
    "madds_m_diff": "Δ",
    "params_m": "params M",
    "params_m_published": "published ",
    "params_m_diff": "Δ ",
    "top1_published": "top-1 published",
    "tv_params": "torchvision params",
    "tv_params_diff": "Δ  ",
    "measured_acc": "study val acc",
    "measured_runs": "runs",
    "latency_ms": "latency ms (here)",
    "pixel1_ms_published": "Pixel-1 ms",
}


@cli.command()
@click.option(
    "--convention",
    type=click.Choice(["tf-slim", "torchvision", "timm"]),
    default="tf-slim",
    show_default=True,
    help="tf-slim reproduces the published checkpoints exactly.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv"]), default="table", show_default=True)
@click.option(
    "--study",
    "study_file",
    type=click.Path(path_type=Path, dir_okay=True),
    help="Add the accuracy this study measured per grid point, and its rank correlation with the published top-1.",
)
@click.option("--storage", help="Storage URL of --study (default: the study's own).")
@click.option(
    "--latency",
    is_flag=True,
    help="Measure batch-1 latency of each grid point on this host, beside the published Pixel-1 latency.",
)
@click.option(
    "--repeats",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Timed runs per point for --latency (after 5 warm-up runs).",
)
def table(convention: str, fmt: str, study_file: Path | None, storage: str | None, latency: bool, repeats: int) -> None:
    """The paper's width x resolution grid: reproduced MAdds and params beside the 22 published checkpoints."""
    from mbv2_search.report.paper import paper_grid, with_latency, with_study

    frame = paper_grid(convention)
    notes = []
    if study_file is not None:
        from mbv2_search.report.analysis import trials_frame

        ctx, study = _stored_study(study_file, storage, Path("reports"))
        trials = study.get_trials(deepcopy=False)
        frame, note = with_study(frame, trials_frame(trials))
        notes.append(note)
    if latency:
        import torch

        from mbv2_search.cost import measure_latency_ms
        from mbv2_search.devices import configure_cpu, hardware_name

        configure_cpu()
        measured = {}
        for width, resolution in zip(frame["width"], frame["resolution"]):
            spec = build_spec(Knobs(width=float(width), resolution=int(resolution), convention=convention))
            measured[(width, resolution)] = round(measure_latency_ms(spec, "cpu", repeats=repeats, warmup=5), 2)
        frame, note = with_latency(frame, measured, hardware_name(torch.device("cpu")))
        notes.append(note)
    shown = frame.drop(columns=["madds", "params"]).rename(columns=_GRID_HEADERS) if fmt == "table" else frame
    _print_frame(
        shown, fmt, title=f"MobileNetV2 width x resolution, {convention} convention vs published TF-Slim checkpoints"
    )
    if fmt == "table":
        exact = int(((frame["madds_m_diff"] == 0) & (frame["params_m_diff"] == 0)).sum())
        console.print(
            f"{exact}/{len(frame)} rows match the published TF-Slim MAdds and parameters exactly (they follow --convention tf-slim)"
        )
        if "tv_params_diff" in frame:
            known = frame["tv_params_diff"].dropna()
            console.print(
                f"{int((known == 0).sum())}/{len(known)} rows match torchvision's own parameter counts exactly"
            )
    for note in notes:  # on stderr for md/csv, so the table itself stays clean to redirect
        if fmt == "table":
            console.print(note)
        else:
            click.echo(note, err=True)


def _recipe(name: str, overrides: tuple[str, ...]) -> Any:
    """A named recipe with KEY=VALUE overrides (values parsed as YAML scalars)."""
    import yaml
    from pydantic import ValidationError

    from mbv2_search.recipes import RECIPES

    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"--set: got {item!r}; allowed: KEY=VALUE with KEY a recipe field")
        values[key.strip()] = yaml.safe_load(text)
    try:
        return RECIPES[name].with_overrides(values)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        allowed = ", ".join(RECIPES[name].model_fields) if first["type"] == "extra_forbidden" else first["msg"]
        raise UserError(f"--set {key}: got {first.get('input')!r}; allowed: {allowed}") from None


@cli.command()
@arch_options
@click.option(
    "--dataset",
    type=click.Choice(["digits", "cifar10", "cifar100", "imagefolder"]),
    default="digits",
    show_default=True,
    help="digits ships with scikit-learn; the others read --data-dir.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Local folder for cifar10/cifar100 (python format) or imagefolder (train/, val/).",
)
@click.option("--epochs", type=click.IntRange(1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option(
    "--recipe",
    "recipe_name",
    type=click.Choice(["fast", "paper"]),
    default="fast",
    show_default=True,
    help="fast: SGD + one-cycle for short runs; paper: section 6.1.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe field, e.g. --set lr=0.1 --set label_smoothing=0.1.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--precision",
    default="auto",
    show_default=True,
    help="auto (bf16 mixed on GPUs, fp32 on CPU) or a Lightning precision.",
)
@click.option(
    "--memory-format",
    type=click.Choice(["auto", "channels_last", "contiguous"]),
    default="auto",
    show_default=True,
    help="auto: measured on the CPU, channels_last on GPUs.",
)
@click.option("--compile", "use_compile", is_flag=True, help="torch.compile the model.")
@click.option(
    "--workers", type=click.IntRange(0), default=4, show_default=True, help="DataLoader workers (imagefolder only)."
)
@click.option(
    "--run-dir", type=click.Path(path_type=Path), help="Where metrics.csv and best.ckpt go (default runs/train-<time>)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def train(
    spec: ArchSpec,
    dataset: str,
    data_dir: Path | None,
    epochs: int,
    batch_size: int,
    recipe_name: str,
    overrides: tuple[str, ...],
    seed: int,
    device: str,
    precision: str,
    memory_format: str,
    use_compile: bool,
    workers: int,
    run_dir: Path | None,
    as_json: bool,
) -> None:
    """Train one variant (architecture flags as for `cost`) and report accuracy, time and costs."""
    import time

    from mbv2_search.cost import costs
    from mbv2_search.data import DataError, load_dataset
    from mbv2_search.devices import resolve_device
    from mbv2_search.errors import TrainingError
    from mbv2_search.interrupts import SignalGuard
    from mbv2_search.train import train as run_training

    recipe = _recipe(recipe_name, overrides)
    try:
        torch_device = resolve_device(device)
        data = load_dataset(dataset, spec.resolution, torch_device, data_dir, workers)
    except (DataError, TrainingError, RuntimeError) as err:
        raise UserError(str(err)) from None
    if data.num_classes != spec.num_classes:
        from dataclasses import replace

        spec = build_spec(replace(spec.knobs, num_classes=data.num_classes), spec.table)
    run_dir = run_dir or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    try:
        with SignalGuard() as guard, guard.interruptible():  # Ctrl-C exits 130, not Lightning's 1
            result = run_training(
                spec,
                data,
                epochs=epochs,
                batch_size=batch_size,
                recipe=recipe,
                seed=seed,
                run_dir=run_dir,
                device=device,
                precision=precision,
                memory_format=memory_format,
                compile=use_compile,
                progress=not as_json,
            )
    except TrainingError as err:
        click.echo(f"mbv2-search train: {type(err).__name__}: {err}", err=True)
        sys.exit(1)
    cost_ = costs(spec)
    payload = {
        **result.as_dict(),
        "madds": cost_.madds,
        "params": cost_.params,
        "peak_activation_bytes": cost_.peak_activation_bytes,
        "dataset": dataset,
        "recipe": recipe.model_dump(),
        "knobs": spec.knobs.as_dict(),
    }
    if as_json:
        payload.pop("history")
        click.echo(json.dumps(payload))
        return
    console.print(
        f"val_acc {result.val_acc:.4f}  test_acc {result.test_acc:.4f}  {result.epochs} epochs in {result.train_seconds:.1f} s "
        f"({result.train_images_per_second:,.0f} train images/s, {result.device}, {result.memory_format})\n"
        f"{cost_.madds / 1e6:.2f} M MAdds, {cost_.params / 1e6:.3f} M params; run folder {result.run_dir}"
    )


def _context(study_file: Path, storage: str | None, reports: Path) -> Any:
    from mbv2_search.search import load_context

    return load_context(study_file, storage, reports)


def _no_study(path: Path, ctx: Any) -> UserError:
    return UserError(f"{path}: no study '{ctx.study.name}' in {mask_url(ctx.storage_url)} yet; run it first")


def _stored_study(path: Path, storage: str | None, reports: Path) -> tuple[Any, Any]:
    """A study file's context and its stored study; a one-line error if it was never run."""
    from mbv2_search.search import open_study

    ctx = _context(path, storage, reports)
    try:
        return ctx, open_study(ctx, create=False)
    except KeyError:
        raise _no_study(path, ctx) from None


_STUDY_ARGS = [
    click.argument("study_file", type=click.Path(path_type=Path, dir_okay=True)),
    click.option(
        "--storage",
        help="Optuna storage URL (postgresql://...); default: MBV2_STORAGE, the study's storage:, or a journal file in reports/<study>/.",
    ),
    click.option(
        "--reports",
        type=click.Path(path_type=Path),
        default=Path("reports"),
        show_default=True,
        help="Root of the report folders.",
    ),
]


def study_args(command: Callable) -> Callable:
    """The study file argument and the storage and reports options."""
    for decorator in reversed(_STUDY_ARGS):
        command = decorator(command)
    return command


def _short(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class _SearchProgress:
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


@cli.command()
@study_args
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    help="Local worker processes (default: the study's workers:); they split the CPU cores or take one GPU each.",
)
def run(study_file: Path, storage: str | None, reports: Path, workers: int | None) -> None:
    """Run a study to n_trials (resuming where it stopped), then print its Pareto front.

    Exit codes: 0 complete (or the space exhausted), 1 a failure of the environment (data, disk,
    storage) or a worker, 2 bad input, 3 trials left (timeout), 130 Ctrl-C, 143 SIGTERM; the running
    trials of an interrupted run are run again when you resume.
    """
    from mbv2_search.search import StudyMismatch, check_data, finish_line, open_study
    from mbv2_search.workers import supervise, work

    ctx = _context(study_file, storage, reports)
    check_data(ctx)
    try:
        study = open_study(ctx)
    except StudyMismatch as err:
        raise UserError(str(err)) from None
    workers = workers or ctx.study.workers
    view = _SearchProgress(ctx, study)
    stopped, failures = "", []
    with view.progress, resumable():
        view.refresh()
        if workers == 1:
            stopped = work(ctx, on_event=view.on_event).stopped
        else:
            failures, stopped = supervise(ctx, workers, reports, on_tick=view.refresh, on_note=console.print)
        view.refresh([])
    _print_status(ctx, study)
    _finish(*finish_line(ctx, study, stopped, failures))


@contextlib.contextmanager
def resumable() -> Iterator[None]:
    """An interruption of a search says that its running trials will run again."""
    from mbv2_search.interrupts import Interrupted, ignore_signals

    try:
        yield
    except Interrupted as err:
        ignore_signals()
        err.note = ": running trials will run again when you resume"
        raise


def _finish(code: int, line: str) -> None:
    """Print the run's closing line (if any) and exit with its code."""
    if line:
        click.echo(f"mbv2-search: {line}", err=True)
    if code:
        sys.exit(code)


@cli.command()
@study_args
@click.option("--device", default=None, help="Training device for this worker (default: the study's training.device).")
def worker(study_file: Path, storage: str | None, reports: Path, device: str | None) -> None:
    """Join an existing study as one more worker (from another shell or machine); exit codes as for run."""
    from mbv2_search.search import StudyMismatch, check_data, finish_line, open_study
    from mbv2_search.workers import work

    ctx = _context(study_file, storage, reports)
    check_data(ctx)
    try:
        with resumable():
            report = work(ctx, device=device or ctx.study.training.device)
    except StudyMismatch as err:
        raise UserError(str(err)) from None
    console.print(
        f"worker done: {report.ran} trials run, {report.failed} failed, {report.pruned} stopped early, "
        f"{report.duplicates} duplicates skipped, {report.recovered} trials of stopped workers re-queued"
    )
    _finish(*finish_line(ctx, open_study(ctx), report.stopped))


def _print_status(ctx: Any, study: Any) -> None:
    from mbv2_search.ledger import counts
    from mbv2_search.report.analysis import pareto_mask, trials_frame

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
    frame = trials_frame(trials)
    if frame.empty or not frame["eligible"].any():
        console.print("no trained trials yet")
        return
    front = frame[pareto_mask(frame, ctx.study.objectives)].sort_values(ctx.study.objectives[-1])
    knob_columns = [c for c in frame.columns if c in trials[0].params or any(c in t.params for t in trials)]
    shown = front[["number", *knob_columns, "madds", "params", "val_acc", "test_acc"]].copy()
    shown["madds"] = (shown["madds"] / 1e6).round(3)
    shown["params"] = (shown["params"] / 1e6).round(3)
    shown = shown.rename(columns={"madds": "MAdds (M)", "params": "params (M)"})
    _print_frame(
        shown.round(4), "table", title=f"Pareto front ({', '.join(ctx.study.objectives)}): {len(front)} trials"
    )


@cli.command()
@study_args
def status(study_file: Path, storage: str | None, reports: Path) -> None:
    """Counts by state, the infeasible fraction and the Pareto front of a study."""

    ctx, study = _stored_study(study_file, storage, reports)
    _print_status(ctx, study)


@cli.command()
@study_args
@click.option("--trial", "number", type=int, required=True, help="The trial number to export.")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default reports/<study>/export).")
@click.option(
    "--onnx",
    is_flag=True,
    help="Also write an ONNX model (needs the onnx and onnxscript packages: pip install 'mbv2-search[export]').",
)
def export(study_file: Path, storage: str | None, reports: Path, number: int, out: Path | None, onnx: bool) -> None:
    """Write a trial's block table (YAML for cost/arch/train --table), weights (torchvision layout), optionally ONNX."""
    from mbv2_search.export import NoWeights, export_trial

    ctx = _context(study_file, storage, reports)
    try:
        written = export_trial(ctx, number, out, onnx=onnx)
    except NoWeights as err:
        click.echo(f"mbv2-search: error: {err}", err=True)
        sys.exit(1)
    except ImportError as err:
        raise UserError(f"--onnx needs the {err.name} package: pip install 'mbv2-search[export]'") from None
    except KeyError:
        raise _no_study(study_file, ctx) from None
    except ValueError as err:
        raise UserError(str(err)) from None
    for kind, path in written.items():
        console.print(f"{kind}: {path}")


@cli.command()
@click.argument("study_files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=True))
@click.option("--storage", help="Optuna storage URL for every study (default: each study's own).")
@click.option(
    "--reports",
    type=click.Path(path_type=Path),
    default=Path("reports"),
    show_default=True,
    help="Root of the report folders.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Folder for report.html and summary.md (default reports/<study>, or reports/compare-<a>-<b> for several).",
)
def report(study_files: tuple[Path, ...], storage: str | None, reports: Path, out: Path | None) -> None:
    """Write report.html, trials.csv, pareto.csv and summary.md for one study, or overlay several."""
    from mbv2_search.report.build import study_data, write_report
    from mbv2_search.space import param_names

    studies, folders = [], []
    for path in study_files:
        ctx, study = _stored_study(path, storage, reports)
        config = ctx.study.model_dump(mode="json", exclude={"storage"})
        studies.append(
            study_data(
                ctx.study.name,
                study.get_trials(deepcopy=False),
                ctx.study.objectives,
                param_names(ctx.arch_file),
                config,
            )
        )
        folders.append(ctx.report_dir)
    names = [s.name for s in studies]
    out = out or (folders[0] if len(studies) == 1 else reports / ("compare-" + "-".join(names)))
    try:
        written = write_report(studies, folders, out)
    except OSError as err:
        raise UserError(f"{err.filename or out}: cannot write the report ({err.strerror})") from None
    for name, path in written.items():
        console.print(f"{name}: {path}")


@cli.command("latency-table")
@click.argument("space_file", type=click.Path(path_type=Path, dir_okay=True))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--classes",
    type=click.IntRange(1),
    help="Classifier size (default: the space's num_classes, else the convention's).",
)
@click.option(
    "--samples",
    type=click.IntRange(1),
    default=300,
    show_default=True,
    help="Random candidates when the space's grid is too large to enumerate.",
)
@click.option(
    "--repeats",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Timed runs per unit (after 5 warm-up runs).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Where to write the table (default reports/latency/<space>-<device>.json).",
)
def latency_table(
    space_file: Path, device: str, classes: int | None, samples: int, repeats: int, out: Path | None
) -> None:
    """Measure each distinct unit (stem, block, head) a space can produce on this device, for latency prediction."""
    from rich.progress import Progress

    from mbv2_search.config import load_arch_file
    from mbv2_search.devices import configure_cpu, resolve_device
    from mbv2_search.errors import TrainingError
    from mbv2_search.latency import build_table, space_specs

    arch_file = load_arch_file(space_file)
    try:
        torch_device = str(resolve_device(device))
    except (TrainingError, RuntimeError) as err:
        raise UserError(f"--device: {err}") from None
    if torch_device == "cpu":
        configure_cpu()
    specs, how = space_specs(arch_file, samples, num_classes=classes)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("measuring units", total=None)
        table = build_table(
            specs,
            torch_device,
            repeats,
            5,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    table.meta.update(space=str(space_file), candidates=how)
    out = (
        out or Path("reports") / "latency" / f"{arch_file.name or space_file.stem}-{torch_device.replace(':', '')}.json"
    )
    table.save(out)
    console.print(
        f"{len(table.units)} units measured from {how} on {table.hardware}; offset {table.offset_ms:.3f} ms; table: {out}"
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors and exit 2 for bad input, 1 for the environment, 128 + N for signal N."""
    from mbv2_search.errors import environment_message
    from mbv2_search.interrupts import Interrupted, ignore_signals

    try:
        cli.main(args=argv, prog_name="mbv2-search", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as err:
        click.echo(err.ctx.get_help() if err.ctx else str(err))
        sys.exit(2)
    except click.UsageError as err:
        command = err.ctx.command_path if err.ctx else "mbv2-search"
        click.echo(f"{command}: error: {err.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as err:
        click.echo(f"mbv2-search: error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except (ConfigError, ArchError) as err:
        click.echo(f"mbv2-search: error: {err}", err=True)
        sys.exit(2)
    except Interrupted as err:
        ignore_signals()
        click.echo(f"interrupted by {err}{err.note}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except Exception as err:
        message = environment_message(err)
        if message is None:
            raise
        click.echo(f"mbv2-search: error: {message}", err=True)
        sys.exit(1)
