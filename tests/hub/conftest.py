"""Fixtures for the Hub tests: a session-wide local Hub server, weights made for the tests, a clean environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubserver import FakeHub, WeightFiles, start_hub


@pytest.fixture(scope="session")
def fake_hub() -> Iterator[FakeHub]:
    hub = start_hub()
    yield hub
    hub.server.shutdown()
    hub.server.server_close()


@pytest.fixture()
def hub(fake_hub: FakeHub) -> FakeHub:
    fake_hub.fail.clear()
    fake_hub.reset_log()
    return fake_hub


@pytest.fixture(scope="session")
def weight_files(tmp_path_factory: pytest.TempPathFactory) -> WeightFiles:
    """Real serpent weights made with create_model + save_model (no trained weights exist yet)."""
    import torch

    from serpent_cli import create_model
    from serpent_cli.hub.weights import save_model

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    b_path = save_model(create_model("serpent-b"), root / "serpent-b.safetensors")
    torch.manual_seed(1)
    b2_path = save_model(create_model("serpent-b"), root / "serpent-b-2.safetensors")
    l_path = save_model(create_model("serpent-l"), root / "serpent-l.safetensors")
    return WeightFiles(b_path.read_bytes(), b2_path.read_bytes(), l_path.read_bytes(), b_path, l_path)


@pytest.fixture()
def hub_env(tmp_path: Path, hub: FakeHub) -> dict[str, str]:
    """Environment for a `serpent` subprocess: our server as the Hub, a private cache, no token, no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "SERPENT_"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
        HF_HUB_ETAG_TIMEOUT="5",
        HF_HUB_DOWNLOAD_TIMEOUT="5",
        SERPENT_REGISTRY=str(tmp_path / "registry.json"),
        SERPENT_WEIGHTS_DIR=str(tmp_path / "bundled"),
        NO_COLOR="1",
        OMP_NUM_THREADS="1",
    )
    (tmp_path / "bundled").mkdir()
    (tmp_path / "registry.json").write_text("{}")
    return env
