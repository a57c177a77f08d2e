"""Helpers for the deblur / degrade tests: random-init weights and small real photo crops."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from serpent_cli.factory import create_model
from serpent_cli.hub.weights import save_model


def make_weights(path: Path, name: str = "serpent-b", seed: int = 0) -> Path:
    """A random-init network saved as a real serpent weights file (no trained weights needed)."""
    torch.manual_seed(seed)
    return save_model(create_model(name), path)


def crop(data_dir: Path, folder: str, index: int, box: tuple[int, int, int, int]) -> Image.Image:
    """A crop of a real photo from the shared data, as RGB."""
    path = sorted((data_dir / folder).glob("*.png"))[index]
    with Image.open(path) as img:
        return img.convert("RGB").crop(box)


def run(cmd: list[str], *, stdin: bytes | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """Run a command with one thread per process and captured bytes."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", **(env or {})}
    return subprocess.run(cmd, input=stdin, capture_output=True, env=full_env, timeout=timeout)


@pytest.fixture
def one_thread():
    """In-process model runs on one thread: on a loaded 2-core machine two OpenMP threads ran 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
