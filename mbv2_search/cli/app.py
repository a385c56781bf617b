"""The command group, the console and the error type every command shares."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table as RichTable

console = Console(width=None if sys.stdout.isatty() else 160)  # no truncation when piped


class UserError(click.ClickException):
    """One-line error for bad input; exit code 2."""

    exit_code = 2


format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "md", "csv"]), default="table", show_default=True
)


def print_frame(frame: Any, fmt: str, *, title: str | None = None) -> None:
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
