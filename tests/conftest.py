"""Shared fixtures: real images from ../shared/data and small helpers for subprocess runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from numba_cache import NumbaCache

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SERPENT_TEST_DATA", REPO.parent / "shared" / "data"))

# Tests share 2 cores with subprocesses they start; one thread each keeps them from oversubscribing.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"test images not found at {DATA}; set SERPENT_TEST_DATA to the shared data folder")
    return DATA


@pytest.fixture(scope="session")
def serpent_cmd() -> list[str]:
    """The installed console script, run as a real subprocess."""
    exe = Path(sys.executable).with_name("serpent")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "serpent_cli"]


@pytest.fixture
def empty_numba_cache(tmp_path: Path) -> NumbaCache:
    home = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"} | {"XDG_CACHE_HOME": str(home)}
    return NumbaCache(env=env, folder=home / "serpent" / "numba")
