"""`serpent download`: fetch registered (or your own) weights into the Hugging Face Hub cache, hash-checked."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from serpent_cli.cli.common import error_line, info, verbosity, warn
from serpent_cli.errors import EXIT_SOME_FAILED, SerpentError, UsageError
from serpent_cli.hub.registry import HUB_FILENAME, get_entry, load_registry

if TYPE_CHECKING:
    from serpent_cli.hub.client import DownloadResult


def _check_weights(result: DownloadResult) -> str:
    """A downloaded file must be a serpent weights file; returns the variant it describes."""
    from serpent_cli.hub.weights import read_config

    return read_config(result.path).name


def _report(label: str, result: DownloadResult) -> None:
    from serpent_cli.hub.client import endpoint

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
    """Download weights from the Hugging Face Hub into its cache, sha256-checked against the registry.

    HF_HOME, HF_HUB_CACHE, HF_ENDPOINT and HF_HUB_OFFLINE are honoured. Prints each file's path.
    """
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

    from huggingface_hub.utils import logging as hf_logging

    from serpent_cli.cli.progress import RichDownloadBar
    from serpent_cli.hub.client import download, download_registered

    if not verbosity.verbose:
        hf_logging.set_verbosity_error()  # our own messages say what happened; no retry chatter
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
