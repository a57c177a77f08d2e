"""The ``serpent`` command: a thin Typer layer that parses, calls the library, and prints.

Each subcommand lives in its own module here; the work itself lives in the library
modules (imageio, tiling, training, evaluation, benchmark, hub, ...).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from serpent_cli import __version__
from serpent_cli.cli import bench, deblur, degrade, download, evaluate, export, models, train
from serpent_cli.cli.common import error_line, verbosity
from serpent_cli.errors import ReportedByAnotherRank, SerpentError
from serpent_cli.interrupts import EXIT_SIGINT, EXIT_SIGTERM, Terminated, terminate_cleanly_on_sigterm

app = typer.Typer(
    name="serpent",
    help="Restore blurred, noisy photos with the Serpent network (multi-scale selective state-space models).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"serpent {__version__}")
        raise typer.Exit()


QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and warnings on stderr.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="More detail on stderr.")]


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    verbosity.quiet = quiet
    verbosity.verbose = verbose


def _with_verbosity(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` taking -q / -v after its name too (``serpent deblur x.png -q``), as well as before it."""
    signature = inspect.signature(command, eval_str=True)
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=kind)
             for name, kind in (("quiet", QuietOption), ("verbose", VerboseOption))]

    @functools.wraps(command)
    def run(*args: object, quiet: bool = False, verbose: bool = False, **kwargs: object) -> None:
        verbosity.quiet = verbosity.quiet or quiet
        verbosity.verbose = verbosity.verbose or verbose
        command(*args, **kwargs)

    parameters = [*signature.parameters.values(), *extra]
    run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run


def _help_text(command: Callable[..., None]) -> str:
    """A command's docstring with each paragraph on one line.

    Rich keeps a docstring's hard line breaks, which split sentences mid-line at any terminal
    width; joined, each paragraph wraps to the terminal.
    """
    doc = inspect.cleandoc(command.__doc__ or "")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in doc.split("\n\n"))


for _name, _command in (
    ("deblur", deblur.deblur_command),
    ("degrade", degrade.degrade_command),
    ("train", train.train_command),
    ("eval", evaluate.evaluate_command),
    ("bench", bench.bench_command),
    ("download", download.download_command),
    ("models", models.models_command),
    ("export", export.export_command),
):
    app.command(_name, help=_help_text(_command))(_with_verbosity(_command))


def main() -> None:
    """Entry point: run the app; user errors become one line and an exit code, never a traceback."""
    terminate_cleanly_on_sigterm()
    try:
        app(standalone_mode=True)
    except SerpentError as exc:
        if not isinstance(exc, ReportedByAnotherRank):
            error_line(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        error_line("interrupted")
        sys.exit(EXIT_SIGINT)
    except Terminated:
        error_line("terminated")
        sys.exit(EXIT_SIGTERM)
    except BrokenPipeError:
        sys.stderr.close()  # reader went away (e.g. piped to head); nothing left to say
        sys.exit(1)
