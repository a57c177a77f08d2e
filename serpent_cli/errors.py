"""User-facing errors: raised anywhere, printed by the CLI as one line with an exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


class SerpentError(Exception):
    """A problem the user can fix; the message says what and how. Never shown as a traceback."""

    exit_code = EXIT_SOME_FAILED


class UsageError(SerpentError):
    """Wrong arguments or options (exit code 2)."""

    exit_code = EXIT_USAGE


class WeightsError(SerpentError):
    """A weights file is missing, corrupt, or describes another architecture."""
