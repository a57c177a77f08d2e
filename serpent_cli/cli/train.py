"""`serpent train`: parse options, run :func:`serpent_cli.training.loop.train`, show progress on stderr."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from serpent_cli.cli.common import DeviceOption, ThreadsOption, check_compute_options, info, use_threads, warn
from serpent_cli.models.registry import trainable_models


def train_command(
    data: Annotated[list[Path], typer.Argument(
        help="Folder(s) of clean training images (read recursively; several are used together).")],
    model: Annotated[str, typer.Option("--model", "-m", help=f"{', '.join(trainable_models())}.")] = "serpent-b",
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoints, log.csv, model.safetensors.")]
    = Path("runs/serpent"),
    val: Annotated[Path | None, typer.Option(help="Folder of validation images (fixed seeded degradation).")]
    = None,
    epochs: Annotated[float, typer.Option(help="Epochs (paper: 60); ignored when --steps is given.")] = 60.0,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps in total (overrides --epochs).")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Adam learning rate (default as in the paper: 5e-4 up to crop 256, else 1e-3).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Crops per step per process (paper: 1).")]
    = 1,
    crop: Annotated[int, typer.Option(help="Training crop size in pixels (paper: 256).")] = 256,
    loss: Annotated[str, typer.Option(help="Loss: l1 or mse.")] = "l1",
    ema: Annotated[float, typer.Option(help="EMA decay of the saved weights (0 = save raw weights).")] = 0.999,
    val_every: Annotated[int, typer.Option(help="Validate every N steps.")] = 1000,
    val_crop: Annotated[int, typer.Option(help="Center-crop validation images to N px (0 = whole image).")] = 256,
    val_limit: Annotated[int | None, typer.Option(help="Use only the first N validation images.")] = None,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 1000,
    keep: Annotated[int, typer.Option(help="Keep the last N checkpoints.")] = 3,
    log_every: Annotated[int, typer.Option(help="Write a log.csv row every N steps.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, crops, flips and noise.")] = 0,
    workers: Annotated[int, typer.Option(help="Data-loading worker processes (0 = in the main process).")] = 0,
    device: DeviceOption = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA, else fp32), fp32 or bf16.")]
    = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its latest state.")]
    = False,
    init: Annotated[
        str | None, typer.Option(help="Start from these weights: a model name (serpent-l) or a .safetensors file.")
    ] = None,
    lr_schedule: Annotated[str, typer.Option(help="cosine (after the warm-up, down to 1% of --lr) or constant.")]
    = "cosine",
    warmup: Annotated[int | None, typer.Option(help="Linear warm-up steps (default 2% of the run, at most 1000).")]
    = None,
    clip_grad: Annotated[float, typer.Option(help="Clip the gradient norm to this (0 = no clipping).")] = 1.0,
    rotate: Annotated[bool, typer.Option(help="Random 90-degree rotations besides the flips.")] = True,
    cache_mb: Annotated[float, typer.Option(help="Memory for decoded training images, MiB (least recently used out).")]
    = 2048.0,
    degradation: Annotated[str | None, typer.Option(
        help="benchmark (Gaussian sigma 3 + noise 0.05, the paper's) or blind (random blur kinds, noise, JPEG). "
             "Default: the resumed run's, else what --model is for (blind for serpent-l-blind).",
        show_default=False)] = None,
    threads: ThreadsOption = 0,
) -> None:
    """Train a model on folders of clean photos (on-the-fly degradation); torchrun for several GPUs."""
    from serpent_cli.errors import require_folder

    # What can be checked without torch first: a typo'd path or option answers at once.
    for folder in (*data, val):
        if folder is not None:
            require_folder(folder)
    check_compute_options(device, threads)

    from serpent_cli.cli.progress import RichReporter
    from serpent_cli.training.loop import TrainOptions, train

    use_threads(threads)
    opts = TrainOptions(
        data=[str(d) for d in data], out=str(out), model=model, val=str(val) if val else None, epochs=epochs,
        steps=steps,
        lr=lr, batch_size=batch_size, crop=crop, loss=loss, ema=ema, val_every=val_every,
        val_crop=val_crop or None, val_limit=val_limit, save_every=save_every, keep=keep, log_every=log_every,
        seed=seed, workers=workers, device=device, precision=precision, resume=resume, init=init,
        lr_schedule=lr_schedule, warmup=warmup, clip_grad=clip_grad, rotate=rotate, cache_mb=cache_mb,
        degradation=degradation,
    )
    result = train(opts, RichReporter(log_every), warn)
    if result.is_main:
        info(f"done: step {result.final_step}; weights in {result.model_path}")
