"""`serpent degrade`: the benchmark degradation (DESIGN.md section 4), reproducible per file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from serpent_cli.batch import (
    STDIO,
    Job,
    Naming,
    Result,
    assign_outputs,
    check_existing,
    drop_earlier_outputs,
    expand_inputs,
)
from serpent_cli.cli._batch import read_stdin_once, run_batch
from serpent_cli.cli.common import warn
from serpent_cli.errors import UsageError


def degrade_command(
    inputs: Annotated[
        list[str], typer.Argument(help="Clean image files, folders, globs, or - for stdin.", show_default=False)
    ],
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Output file (one input), folder, or - for stdout. Default: beside input."),
    ] = None,
    kernel_size: Annotated[int, typer.Option(help="Gaussian blur kernel size (odd).")] = 61,
    blur_sigma: Annotated[float, typer.Option(help="Gaussian blur sigma in pixels.")] = 3.0,
    noise_sigma: Annotated[float, typer.Option(help="Gaussian noise sigma on the [0, 1] scale.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Global seed; noise depends on it and the file's relative path.")] = 0,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Descend into subfolders; mirror the tree.")
    ] = False,
    suffix: Annotated[
        str | None, typer.Option(help="Added to output names (default _degraded beside the input, none in -o DIR).")
    ] = None,
    name: Annotated[str, typer.Option(help="Output name template: {stem} {suffix} {ext}.")] = "{stem}{suffix}{ext}",
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Leave existing outputs alone.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    quality: Annotated[int, typer.Option(help="JPEG quality of JPEG outputs (1-100).")] = 95,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON result per input on stdout.")] = False,
) -> None:
    """Blur and add noise (the fixed benchmark degradation), deterministically per file.

    The noise of a file is seeded by its path relative to the folder given (its name for a file
    given directly) plus --seed, the same key `serpent eval` uses: same output on every machine.
    """
    from serpent_cli.degradation import Degradation, seeded_generator
    from serpent_cli.distributed import DistContext
    from serpent_cli.imageio import EXTENSION_BY_FORMAT, format_for, read_picture, write_picture

    try:
        degradation = Degradation(kernel_size=kernel_size, blur_sigma=blur_sigma, noise_sigma=noise_sigma)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not 1 <= quality <= 100:
        raise UsageError(f"--quality {quality}: use 1-100")
    if skip_existing and overwrite:
        raise UsageError("--skip-existing and --overwrite exclude each other; pick one")
    if json_out and output == STDIO:
        raise UsageError("--json and -o - both want stdout; write the image to a file")
    if inputs.count(STDIO) > 1:
        raise UsageError("- (stdin) can be given once")

    naming = Naming(output=output, template=name, suffix=suffix, default_suffix="_degraded")
    jobs = drop_earlier_outputs(expand_inputs(inputs, recursive, warn, exclude=output), naming)
    assign_outputs(jobs, naming)

    def work(job: Job) -> Result:
        assert job.output is not None
        if check_existing(job.output, overwrite=overwrite, skip_existing=skip_existing) == "skip":
            return Result(path=job.source, output=job.output, status="skipped")
        source = read_stdin_once() if job.source == STDIO else job.source
        pic = read_picture(source, name=job.source if job.source != STDIO else "<stdin>")
        degraded = degradation(pic.to_tensor(), generator=seeded_generator(job.key, seed))
        out = pic.with_pixels(degraded.clamp(0.0, 1.0).permute(1, 2, 0).numpy())
        if job.output == STDIO:
            fmt = pic.format if pic.format in EXTENSION_BY_FORMAT else "PNG"
            notes = write_picture(out, sys.stdout.buffer, fmt=fmt, jpeg_quality=quality)
        else:
            format_for(job.output)
            notes = write_picture(out, Path(job.output), jpeg_quality=quality)
        for note in notes:
            warn(f"{job.output}: {note}")
        return Result(path=job.source, output=job.output, size=[pic.width, pic.height], status="ok",
                      extra={"key": job.key, "seed": seed})

    raise SystemExit(run_batch(jobs, work, ctx=DistContext(), json_out=json_out, verb="degraded"))
