"""`serpent degrade`: the benchmark degradation or the blind family (DESIGN.md section 4), reproducible per file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from serpent_cli.cli._batch import run_batch
from serpent_cli.cli.common import (
    JsonOption,
    OutputOption,
    OverwriteOption,
    QualityOption,
    RecursiveOption,
    SkipExistingOption,
    warn,
)
from serpent_cli.errors import UsageError
from serpent_cli.io.batch import (
    Job,
    Naming,
    OutputPolicy,
    Result,
    assign_outputs,
    check_batch_options,
    drop_earlier_outputs,
    expand_inputs,
    process_image,
)

if TYPE_CHECKING:
    from serpent_cli.io.imageio import Picture


def degrade_command(
    inputs: Annotated[
        list[str], typer.Argument(help="Clean image files, folders, globs, or - for stdin.", show_default=False)
    ],
    output: OutputOption = None,
    kernel_size: Annotated[int, typer.Option(help="Gaussian blur kernel size (odd).")] = 61,
    blur_sigma: Annotated[float, typer.Option(help="Gaussian blur sigma in pixels.")] = 3.0,
    noise_sigma: Annotated[float, typer.Option(help="Gaussian noise sigma on the [0, 1] scale.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Global seed; noise depends on it and the file's relative path.")] = 0,
    family: Annotated[str, typer.Option(
        help="benchmark (the fixed blur + noise above) or blind (random blur kind, noise and JPEG per file).")]
    = "benchmark",
    recursive: RecursiveOption = False,
    suffix: Annotated[
        str | None, typer.Option(help="Added to output names (default _degraded beside the input, none in -o DIR).")
    ] = None,
    name: Annotated[str, typer.Option(help="Output name template: {stem} {suffix} {ext}.")] = "{stem}{suffix}{ext}",
    skip_existing: SkipExistingOption = False,
    overwrite: OverwriteOption = False,
    quality: QualityOption = 95,
    json_out: JsonOption = False,
) -> None:
    """Blur and add noise (the benchmark, or --family blind), deterministically per file.

    The randomness of a file is seeded by its path relative to the folder given (its name for a file
    given directly) plus --seed, the same key `serpent eval` uses: same output on every machine.
    """
    from serpent_cli.degradation.benchmark import Degradation, check_degradation_name
    from serpent_cli.distributed import DistContext

    check_degradation_name(family)
    benchmark: Degradation | None = None
    if family == "benchmark":
        try:
            benchmark = Degradation(kernel_size=kernel_size, blur_sigma=blur_sigma, noise_sigma=noise_sigma)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif (kernel_size, blur_sigma, noise_sigma) != (61, 3.0, 0.05):
        raise UsageError("--kernel-size, --blur-sigma and --noise-sigma apply to --family benchmark only")
    policy = OutputPolicy(overwrite=overwrite, skip_existing=skip_existing, quality=quality)
    check_batch_options(inputs, output, policy, json_out=json_out)

    naming = Naming(output=output, template=name, suffix=suffix, default_suffix="_degraded")
    jobs = drop_earlier_outputs(expand_inputs(inputs, recursive, warn, exclude=output), naming)
    assign_outputs(jobs, naming)

    def work(job: Job) -> Result:
        # Imported here, once inputs are known to exist: the family needs torch, a usage error does not.
        from serpent_cli.degradation.family import degradation_by_name, degrade_keyed

        degradation = benchmark or degradation_by_name(family)

        def transform(pic: Picture) -> tuple[Picture, dict[str, object]]:
            degraded, draw = degrade_keyed(degradation, pic.to_tensor(), job.key, seed)
            extra: dict[str, object] = {"key": job.key, "seed": seed, "family": family}
            if draw:
                extra["draw"] = draw
            return pic.with_pixels(degraded.clamp(0.0, 1.0).permute(1, 2, 0).numpy()), extra

        return process_image(job, transform, policy, warn)

    raise SystemExit(run_batch(jobs, work, ctx=DistContext(), json_out=json_out, verb="degraded"))
