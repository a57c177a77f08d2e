"""`serpent deblur`: restore images (files, folders, globs, stdin) with a Serpent network."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from serpent_cli.cli._batch import run_batch
from serpent_cli.cli.common import (
    DeviceOption,
    JsonOption,
    OutputOption,
    OverwriteOption,
    QualityOption,
    RecursiveOption,
    SkipExistingOption,
    ThreadsOption,
    announce_kernel_compile,
    check_compute_options,
    info,
    use_threads,
    warn,
)
from serpent_cli.errors import UsageError
from serpent_cli.io.batch import (
    STDIO,
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
from serpent_cli.io.tile_options import DEFAULT_OVERLAP, check_overlap, parse_tile
from serpent_cli.models.registry import model_choice_help

if TYPE_CHECKING:
    from serpent_cli.io.imageio import Picture

# The keys of every --json line beyond path/output/size/seconds/status/error (null when not applicable).
JSON_FIELDS = ("model", "tile", "precision", "mode", "bit_depth")


def deblur_command(
    inputs: Annotated[
        list[str], typer.Argument(help="Image files, folders, globs, or - for stdin.", show_default=False)
    ],
    output: OutputOption = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help=model_choice_help()),
    ] = None,
    weights: Annotated[Path | None, typer.Option("--weights", "-w", help="A serpent .safetensors file.")] = None,
    recursive: RecursiveOption = False,
    suffix: Annotated[
        str | None, typer.Option(help="Added to output names (default _deblurred beside the input, none in -o DIR).")
    ] = None,
    name: Annotated[
        str, typer.Option(help="Output name template: {stem} {suffix} {ext} {model}.")
    ] = "{stem}{suffix}{ext}",
    skip_existing: SkipExistingOption = False,
    overwrite: OverwriteOption = False,
    tile: Annotated[str, typer.Option(help="auto, 0 (whole image) or tile size in pixels.")] = "auto",
    tile_overlap: Annotated[int, typer.Option(help="Overlap between tiles in pixels.")] = DEFAULT_OVERLAP,
    device: DeviceOption = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.")] = "auto",
    quality: QualityOption = 95,
    json_out: JsonOption = False,
    threads: ThreadsOption = 0,
) -> None:
    """Restore blurred, noisy images. Exit code 0: all done; 1: some inputs failed; 2: usage error."""
    from serpent_cli.device import check_precision_spec
    from serpent_cli.distributed import context_from_env, init_distributed, shutdown
    from serpent_cli.models import check_variant

    tile_size, tile_overlap = parse_tile(tile), check_overlap(tile_overlap)
    policy = OutputPolicy(overwrite=overwrite, skip_existing=skip_existing, quality=quality)
    check_batch_options(inputs, output, policy, json_out=json_out)
    device, precision = check_compute_options(device, threads), check_precision_spec(precision)
    check_variant(model)

    main_rank = context_from_env().is_main  # planning runs on every rank; only rank 0 warns
    jobs = expand_inputs(inputs, recursive, warn if main_rank else lambda _: None, exclude=output)
    naming = Naming(output=output, template=name, suffix=suffix, default_suffix="_deblurred",
                    fields={"model": model or "serpent"})
    jobs = drop_earlier_outputs(jobs, naming)
    runnable = any(j.error is None for j in jobs)  # the same on every rank
    # torch, the device and the model only when there is something to restore.
    dev = dtype = None
    if runnable:
        from serpent_cli.device import resolve_device, resolve_precision

        use_threads(threads)
        dev = resolve_device(device)
        dtype = resolve_precision(precision, dev)
    ctx = init_distributed(dev.type if dev is not None else "cpu")
    try:
        if ctx.is_distributed and STDIO in inputs:
            raise UsageError("- (stdin) cannot be used under torchrun")
        if ctx.is_distributed and dev is not None and dev.type == "cuda":
            import torch

            dev = torch.device("cuda", ctx.local_rank % torch.cuda.device_count())
        net = variant = None
        if runnable:
            from serpent_cli.restore import default_choice_note, load_restoration_model

            net, variant, _ = load_restoration_model(model, weights)
            naming.fields["model"] = variant
            note = default_choice_note(variant) if model is None and weights is None else None
            if note and main_rank:
                info(note)
        assign_outputs(jobs, naming)
        restorer = None
        if net is not None:
            from serpent_cli.restore import Restorer

            restorer = Restorer(net, dev, dtype, tile=tile_size, overlap=tile_overlap)
            if main_rank:
                announce_kernel_compile(dev)

        def work(job: Job) -> Result:
            assert restorer is not None

            def transform(pic: Picture) -> tuple[Picture, dict[str, object]]:
                restored, report = restorer.restore(pic)
                for note in report.warnings:
                    warn(f"{job.source}: {note}")
                extra = {"model": variant, "tile": report.tile, "precision": report.precision, "mode": pic.mode,
                         "bit_depth": pic.bit_depth, **({"rank": ctx.rank} if ctx.is_distributed else {})}
                return restored, extra

            return process_image(job, transform, policy, warn)

        fields = (*JSON_FIELDS, "rank") if ctx.is_distributed else JSON_FIELDS
        code = run_batch(jobs, work, ctx=ctx, json_out=json_out, verb="deblurred", json_fields=fields)
    finally:
        shutdown()
    raise SystemExit(code)
