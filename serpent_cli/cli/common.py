"""Shared CLI plumbing: the stderr console, verbosity, and turning errors into exit codes."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console


def _make_console(stream: object) -> Console:
    return Console(file=stream, no_color=bool(os.environ.get("NO_COLOR")), highlight=False, soft_wrap=True)


@dataclass
class Verbosity:
    """Set by the top-level -q / -v options; commands read it to decide what to print."""

    quiet: bool = False
    verbose: bool = False


verbosity = Verbosity()
err_console = _make_console(sys.stderr)  # progress, logs, errors
out_console = _make_console(sys.stdout)  # data (tables, JSON)


def info(message: str) -> None:
    """A progress/log line on stderr, unless -q."""
    if not verbosity.quiet:
        err_console.print(message)


def debug(message: str) -> None:
    """A detail on stderr, only with -v."""
    if verbosity.verbose and not verbosity.quiet:
        err_console.print(f"[dim]{message}[/dim]")


def warn(message: str) -> None:
    """A warning on stderr (shown even with -q: warnings matter)."""
    err_console.print(f"[yellow]warning:[/yellow] {message}")


def error_line(message: str) -> None:
    """The one line a user sees for an error."""
    err_console.print(f"[red]error:[/red] {message}")


def stderr_is_terminal() -> bool:
    return err_console.is_terminal


# Options shared by the image commands (deblur, degrade): one definition, the same help everywhere.
OutputOption = Annotated[
    str | None,
    typer.Option("--output", "-o", help="Output file (one input), folder, or - for stdout. Default: beside input."),
]
RecursiveOption = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders; mirror the tree.")]
SkipExistingOption = Annotated[bool, typer.Option("--skip-existing", help="Leave existing outputs alone.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
QualityOption = Annotated[int, typer.Option(help="JPEG quality of JPEG outputs (1-100).")]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON result per input on stdout.")]
