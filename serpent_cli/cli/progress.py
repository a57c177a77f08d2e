"""Rich progress for the long-running commands: training steps and downloads.

Kept apart from the command modules because it subclasses library types (tqdm, the training
Reporter) whose imports are heavy: the commands import this only once they have work to show.
"""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from tqdm.std import tqdm as _std_tqdm

from serpent_cli.cli.common import err_console, info, stderr_is_terminal, verbosity
from serpent_cli.training.loop import Reporter


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


class RichDownloadBar(_std_tqdm):
    """A tqdm-compatible bar (what huggingface_hub drives) drawn with Rich on stderr, only on a terminal."""

    label = ""

    @classmethod
    def for_label(cls, label: str) -> type[RichDownloadBar]:
        """A bar class that shows ``label`` instead of the URL huggingface_hub passes as description."""
        return type("RichDownloadBar", (cls,), {"label": label})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from rich.progress import DownloadColumn, TransferSpeedColumn

        kwargs.pop("name", None)
        show = not kwargs.get("disable") and stderr_is_terminal() and not verbosity.quiet
        kwargs["disable"] = True  # tqdm itself draws nothing
        super().__init__(*args, **kwargs)
        self._rich: Progress | None = None
        if show:
            self._rich = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=err_console,
                transient=True,
            )
            self._rich.start()
            self._task = self._rich.add_task(
                self.label or str(kwargs.get("desc") or "download"),
                total=kwargs.get("total"),
                completed=kwargs.get("initial", 0),
            )

    def update(self, n: float | None = 1) -> bool | None:
        if self._rich is not None and n:
            self._rich.update(self._task, advance=n)
        return None

    def close(self) -> None:
        if getattr(self, "_rich", None) is not None:
            self._rich.stop()
            self._rich = None
        super().close()
