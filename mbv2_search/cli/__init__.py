"""Command line: parse, call, print. Bad input exits 2 with one line on stderr.

One module per command group (arch_cmds, train_cmd, study_cmds), shared options in flags, rich views apart.
"""

from __future__ import annotations

import sys

import click

from mbv2_search.cli import arch_cmds, eval_cmd, study_cmds, train_cmd  # noqa: F401 (they register the commands)
from mbv2_search.cli.app import cli
from mbv2_search.knobs import ArchError
from mbv2_search.schema import ConfigError


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
