"""`serpent download` (not built yet)."""

from __future__ import annotations

from serpent_cli.cli.common import not_built


def download_command() -> None:
    """Not available in this version yet."""
    not_built("download")
