"""Options shared by commands: the architecture flags (derived from the knob declarations) and the study arguments."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mbv2_search.arch import ArchSpec, build_spec
from mbv2_search.cli.app import UserError
from mbv2_search.config import load_arch_file
from mbv2_search.errors import mask_url
from mbv2_search.knobs import KNOBS, ArchError, KnobInfo, Knobs


def _flag(name: str) -> str:
    """The CLI flag of a knob ('--classes' for num_classes, '--width' for width)."""
    return (KNOBS[name].flag or "--" + name.replace("_", "-")).split("/")[0]


def _click_options(info: KnobInfo) -> dict[str, Any]:
    """click options for a knob. Defaults come from Knobs or the --table file, never from here."""
    if info.kind is bool:
        return {"default": None, "help": info.help}
    if info.per_row:
        return {"help": info.help}  # comma-separated text, parsed by _per_row
    if info.choices and info.kind is str:
        return {"type": click.Choice(list(info.choices)), "help": info.help}
    return {"type": info.kind, "help": info.help}


def _per_row(name: str, text: str) -> Any:
    """A comma-separated flag value: one number (every row) or one per row."""
    info, flag = KNOBS[name], _flag(name)
    noun = "integers" if info.kind is int else "numbers"
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = [math.nan]
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"{flag}: got {text!r}; allowed: comma-separated {noun}")
    if info.kind is int:
        if any(v != int(v) for v in values):
            raise UserError(f"{flag}: got {text!r}; allowed: comma-separated {noun}")
        values = [int(v) for v in values]
    return values[0] if len(values) == 1 else tuple(values)


def arch_options(command: Callable) -> Callable:
    """Add every architecture flag, and --table, to a command; it receives `spec` instead."""

    @functools.wraps(command)
    def wrapper(*args: Any, table: Path | None, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in KNOBS}
        return command(*args, spec=spec_from_flags(table, given), **kwargs)

    for name, info in reversed(KNOBS.items()):
        wrapper = click.option(info.flag or _flag(name), name, **_click_options(info))(wrapper)
    return click.option(
        "--table",
        type=click.Path(path_type=Path, dir_okay=True),
        help="Block-table YAML (a search_spaces/ file or an exported trial); flags override its knobs.",
    )(wrapper)


def spec_from_flags(table_path: Path | None, given: dict[str, Any]) -> ArchSpec:
    """ArchSpec from a table file's knobs (or the defaults) with the given flags on top."""
    given = {k: v for k, v in given.items() if v is not None}
    for name in given:
        if KNOBS[name].per_row:
            given[name] = _per_row(name, given[name])
    try:
        if table_path is None:
            return build_spec(Knobs(**given))
        arch_file = load_arch_file(table_path)
        return build_spec(arch_file.knobs.to_knobs(**given), arch_file.to_table())
    except ArchError as err:
        name = err.field_name.split("[")[0]
        flag = _flag(name) + err.field_name[len(name) :] if name in KNOBS else err.field_name  # keeps [i]
        raise UserError(f"{flag}: got {err.value!r}; allowed: {err.allowed}") from None


def _val_fraction(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    from mbv2_search.datasets import check_val_fraction

    try:
        return None if value is None else check_val_fraction(value)
    except ValueError as err:
        raise UserError(f"--val-fraction: got {value!r}; {err}") from None


def _validation_defaults() -> str:
    from mbv2_search.datasets import DATASETS

    return "; ".join(f"{d.name}: {d.validation}" for d in DATASETS.values())


val_fraction_option = click.option(
    "--val-fraction",
    type=float,
    callback=_val_fraction,
    help="Share of the images outside the test set that validates (0 < f < 1; the test set stays the same). "
    f"Default, each dataset's own: {_validation_defaults()}. Give a study's data.val_fraction to see its split.",
)


def study_context(study_file: Path, storage: str | None, *, reports: Path) -> Any:
    """A study file's validated context (lazily imported: Optuna is not needed for `cost`)."""
    from mbv2_search.search import load_context

    return load_context(study_file, storage, reports_root=reports)


def no_study(path: Path, ctx: Any) -> UserError:
    """The one-line error for a study that was never run."""
    return UserError(f"{path}: no study '{ctx.study.name}' in {mask_url(ctx.storage_url)} yet; run it first")


def stored_study(path: Path, storage: str | None, *, reports: Path) -> tuple[Any, Any]:
    """A study file's context and its stored study; a one-line error if it was never run."""
    from mbv2_search.storage import open_study

    ctx = study_context(path, storage, reports=reports)
    try:
        return ctx, open_study(ctx, create=False)
    except KeyError:
        raise no_study(path, ctx) from None


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
