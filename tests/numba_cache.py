"""The type of the ``empty_numba_cache`` fixture (conftest.py), importable by tests (conftest itself is not:
tests/hub has a conftest of its own)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class NumbaCache:
    """An empty per-user numba cache for subprocesses: their environment, and the folder they compile into."""

    env: dict[str, str]
    folder: Path
