"""`serpent eval` (not built yet)."""

from __future__ import annotations

from serpent_cli.cli.common import not_built


def evaluate_command() -> None:
    """Not available in this version yet."""
    not_built("eval")
