"""Bench results on disk: reading back the JSON that ``serpent bench --output`` wrote (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serpent_cli.errors import UsageError


def load_results(path: Path) -> dict[str, Any]:
    """A saved run for ``--load``, checked for what the tables and the plot read; a bad file is one usage error."""
    try:
        result = json.loads(path.read_text())
        _ = (result["rows"], result["settings"]["reference"], result["environment"]["device"])
    except OSError as exc:
        raise UsageError(f"--load {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"--load {path}: not a JSON file written by 'serpent bench --output'") from None
    return result
