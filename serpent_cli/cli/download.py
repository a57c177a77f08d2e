"""`serpent download`: fetch registered (or your own) weights into the Hugging Face Hub cache, hash-checked."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from serpent_cli.cli.common import error_line, info, verbosity, warn
from serpent_cli.errors import EXIT_SOME_FAILED, SerpentError, UsageError
from serpent_cli.hub.fetch import DownloadJob, registered_jobs
from serpent_cli.hub.registry import HUB_FILENAME

if TYPE_CHECKING:
    from serpent_cli.hub.client import DownloadResult


def _report(label: str, result: DownloadResult) -> None:
    """The stderr line for a file that arrived: from where, its size, and whether it matched a pin."""
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
    jobs = _jobs(list(names or []), all_models, repo_id)
    from huggingface_hub.utils import logging as hf_logging

    if not verbosity.verbose:
        hf_logging.set_verbosity_error()  # our own messages say what happened; no retry chatter
    done = [_download_one(job, revision, filename, force, json_out) for job in jobs]
    if not all(done):
        raise typer.Exit(EXIT_SOME_FAILED)


def _jobs(names: list[str], all_models: bool, repo_id: str | None) -> list[DownloadJob]:
    """What to fetch: one file of your own repo, every published model, or the named ones (usage errors first)."""
    if repo_id is not None and (names or all_models):
        raise UsageError("--repo-id downloads one file of your own repo; leave out model names and --all")
    if all_models and names:
        raise UsageError("give model names or --all, not both")
    if not names and not all_models and repo_id is None:
        raise UsageError("name a model (see 'serpent models'), or pass --all or --repo-id OWNER/NAME")
    if repo_id is not None:
        return [DownloadJob(repo_id)]
    jobs, skipped = registered_jobs(names, all_models)
    if skipped:
        info(f"skipping models not published on the Hub: {', '.join(skipped)}")
    return jobs


def _download_one(job: DownloadJob, revision: str | None, filename: str | None, force: bool, json_out: bool) -> bool:
    """Fetch one file and print its path (or its JSON line); a failure is one error line and False."""
    from serpent_cli.cli.progress import RichDownloadBar
    from serpent_cli.hub.fetch import fetch_weights

    label = job.label
    try:
        result, variant = fetch_weights(
            job,
            revision=revision,
            filename=filename,
            force=force,
            tqdm_class=RichDownloadBar.for_label(label),
            on_warning=warn,
        )
    except UsageError:
        raise  # a malformed request is exit 2, whatever else was asked
    except SerpentError as exc:
        message = str(exc)
        error_line(message if message.startswith(label) else f"{label}: {message}")
        if json_out:
            typer.echo(json.dumps({"name": label, "status": "error", "error": str(exc)}))
        return False
    _report(label, result)
    typer.echo(json.dumps(_json_record(label, variant, result)) if json_out else str(result.path))
    return True


def _json_record(label: str, variant: str, result: DownloadResult) -> dict[str, Any]:
    """The --json line of a file that arrived (or was already cached) and checked out."""
    return {
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
