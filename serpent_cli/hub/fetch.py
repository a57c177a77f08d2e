"""What `serpent download` does apart from printing: the files a request names, each fetched and checked.

The Hub transfer itself is :mod:`serpent_cli.hub.client`'s; this module adds the choice of registry entries
and the check that a downloaded file really is serpent weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from serpent_cli.errors import SerpentError
from serpent_cli.hub.registry import HUB_FILENAME, RegistryEntry, get_entry, load_registry

if TYPE_CHECKING:
    from serpent_cli.hub.client import DownloadResult


@dataclass(frozen=True)
class DownloadJob:
    """One file to fetch: a registry entry's, or (``entry`` None) the file of one's own Hub repo ``label``."""

    label: str
    entry: RegistryEntry | None = None


def registered_jobs(names: list[str], every: bool) -> tuple[list[DownloadJob], list[str]]:
    """Jobs for the named models, or (``every``) for each published one; also the unpublished names left out.

    An unknown name is a usage error before any transfer; ``every`` with nothing published is an error.
    """
    if not every:
        entries = [get_entry(name) for name in names]
        return [DownloadJob(entry.name, entry) for entry in entries], []
    registry = load_registry().values()
    entries = [e for e in registry if e.published]
    if not entries:
        raise SerpentError(
            "no registered model is published on the Hub yet; trained weights ship bundled in weights/ "
            "('serpent models' shows where each one is)"
        )
    return [DownloadJob(e.name, e) for e in entries], [e.name for e in registry if not e.published]


def fetch_weights(job: DownloadJob, *, revision: str | None = None, filename: str | None = None, force: bool = False,
                  tqdm_class: type | None = None,
                  on_warning: Callable[[str], Any] | None = None) -> tuple[DownloadResult, str]:
    """Download one job's file (hash-checked) and check it is serpent weights; returns it and its variant."""
    from serpent_cli.hub.client import download, download_registered
    from serpent_cli.hub.weights import read_config

    if job.entry is None:
        result = download(
            job.label,
            filename or HUB_FILENAME,
            revision or "main",
            force=force,
            tqdm_class=tqdm_class,
            on_warning=on_warning,
        )
    else:
        result = download_registered(
            job.entry, revision=revision, filename=filename, force=force, tqdm_class=tqdm_class, on_warning=on_warning
        )
    return result, read_config(result.path).name
