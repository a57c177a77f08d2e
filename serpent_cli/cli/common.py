"""Shared CLI plumbing: the stderr console, verbosity, and turning errors into exit codes."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    import torch


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
PIPE_WIDTH = 220  # a table sent to a pipe or file is printed whole, not squeezed into 80 columns


def print_table(table: object) -> None:
    """A Rich table on stdout: the terminal's width on a terminal, else wide enough that no cell wraps.

    Not $COLUMNS in a pipe: libraries set it in child processes (80 under pytest), and a table read by
    `less` or a script is better whole.
    """
    if out_console.is_terminal:
        out_console.print(table)
    else:
        Console(file=sys.stdout, width=PIPE_WIDTH, no_color=True, highlight=False).print(table)


# Messages are plain text, never Rich markup: "[bench]" in an install hint or a file named
# "photo[1].png" must print as written.


def info(message: str) -> None:
    """A progress/log line on stderr, unless -q."""
    if not verbosity.quiet:
        err_console.print(escape(message))


def announce_kernel_compile(device: torch.device) -> None:
    """Say so before a first run compiles the CPU scan kernels (~15 s), so that it does not look stuck."""
    from serpent_cli.ops import kernels_to_compile

    if kernels_to_compile(device):
        info(f"compiling the CPU scan kernels for this machine (once, about 15 s on 2 cores; cached in "
             f"{os.environ.get('NUMBA_CACHE_DIR', 'the numba cache')})")


def debug(message: str) -> None:
    """A detail on stderr, only with -v."""
    if verbosity.verbose and not verbosity.quiet:
        err_console.print(f"[dim]{escape(message)}[/dim]")


def warn(message: str) -> None:
    """A warning on stderr (shown even with -q: warnings matter)."""
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}")


def error_line(message: str) -> None:
    """The one line a user sees for an error."""
    err_console.print(f"[red]error:[/red] {escape(message)}")


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
# Options shared by the commands that compute (deblur, eval, train, bench).
ThreadsOption = Annotated[
    int,
    typer.Option(
        "--threads",
        help="CPU threads (0: OMP_NUM_THREADS if set, else the cores shared among running serpent processes).",
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]


def check_compute_options(device: str, threads: int) -> str:
    """--device spelling and --threads sign, checked before torch loads; returns the normalised device."""
    from serpent_cli.device import check_device_spec
    from serpent_cli.threads import check_threads

    check_threads(threads)
    return check_device_spec(device)


def use_threads(threads: int) -> int:
    """Apply --threads before any model work and say (with -v) what torch got."""
    from serpent_cli.threads import apply_threads

    count = apply_threads(threads)
    debug(f"threads: {count}")
    return count
