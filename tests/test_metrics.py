"""PSNR / SSIM checked against scikit-image on real photos; the patch-grid score; LPIPS never downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from serpent_cli.degradation.benchmark import BENCHMARK, seeded_generator
from serpent_cli.evaluation.metrics import grid_score, lpips_unavailable_reason, psnr, ssim
from serpent_cli.io.imageio import read_rgb


def _pairs(data_dir: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Real clean crops and their benchmark-degraded (clipped) versions, odd sizes included."""
    files = [
        data_dir / "natural-val" / "sunhays80_img_001.png",
        sorted((data_dir / "kodak24").iterdir())[0],
        sorted((data_dir / "faces-val").iterdir())[0],
    ]
    out = []
    for i, f in enumerate(files):
        clean = read_rgb(f)[:, : 61 + 10 * i, : 83 + 7 * i].contiguous()
        degraded = BENCHMARK(clean, generator=seeded_generator(f.name)).clamp(0, 1)
        out.append((degraded, clean))
    return out


def _np(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).double().numpy()


def test_psnr_and_ssim_match_scikit_image_on_real_photos(data_dir: Path) -> None:
    for degraded, clean in _pairs(data_dir):
        ref_psnr = peak_signal_noise_ratio(_np(clean), _np(degraded), data_range=1)
        ref_ssim = structural_similarity(_np(clean), _np(degraded), gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=1, channel_axis=2)
        assert float(psnr(degraded, clean)) == pytest.approx(ref_psnr, abs=1e-9)
        assert float(ssim(degraded, clean)) == pytest.approx(ref_ssim, abs=1e-9)
        assert 10 < ref_psnr < 40 and 0.05 < ref_ssim < 0.99  # a real, non-trivial comparison


def test_batched_metrics_equal_per_image(data_dir: Path) -> None:
    degraded, clean = _pairs(data_dir)[0]
    other = (clean + 0.02).clamp(0, 1)
    batch_p = psnr(torch.stack([degraded, other]), torch.stack([clean, clean]))
    batch_s = ssim(torch.stack([degraded, other]), torch.stack([clean, clean]))
    assert batch_p.tolist() == pytest.approx([float(psnr(degraded, clean)), float(psnr(other, clean))], abs=1e-12)
    assert batch_s.tolist() == pytest.approx([float(ssim(degraded, clean)), float(ssim(other, clean))], abs=1e-12)


def test_identical_images_and_bad_shapes(data_dir: Path) -> None:
    _, clean = _pairs(data_dir)[0]
    assert float(ssim(clean, clean)) == pytest.approx(1.0, abs=1e-12)
    assert float(psnr(clean, clean)) > 100
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(clean, clean[:, :-1])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(clean[:, :8, :8], clean[:, :8, :8])


def test_lpips_gives_a_reason_instead_of_downloading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    reason = lpips_unavailable_reason()
    assert reason is not None and reason.startswith("LPIPS not computed")
    assert not (tmp_path / "empty-hub").exists()  # nothing was fetched or created


def _checker(h: int, w: int, cell: int) -> torch.Tensor:
    """+1 / -1 squares of ``cell`` pixels, starting at the top-left pixel, for all three channels."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (((y // cell + x // cell) % 2) * 2 - 1).float().expand(3, h, w)


def test_grid_score_sees_a_two_pixel_checker(data_dir: Path) -> None:
    # Synthetic: a smooth ramp with fine seeded texture, then a 2-px checker of amplitude 0.03 added.
    g = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.linspace(0.2, 0.7, 96), torch.linspace(0.1, 0.8, 128), indexing="ij")
    clean = ((x + y) / 2).expand(3, 96, 128) + 0.01 * torch.rand(3, 96, 128, generator=g)
    gridded = clean + 0.03 * _checker(96, 128, 2)
    assert grid_score(gridded, clean, 2) > 3.0
    # A real photo: the same checker is clearly visible to the score at patch 2, and less so at patch 4,
    # where half the checker's edges fall inside patches.
    photo = read_rgb(sorted((data_dir / "kodak24").iterdir())[0])[:, 100:228, 200:360].contiguous()
    on_photo = (photo + 0.03 * _checker(128, 160, 2)).clamp(0, 1)
    assert grid_score(on_photo, photo, 2) > 1.3
    assert 1.0 < grid_score(on_photo, photo, 4) < grid_score(on_photo, photo, 2)


def test_grid_score_is_one_without_a_grid(data_dir: Path) -> None:
    photo = read_rgb(sorted((data_dir / "kodak24").iterdir())[1])[:, :, :256].contiguous()
    for patch in (2, 4):
        assert grid_score(photo, photo, patch) == 1.0  # exactly: restored == clean
    # Blur and noise are the same everywhere, so they do not look like a grid (within the 10%:
    # the clean photo's own ratio, 0.95 here, divides every score).
    degraded = BENCHMARK(photo, generator=seeded_generator("x")).clamp(0, 1)
    assert abs(grid_score(degraded, photo, 4) - 1.0) < 0.1
    with pytest.raises(ValueError, match="patch size >= 2"):
        grid_score(photo, photo, 1)
    with pytest.raises(ValueError, match="shape mismatch"):
        grid_score(photo, photo[:, :-1], 2)
