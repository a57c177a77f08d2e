"""Fetching weights from the Hugging Face Hub, and finding registered weights on this machine (bundled or cached).

huggingface_hub does the transfer and the cache, we add the checks.

``huggingface_hub`` honours ``HF_HOME`` / ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` / ``HF_ENDPOINT`` (and
``HF_TOKEN``) itself; this module only uses its public API (``hf_hub_download``, ``get_hf_file_metadata``,
``try_to_load_from_cache``) and turns every way a download can go wrong into one clear :class:`HubError` line.

Decisions:
- Before downloading we ask the server for the file's metadata once, without retries. When that fails
  (connection refused, HTTP 5xx) and the file is cached we use the cached copy with a warning; when it is not
  cached we fail at once with the reason, instead of sitting through the client's retry back-off.
- Every file is hashed after the transfer. A registered file whose sha256 differs from the pin is removed
  from the cache again (so the next run fetches it afresh) and the command fails.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serpent_cli import __version__
from serpent_cli.errors import SerpentError, UsageError, WeightsError
from serpent_cli.hub.local import bundled_weights_dir, sha256_file
from serpent_cli.hub.registry import RegistryEntry, load_registry
from serpent_cli.models.registry import default_order, list_models, model_info

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class HubError(SerpentError):
    """A download failed: server, network, cache or hash problem. The message says which and what to do."""


@dataclass(frozen=True)
class DownloadResult:
    """Where a downloaded (or already cached) file lies and what it hashes to."""

    repo_id: str
    filename: str
    revision: str
    path: Path
    sha256: str
    size: int
    from_cache: bool
    verified: bool  # True when the sha256 matched a pin


def endpoint(override: str | None = None) -> str:
    """The Hub address in use: ``override``, else ``HF_ENDPOINT``, else huggingface.co."""
    from huggingface_hub import constants

    return str(override or constants.ENDPOINT).rstrip("/")


def cache_dir(override: str | Path | None = None) -> Path:
    """The Hub cache folder in use: ``override``, else ``HF_HUB_CACHE``, else ``HF_HOME/hub``."""
    from huggingface_hub import constants

    return Path(override or constants.HF_HUB_CACHE)


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set: only the cache may be used."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cached_file(repo_id: str, filename: str, revision: str = "main", *, cache: str | Path | None = None) -> Path | None:
    """The cached copy of ``repo_id/filename@revision``, or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision, cache_dir=str(cache_dir(cache)))
    except (ValueError, OSError):
        return None
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def _where(repo_id: str, filename: str, revision: str) -> str:
    return f"{repo_id}/{filename}@{revision}"


def _remove_from_cache(path: Path, cache: str | Path | None) -> None:
    """Drop a bad file from the Hub cache: the snapshot link and the blob it points to (cache only)."""
    roots = {Path(os.path.abspath(cache_dir(cache))), cache_dir(cache).resolve()}
    for candidate in (Path(os.path.abspath(path)), path.resolve()):
        try:
            if any(candidate.is_relative_to(root) for root in roots):
                candidate.unlink(missing_ok=True)
        except OSError:
            pass


