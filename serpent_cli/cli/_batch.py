"""The batch loop shared by ``deblur`` and ``degrade``: sharding across torchrun ranks, printing, exit code."""

from __future__ import annotations

from collections.abc import Sequence

from serpent_cli.cli.common import debug, err_console, error_line, info, stderr_is_terminal, verbosity, warn
from serpent_cli.distributed import DistContext, gather_objects, shard
from serpent_cli.io.batch import Job, Result, Work, exit_code, print_json, run_jobs, summary


def run_batch(
    jobs: list[Job], work: Work, *, ctx: DistContext, json_out: bool, verb: str, json_fields: Sequence[str] = ()
) -> int:
    """Run the jobs (this rank's share under torchrun), report each, and return the exit code.

    Alone, results stream as they finish.  Under torchrun each rank takes every N-th runnable input;
    rank 0 also reports inputs that failed before any work, gathers every rank's results, and prints
    them in input order and returns the exit code (the other ranks return 0).  ``json_fields`` are the
    command's own ``--json`` keys, present (maybe null) on every line.
    """
    stream = not ctx.is_distributed

    def on_result(res: Result) -> None:
        if res.status == "failed":
            error_line(res.error or f"{res.path}: failed")
        else:
            debug(f"{res.path} -> {res.output} ({res.status}, {res.seconds:.2f} s)")
        if json_out and stream:
            print_json(res, json_fields)

    if ctx.is_distributed:
        runnable = [j for j in jobs if j.error is None]
        mine = shard(runnable, ctx)
        if ctx.is_main:
            mine = [j for j in jobs if j.error is not None] + mine
    else:
        mine = jobs
    progress = err_console if stderr_is_terminal() and ctx.is_main and not verbosity.quiet else None
    results = run_jobs(mine, work, on_result=on_result, progress=progress, label=verb)
    everything: list[Result] = []
    for part in gather_objects(results, ctx):
        everything.extend(part)  # type: ignore[arg-type]
    everything.sort(key=lambda r: r.index)
    if ctx.is_main:
        if json_out and not stream:
            for res in everything:
                print_json(res, json_fields)
        if not everything:
            warn("nothing to do")
        else:
            info(summary(everything, verb) + (f" on {ctx.world_size} processes" if ctx.is_distributed else ""))
    # Only rank 0 reports failure through its exit code: a non-zero exit of another rank makes
    # torchrun terminate rank 0, possibly before it has printed the results.
    return exit_code(everything) if ctx.is_main else 0
