"""`serpent train` (not built yet)."""

from __future__ import annotations

from serpent_cli.cli.common import not_built


def train_command() -> None:
    """Not available in this version yet."""
    not_built("train")
