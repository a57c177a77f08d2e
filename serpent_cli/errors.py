"""User-facing errors: raised anywhere, printed by the CLI as one line with an exit code."""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type name when empty), for one-line reports.

    Library exceptions raised on corrupt input can be long, multi-line, or fail to print at all.
    """
    try:
        lines = str(exc).strip().splitlines()
    except Exception:  # a __str__ that itself trips over the corrupt input
        lines = []
    return (lines[0] if lines else type(exc).__name__)[:limit]


class SerpentError(Exception):
    """A problem the user can fix; the message says what and how. Never shown as a traceback."""

    exit_code = EXIT_SOME_FAILED


class UsageError(SerpentError):
    """Wrong arguments or options (exit code 2)."""

    exit_code = EXIT_USAGE


class WeightsError(SerpentError):
    """A weights file is missing, corrupt, or describes another architecture."""


def require_folder(path: str | Path, what: str = "data") -> Path:
    """``path`` as a folder, or a UsageError naming it; cheap, so commands check it before heavy imports."""
    folder = Path(path)
    if not folder.exists():
        raise UsageError(f"{what} folder not found: {folder}")
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; pass a folder of images")
    return folder


class ReportedByAnotherRank(SerpentError):
    """This rank stops because another rank of a torchrun job failed; rank 0 says why.

    It exits quietly with 0: a non-zero exit would make torchrun stop rank 0 before it has printed
    the reason, and rank 0's exit code carries the failure.
    """

    exit_code = EXIT_OK
