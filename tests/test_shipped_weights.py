"""Every bundled weights file still restores real photos as well as when it was shipped.

A changed scan kernel, loader, config default or degradation that silently degrades a shipped model
changes its gain on the reference photos; the registry holds the figures recorded at shipping time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serpent_cli import create_model
from serpent_cli.evaluation.evaluate import REFERENCE_PHOTOS, reference_check
from serpent_cli.hub.local import bundled_weights_dir
from serpent_cli.hub.registry import REFERENCE_CHECKS
from serpent_cli.models.registry import shipped_models

BUNDLED = [info.name for info in shipped_models() if (bundled_weights_dir() / f"{info.name}.safetensors").is_file()]


def test_every_bundled_file_has_recorded_figures() -> None:
    assert BUNDLED, "no bundled weights found"
    for name in BUNDLED:
        assert set(REFERENCE_CHECKS.get(name, {})) == set(REFERENCE_PHOTOS), name


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_weights_restore_as_recorded(name: str, data_dir: Path) -> None:
    torch.manual_seed(0)
    got = reference_check(create_model(name, pretrained=True), data_dir)
    for photo, want in REFERENCE_CHECKS[name].items():
        assert got[photo]["gain_db"] == pytest.approx(want["gain_db"], abs=0.3), (name, photo, got[photo])
        assert got[photo]["gain_db"] > 0, f"{name} makes {photo} worse than the degraded input"
        if want["grid"] is not None:
            assert got[photo]["grid"] == pytest.approx(want["grid"], abs=0.05), (name, photo, got[photo])


def test_blind_model_does_no_harm_to_sharp_photos(data_dir: Path) -> None:
    """serpent-l-blind, given an untouched photo, returns it (>= 35 dB): it does no harm to a sharp picture."""
    from serpent_cli.evaluation.evaluate import center_crop
    from serpent_cli.evaluation.metrics import psnr
    from serpent_cli.io.imageio import read_rgb

    blind = create_model("serpent-l-blind", pretrained=True).eval()
    for photo in REFERENCE_PHOTOS:
        clean = center_crop(read_rgb(data_dir / photo), 256).unsqueeze(0)
        with torch.inference_mode():
            restored = blind(clean).clamp(0, 1)
        assert float(psnr(restored[0], clean[0])) >= 35.0, photo


def test_registry_metrics_are_the_committed_eval_figures() -> None:
    """What `serpent models` and the model cards show comes from benchmarks/results/eval, never typed by hand."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "registry_metrics.py"
    proc = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
