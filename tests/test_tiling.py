"""Tiling: tiles cover the image, blending is seamless, auto sizing and OOM retry behave."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from deblur_helpers import one_thread  # noqa: F401  (fixture)
from PIL import Image

from serpent_cli.io import tiling as tiling


@pytest.mark.parametrize(("size", "tile", "overlap"), [(100, 32, 8), (67, 64, 16), (64, 64, 8), (33, 128, 8)])
def test_tile_starts_cover_the_image(size: int, tile: int, overlap: int) -> None:
    starts = tiling.tile_starts(size, tile, overlap)
    assert starts[0] == 0
    assert starts[-1] + min(tile, size) == size
    for a, b in itertools.pairwise(starts):
        assert b - a <= tile - min(overlap, tile // 2)  # neighbours overlap by at least the overlap


def test_blending_is_exact_for_a_pixelwise_function(data_dir) -> None:
    """A per-pixel function gives the same result tiled or not: the weights are a partition of unity."""
    photo = Image.open(sorted((data_dir / "kodak24").iterdir())[0]).convert("RGB").crop((0, 0, 150, 110))
    image = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    fn = lambda t: torch.sigmoid(3 * t - 1)  # noqa: E731
    tiled = tiling.tiled_forward(fn, image, 48, 16)
    assert torch.allclose(tiled, fn(image), atol=1e-6)


def test_untiled_when_tile_covers_the_image() -> None:
    calls: list[tuple[int, ...]] = []
    image = torch.rand(1, 3, 40, 50)
    tiling.tiled_forward(lambda t: calls.append(tuple(t.shape)) or t, image, 64, 8)
    assert calls == [(1, 3, 40, 50)]


def test_auto_tile_retries_smaller_after_out_of_memory() -> None:
    """The first attempts raise OOM; run_tiled halves the tile until it fits, and says which it used."""
    image = torch.rand(1, 3, 256, 256)
    seen: list[int] = []

    def fn(t: torch.Tensor) -> torch.Tensor:
        seen.append(t.shape[-1])
        if t.shape[-1] > 64:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return t * 2

    out, used = tiling.run_tiled(fn, image, None, 16, bytes_per_pixel=1.0)
    assert used == 64
    assert seen[0] == 256 and 128 in seen
    assert torch.allclose(out, image * 2, atol=1e-6)


def test_auto_tile_size_follows_free_memory() -> None:
    small = tiling.auto_tile_size(torch.device("cpu"), bytes_per_pixel=1e9)
    large = tiling.auto_tile_size(torch.device("cpu"), bytes_per_pixel=1.0)
    assert small == tiling.MIN_TILE
    assert large > small and large % tiling.TILE_MULTIPLE == 0


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(("folder", "box"), [("kodak24", (300, 200, 460, 328)), ("set14", (0, 0, 160, 128))])
def test_tiled_serpent_matches_untiled_on_real_photos(data_dir, folder: str, box: tuple[int, int, int, int]) -> None:
    """A real network on real photos: tile 64 / overlap 32 against one pass (measured about 80 dB)."""
    from serpent_cli.factory import create_model
    from serpent_cli.restore import Restorer

    torch.manual_seed(0)
    model = create_model("serpent-b")
    with Image.open(sorted((data_dir / folder).glob("*.png"))[0]) as img:
        photo = img.convert("RGB").crop(box)
    image = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    whole = Restorer(model, torch.device("cpu"), tile=0).restore_tensor(image)
    tiled = Restorer(model, torch.device("cpu"), tile=64, overlap=32).restore_tensor(image)
    psnr = 10 * torch.log10(1 / ((whole.clamp(0, 1) - tiled.clamp(0, 1)) ** 2).mean())
    assert psnr > 60
    change = whole - image  # what the network did; tiling must not alter it noticeably either
    assert change.pow(2).mean().sqrt() > 0.01
    assert (tiled - whole).norm() / change.norm() < 0.01
