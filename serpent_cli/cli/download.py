"""`serpent download`: fetch registered (or your own) weights into the Hugging Face Hub cache, hash-checked."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from tqdm.std import tqdm as _std_tqdm

from serpent_cli.cli.common import err_console, error_line, info, stderr_is_terminal, verbosity, warn
from serpent_cli.errors import EXIT_SOME_FAILED, SerpentError, UsageError
from serpent_cli.hub import DownloadResult, download, download_registered, endpoint
from serpent_cli.registry import HUB_FILENAME, get_entry, load_registry
from serpent_cli.weights import read_config


class RichDownloadBar(_std_tqdm):
    """A tqdm-compatible bar (what huggingface_hub drives) drawn with Rich on stderr, only on a terminal."""

    label = ""

    @classmethod
    def for_label(cls, label: str) -> type[RichDownloadBar]:
        """A bar class that shows ``label`` instead of the URL huggingface_hub passes as description."""
        return type("RichDownloadBar", (cls,), {"label": label})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

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


def _check_weights(result: DownloadResult) -> str:
    """A downloaded file must be a serpent weights file; returns the variant it describes."""
    return read_config(result.path).name


def _report(label: str, result: DownloadResult) -> None:
    what = f"{result.repo_id}/{result.filename}@{result.revision}"
    how = f"found {what} in the cache" if result.from_cache else f"downloaded {what} from {endpoint()}"
    check = "sha256 verified" if result.verified else f"sha256 {result.sha256}"
    prefix = "" if label == result.repo_id else f"{label}: "
    info(f"{prefix}{how} ({result.size / 1e6:.1f} MB, {check})")


def download_command(
    names: Annotated[list[str] | None, typer.Argument(help="Registered model names (see 'serpent models').")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Every published registered model.")] = False,
    repo_id: Annotated[
        str | None, typer.Option(help="Your own Hub repo (same layout: model.safetensors + config.json).")
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit (default: the pinned one).")] = None,
    filename: Annotated[str | None, typer.Option(help=f"File in the repo (default: {HUB_FILENAME}).")] = None,
    force: Annotated[bool, typer.Option(help="Download again even when cached.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON result per file on stdout.")] = False,
) -> None:
    """Download weights from the Hugging Face Hub into its cache (HF_HOME / HF_HUB_CACHE; HF_ENDPOINT and
    HF_HUB_OFFLINE honoured) and verify their sha256 against the registry. Prints each file's path."""
    from huggingface_hub.utils import logging as hf_logging

    if not verbosity.verbose:
        hf_logging.set_verbosity_error()  # our own messages say what happened; no retry chatter
    names = list(names or [])
    if repo_id is not None and (names or all_models):
        raise UsageError("--repo-id downloads one file of your own repo; leave out model names and --all")
    if all_models and names:
        raise UsageError("give model names or --all, not both")
    if not names and not all_models and repo_id is None:
        raise UsageError("name a model (see 'serpent models'), or pass --all or --repo-id OWNER/NAME")

    jobs: list[tuple[str, Any]] = []
    if repo_id is not None:
        jobs.append((repo_id, None))
    else:
        if all_models:
            registry = load_registry().values()
            entries = [e for e in registry if e.published]
            skipped = [e.name for e in registry if not e.published]
            if skipped and entries:
                info(f"skipping models not published on the Hub: {', '.join(skipped)}")
            if not entries:
                raise SerpentError(
                    "no registered model is published on the Hub yet; trained weights ship bundled in weights/ "
                    "('serpent models' shows where each one is)"
                )
        else:
            entries = [get_entry(name) for name in names]  # unknown names: usage error before any transfer
        jobs = [(entry.name, entry) for entry in entries]

    failed = 0
    for label, entry in jobs:
        try:
            if entry is None:
                result = download(
                    label,
                    filename or HUB_FILENAME,
                    revision or "main",
                    force=force,
                    tqdm_class=RichDownloadBar.for_label(label),
                    on_warning=warn,
                )
            else:
                result = download_registered(
                    entry,
                    revision=revision,
                    filename=filename,
                    force=force,
                    tqdm_class=RichDownloadBar.for_label(entry.name),
                    on_warning=warn,
                )
            variant = _check_weights(result)
        except UsageError:
            raise  # a malformed request is exit 2, whatever else was asked
        except SerpentError as exc:
            failed += 1
            message = str(exc)
            error_line(message if message.startswith(label) else f"{label}: {message}")
            if json_out:
                typer.echo(json.dumps({"name": label, "status": "error", "error": str(exc)}))
            continue
        _report(label, result)
        if json_out:
            typer.echo(
                json.dumps(
                    {
                        "name": label,
                        "status": "ok",
                        "variant": variant,
                        "repo_id": result.repo_id,
                        "filename": result.filename,
                        "revision": result.revision,
                        "path": str(result.path),
                        "sha256": result.sha256,
                        "verified": result.verified,
                        "from_cache": result.from_cache,
                        "size": result.size,
                    }
                )
            )
        else:
            typer.echo(str(result.path))
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
