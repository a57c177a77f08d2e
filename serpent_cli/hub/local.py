"""Weights files on this machine: the bundled folder and sha256 checks against a pin.

The bottom of :mod:`serpent_cli.hub`: the registry, the Hub client and the weights loader all ask it,
and it asks none of them, so the three no longer import each other in a circle.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from serpent_cli.errors import UsageError, WeightsError

WEIGHTS_DIR_ENV = "SERPENT_WEIGHTS_DIR"


def bundled_weights_dir() -> Path:
    """Where weights shipped with the package live (wheel: serpent_cli/_weights; checkout: weights/).

    ``SERPENT_WEIGHTS_DIR`` points it elsewhere (a shared folder of weights; tests).
    """
    override = os.environ.get(WEIGHTS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    package = Path(__file__).resolve().parents[1]
    packaged = package / "_weights"
    if packaged.is_dir():
        return packaged
    return package.parent / "weights"


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed (weights can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, what: str = "") -> str:
    """Check ``path`` against a pinned sha256; a mismatch (corrupt, truncated, replaced) is a WeightsError."""
    try:
        digest = sha256_file(path)
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except IsADirectoryError:
        raise WeightsError(f"{path} is a directory, not a weights file") from None
    if digest != expected.lower():
        raise WeightsError(
            f"{path}: sha256 {digest[:16]}... does not match the registered {what or 'weights'} "
            f"({expected[:16]}...); the file is corrupt, truncated or replaced. Restore it (reinstall serpent "
            f"for bundled weights, 'serpent download {what or 'NAME'} --force' for the Hub cache)"
        )
    return digest


def read_json_file(path: str | Path, label: str, missing: str) -> Any:
    """A user-named JSON file (a registry override, a metrics file), or one clear usage error.

    ``label`` starts the message for an unreadable file, ``missing`` is the whole message for an absent one.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(missing) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{label}: not a readable JSON file ({exc})") from None