def _validate(repo_id: str, filename: str, revision: str) -> None:
    """Reject a malformed repo id, file name or revision before any request, as a usage error."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"invalid repo id {repo_id!r}: {exc}") from None
    if not filename or filename.startswith("/") or ".." in filename.split("/") or "\\" in filename:
        raise UsageError(f"invalid file name {filename!r}: give a path inside the repo, e.g. model.safetensors")
    if not revision.strip():
        raise UsageError("empty --revision")


def _probe(repo_id: str, filename: str, revision: str, hub_url: str) -> tuple[str | None, str | None]:
    """Ask the server for the file's metadata once. Returns (commit, None) or (None, why it is unreachable).

    Errors that no cache can fix (repo, revision or file not found, access denied) raise :class:`HubError`.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = _where(repo_id, filename, revision)
    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=hub_url)
    try:
        meta = get_hf_file_metadata(url)
    except GatedRepoError:
        raise HubError(f"{repo_id} is gated on {hub_url}: accept its terms and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise HubError(
            f"repository {repo_id} not found on {hub_url} (check --repo-id; private repos need HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"revision {revision!r} not found in {repo_id} on {hub_url} (check --revision)") from None
    except EntryNotFoundError:
        raise HubError(f"{filename} not found in {repo_id} at revision {revision} (check --filename)") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubError(
                f"access to {where} denied (HTTP {status}); set HF_TOKEN to a token that can read it"
            ) from None
        return None, f"the Hub at {hub_url} answered HTTP {status} for {where}"
    except Exception as exc:  # network trouble: connection refused, DNS, timeout, TLS...
        reason = str(exc).strip() or type(exc).__name__
        return None, f"cannot reach the Hub at {hub_url} ({reason})"
    if not meta.commit_hash or not meta.etag:
        return (
            None,
            f"{hub_url} did not answer like a Hugging Face Hub (no commit or ETag headers); check HF_ENDPOINT",
        )
    return meta.commit_hash, None


def download(
    repo_id: str,
    filename: str,
    revision: str = "main",
    *,
    expected_sha256: str | None = None,
    force: bool = False,
    tqdm_class: type | None = None,
    on_warning: Callable[[str], Any] | None = None,
    hub_endpoint: str | None = None,
    cache: str | Path | None = None,
) -> DownloadResult:
    """Fetch ``repo_id/filename@revision`` into the Hub cache (or find it there) and check its sha256.

    ``hub_endpoint`` and ``cache`` override ``HF_ENDPOINT`` and ``HF_HUB_CACHE`` for this call.
    """
    _validate(repo_id, filename, revision)
    hub_url = endpoint(hub_endpoint)
    cache = cache_dir(cache)
    if is_offline():
        path, from_cache = _offline_copy(repo_id, filename, revision, cache, force), True
    elif (
        not force
        and _COMMIT_RE.match(revision)
        and (cached := cached_file(repo_id, filename, revision, cache=cache)) is not None
    ):
        path, from_cache = cached, True  # a commit never changes: a cached copy needs no network at all
    else:
        path, from_cache = _fetch(
            repo_id, filename, revision, cache, hub_url, force=force, tqdm_class=tqdm_class, warn=on_warning
        )
    return _verified(repo_id, filename, revision, path, cache, from_cache=from_cache, expected_sha256=expected_sha256)


def _offline_copy(repo_id: str, filename: str, revision: str, cache: Path, force: bool) -> Path:
    """HF_HUB_OFFLINE: the cached copy, or one HubError saying how to get it (--force cannot work offline)."""
    if force:
        raise HubError("--force needs the network, but HF_HUB_OFFLINE is set; unset it or drop --force")
    path = cached_file(repo_id, filename, revision, cache=cache)
    if path is None:
        raise HubError(
            f"offline (HF_HUB_OFFLINE is set) and {_where(repo_id, filename, revision)} is not in the cache at "
            f"{cache}; download it once with the network on, or unset HF_HUB_OFFLINE"
        )
    return path


def _fetch(
    repo_id: str,
    filename: str,
    revision: str,
    cache: Path,
    hub_url: str,
    *,
    force: bool,
    tqdm_class: type | None,
    warn: Callable[[str], Any] | None,
) -> tuple[Path, bool]:
    """Ask the Hub once first: unreachable means the cached copy (with a warning) or an error now, not retries.

    Returns the file and whether it was already cached.
    """
    commit, unreachable = _probe(repo_id, filename, revision, hub_url)
    if unreachable is not None:
        where = _where(repo_id, filename, revision)
        path = None if force else cached_file(repo_id, filename, revision, cache=cache)
        if path is None:
            raise HubError(f"{unreachable}; {where} is not cached either. Check the network or HF_ENDPOINT and retry")
        if warn is not None:
            warn(f"{unreachable}; using the cached copy of {where}")
        return path, True
    from_cache = not force and cached_file(repo_id, filename, commit or revision, cache=cache) is not None
    return _transfer(repo_id, filename, revision, cache, hub_url, force=force, tqdm_class=tqdm_class), from_cache


def _transfer(
    repo_id: str, filename: str, revision: str, cache: Path, hub_url: str, *, force: bool, tqdm_class: type | None
) -> Path:
    """huggingface_hub's download into its cache; every way it can fail becomes one HubError line."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    where = _where(repo_id, filename, revision)
    options: dict[str, Any] = {"tqdm_class": tqdm_class}
    # tqdm_class is recent in huggingface_hub; older clients simply draw their own bar
    accepted = inspect.signature(hf_hub_download).parameters
    options = {k: v for k, v in options.items() if k in accepted and v is not None}
    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                force_download=force,
                cache_dir=str(cache),
                endpoint=hub_url,
                library_name="serpent-cli",
                library_version=__version__,
                **options,
            )
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise HubError(f"could not download {where} from {hub_url} and it is not cached ({exc})") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise HubError(f"download of {where} failed: HTTP {status} from {hub_url}; retry later") from None
    except OSError as exc:  # disk full, permissions, size check of a cut transfer...
        raise HubError(f"download of {where} failed: {exc}") from None
    except Exception as exc:  # network dropped mid-transfer
        raise HubError(f"download of {where} failed: {str(exc).strip() or type(exc).__name__}") from None


def _verified(
    repo_id: str,
    filename: str,
    revision: str,
    path: Path,
    cache: Path,
    *,
    from_cache: bool,
    expected_sha256: str | None,
) -> DownloadResult:
    """Hash the file; one that differs from its pin is removed from the cache (so a retry fetches it afresh)."""
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        _remove_from_cache(path, cache)
        raise HubError(
            f"sha256 mismatch for {_where(repo_id, filename, revision)}: expected {expected_sha256}, got {digest}; "
            f"the file was removed from the cache. The file on the Hub is not the registered one (or was corrupted): "
            f"retry, or report it"
        )
    return DownloadResult(
        repo_id=repo_id,
        filename=filename,
        revision=revision,
        path=path,
        sha256=digest,
        size=path.stat().st_size,
        from_cache=from_cache,
        verified=expected_sha256 is not None,
    )


def download_registered(
    entry: RegistryEntry,
    *,
    revision: str | None = None,
    filename: str | None = None,
    force: bool = False,
    tqdm_class: type | None = None,
    on_warning: Callable[[str], Any] | None = None,
) -> DownloadResult:
    """Download a registry entry's file; the pin is checked when the pinned revision and file are asked for.

    An entry that is not published is refused without any request: the registry does not pretend.
    """
    warn = on_warning or (lambda _msg: None)
    if not entry.published:
        bundled = bundled_weights_dir() / entry.bundled_filename
        where = f"bundled in {bundled}" if bundled.is_file() else f"not bundled either ({bundled.name} missing)"
        raise HubError(
            f"{entry.name} is not published on the Hub yet ({entry.repo_id}); its weights are {where}. "
            f"For your own repo use --repo-id OWNER/NAME"
        )
    rev = revision or entry.revision
    fname = filename or entry.filename
    pinned = rev == entry.revision and fname == entry.filename
    if not pinned:
        warn(f"{entry.name}: {fname}@{rev} is not the registered file, so its sha256 is not checked against the pin")
    elif entry.sha256 is None:
        warn(f"{entry.name}: the registry pins no sha256 yet, so the file cannot be verified")
    return download(
        entry.repo_id,
        fname,
        rev,
        expected_sha256=entry.sha256 if pinned else None,
        force=force,
        tqdm_class=tqdm_class,
        on_warning=warn,
    )


# ----------------------------------------------------------------------------- what is here


def model_status() -> list[dict[str, Any]]:
    """One row per registry entry: where its weights are (bundled / cached / remote / unavailable).

    ``pin_ok`` is True/False when a local copy exists and a pin exists to check it against, else None.
    Never touches the network.
    """
    rows = []
    entries = load_registry()
    for entry in entries.values():
        bundled = bundled_weights_dir() / entry.bundled_filename
        bundled_path = bundled if bundled.is_file() else None
        cached_path = cached_file(entry.repo_id, entry.filename, entry.revision)
        local = bundled_path or cached_path
        pin_ok = None if local is None or entry.sha256 is None else sha256_file(local) == entry.sha256
        if bundled_path is not None:
            status = "bundled"
        elif cached_path is not None:
            status = "cached"
        elif entry.published:
            status = "remote"
        else:
            status = "unavailable"
        rows.append(
            {
                **entry.to_dict(),
                "status": status,
                "bundled": bundled_path is not None,
                "cached": cached_path is not None,
                "path": str(local) if local is not None else None,
                "pin_ok": pin_ok,
                "url": f"{endpoint()}/{entry.repo_id}" if entry.published else None,
                "trained_for": _trained_for(entry),
                "default": False,
            }
        )
    # The one `serpent deblur` / `serpent eval` use without --model: the first of the default order found here.
    here = {row["name"]: row for row in rows if row["status"] in ("bundled", "cached")}
    chosen = next((name for name in default_order() if name in here), None)
    if chosen is not None:
        here[chosen]["default"] = True
    return rows


def _trained_for(entry: RegistryEntry) -> str | None:
    """What the entry's architecture is for (``ModelInfo.trained_for``), when it is one of ours."""
    if entry.architecture is None or entry.architecture not in list_models():
        return None
    return model_info(entry.architecture).trained_for


def registered_pin(path: Path) -> tuple[str, str] | None:
    """(name, sha256) when ``path`` is a registered weights file with a pin: bundled or Hub-cached."""
    try:
        here = Path(path).resolve()
    except OSError:
        return None
    for name, entry in load_registry().items():
        if not entry.sha256:
            continue
        candidates = [
            bundled_weights_dir() / entry.bundled_filename,
            cached_file(entry.repo_id, entry.filename, entry.revision),
        ]
        for candidate in candidates:
            if candidate is not None and candidate.exists() and candidate.resolve() == here:
                return name, entry.sha256
    return None


def resolve_pretrained(name: str) -> Path:
    """Path of the registered weights for ``name``: bundled ``weights/`` first, then the Hub cache.

    Never touches the network (``serpent download`` does that); the sha256 pin is checked on load.
    """
    bundled = bundled_weights_dir() / f"{name}.safetensors"
    if bundled.is_file():
        return bundled
    try:
        entry = load_registry().get(name)
    except SerpentError as exc:
        raise WeightsError(str(exc)) from None
    if entry is not None:
        cached = cached_file(entry.repo_id, entry.filename, entry.revision)
        if cached is not None:
            return cached
        if entry.published:
            hint = f"run 'serpent download {name}' or pass --weights FILE"
        else:
            hint = f"{name} is not published on the Hub yet; pass --weights FILE (e.g. from 'serpent train')"
    else:
        hint = "pass --weights FILE"
    raise WeightsError(
        f"no trained weights for {name}: {bundled.name} is not in {bundled_weights_dir()} nor in the Hub cache; {hint}"
    )
