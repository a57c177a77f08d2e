"""`serpent train`: parse options, run :func:`serpent_cli.training.train`, show progress on stderr."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from serpent_cli.cli.common import err_console, info, stderr_is_terminal, verbosity, warn
from serpent_cli.training import Reporter, TrainOptions, train


class RichReporter(Reporter):
    """A Rich progress bar (loss, PSNR, it/s, ETA) on a terminal; plain log lines otherwise."""

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        self.progress: Progress | None = None
        self.task: Any = None
        self.total = 0
        self.last: dict[str, float] = {}

    def start(self, total: int, start_step: int, note: str) -> None:
        info(note)
        self.total = total
        if stderr_is_terminal() and not verbosity.quiet:
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=err_console, transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=total, completed=start_step, stats="")

    def step(self, step: int, stats: dict[str, float]) -> None:
        self.last |= stats
        text = f"loss {self.last.get('loss', float('nan')):.4f}"
        if "train_psnr" in self.last:
            text += f"  PSNR {self.last['train_psnr']:.2f}"
        if "val_psnr" in self.last:
            text += f"  val {self.last['val_psnr']:.2f} dB"
        text += f"  {self.last.get('it_s', 0.0):.2f} it/s"
        if self.progress is not None:
            self.progress.update(self.task, completed=step, stats=text)
        elif step % self.log_every == 0 or step == self.total:
            info(f"step {step}/{self.total}  {text}")

    def message(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            info(text)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def train_command(
    data: Annotated[list[Path], typer.Argument(
        help="Folder(s) of clean training images (read recursively; several are used together).")],
    model: Annotated[str, typer.Option("--model", "-m", help="serpent-b, serpent-l, serpent-h or unet-32/64/128.")]
    = "serpent-b",
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
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA, else fp32), fp32 or bf16.")]
    = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its latest state.")]
    = False,
    degradation: Annotated[str, typer.Option(
        help="benchmark (Gaussian sigma 3 + noise 0.05, the paper's) or blind (random blur kinds, noise, JPEG).")]
    = "benchmark",
) -> None:
    """Train a model on folders of clean photos (on-the-fly degradation); torchrun for several GPUs."""
    opts = TrainOptions(
        data=str(data[0]) if len(data) == 1 else [str(d) for d in data],
        out=str(out), model=model, val=str(val) if val else None, epochs=epochs, steps=steps,
        lr=lr, batch_size=batch_size, crop=crop, loss=loss, ema=ema, val_every=val_every,
        val_crop=val_crop or None, val_limit=val_limit, save_every=save_every, keep=keep, log_every=log_every,
        seed=seed, workers=workers, device=device, precision=precision, resume=resume, degradation=degradation,
    )
    result = train(opts, RichReporter(log_every), warn)
    if result.is_main:
        info(f"done: step {result.final_step}; weights in {result.model_path}")
