"""Tiled inference: restore images larger than memory allows, without seams.

Overlapping tiles are blended with a raised-cosine window whose weights are normalised per
pixel, so the result is a smooth partition of unity: no visible seams, and far from the
borders of the image each pixel is a convex mix of the tiles covering it.  ``auto`` picks, among
the tiles that fit free memory, the one that covers the image with the fewest processed pixels,
and halves it after an out-of-memory error.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from serpent_cli.device import is_oom
from serpent_cli.errors import SerpentError

Forward = Callable[[Tensor], Tensor]

MIN_TILE = 64
TILE_MULTIPLE = 32
_MEMORY_HEADROOM = 0.6  # use at most this share of free memory for one tile's activations
# On the CPU a tile larger than this runs slower per pixel even when memory allows it (the finest
# scale's tensors fall out of cache): serpent-b, 2 threads, measured 1.65 s per megapixel for a
# 2048x1536 image in one piece, 2.65 s/MP for 4000x3000 in one piece, 1.98 s/MP for the latter in
# twelve 1024 px tiles (overlaps included).
CPU_MAX_TILE = 2048
# What one more tile costs beyond its pixels (per-call work that does not shrink with the tile),
# in pixels: a 256x256 forward of serpent-b on the CPU takes about twice the per-pixel time of a
# 1024x1024 one.
TILE_CALL_PIXELS = 256 * 256


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``0..size`` with at least ``overlap`` shared."""
    if tile >= size:
        return [0]
    overlap = max(0, min(overlap, tile // 2))
    stride = tile - overlap
    count = math.ceil((size - tile) / stride) + 1
    # Spread the tiles evenly so the last one ends exactly at the border (no thin sliver tile).
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool, device: torch.device) -> Tensor:
    """1-D blend weights: raised-cosine ramps of ``overlap`` pixels at inner edges, flat elsewhere."""
    weight = torch.ones(length, device=device, dtype=torch.float32)
    ramp_len = min(overlap, length // 2)
    if ramp_len > 0:
        t = (torch.arange(ramp_len, device=device, dtype=torch.float32) + 0.5) / ramp_len
        ramp = 0.5 - 0.5 * torch.cos(math.pi * t)
        if not at_start:
            weight[:ramp_len] = ramp
        if not at_end:
            weight[-ramp_len:] = ramp.flip(0)
    return weight


def tiled_forward(fn: Forward, image: Tensor, tile: int, overlap: int) -> Tensor:
    """``fn`` applied to ``image`` (N, C, H, W) tile by tile, blended; untiled when the tile covers it."""
    _, _, height, width = image.shape
    if tile <= 0 or (tile >= height and tile >= width):
        return fn(image)
    tile_h, tile_w = min(tile, height), min(tile, width)
    ys, xs = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    out: Tensor | None = None
    norm = torch.zeros(1, 1, height, width, device=image.device, dtype=torch.float32)
    for iy, y in enumerate(ys):
        wy = _ramp(tile_h, overlap, iy == 0, iy == len(ys) - 1, image.device)
        for ix, x in enumerate(xs):
            wx = _ramp(tile_w, overlap, ix == 0, ix == len(xs) - 1, image.device)
            piece = fn(image[:, :, y : y + tile_h, x : x + tile_w]).float()
            if out is None:
                out = torch.zeros(image.shape[0], piece.shape[1], height, width, device=image.device)
            weight = wy[:, None] * wx[None, :]
            out[:, :, y : y + tile_h, x : x + tile_w] += piece * weight
            norm[:, :, y : y + tile_h, x : x + tile_w] += weight
    assert out is not None
    return (out / norm).to(image.dtype)


def free_memory_bytes(device: torch.device) -> int:
    """Memory a tile may use now: free CUDA memory, else the RAM the OS reports available."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3  # unknown platform: assume a modest laptop


def auto_tile_size(
    device: torch.device, bytes_per_pixel: float, *, multiple: int = TILE_MULTIPLE, minimum: int = MIN_TILE
) -> int:
    """Largest square tile (a multiple of ``multiple``) that fits free memory; on the CPU at most CPU_MAX_TILE."""
    budget = free_memory_bytes(device) * _MEMORY_HEADROOM
    side = int(math.sqrt(max(budget, 0) / max(bytes_per_pixel, 1.0)))
    if device.type == "cpu":
        side = min(side, CPU_MAX_TILE)
    return max(minimum, side // multiple * multiple)


def fit_tile(height: int, width: int, max_side: int, overlap: int, *, multiple: int = TILE_MULTIPLE,
             minimum: int = MIN_TILE) -> int:
    """The square tile up to ``max_side`` that covers the image with the fewest processed pixels (0: whole).

    The largest tile that fits is often a poor choice: a 4000x3000 photo under a 3360 px limit
    would run as two 3000x3360 tiles (20 M pixels for 12 M), where four 2016x2016 tiles cover it
    with 16 M and twelve 1024x1024 tiles with 12.6 M; the model's cost grows with the pixels it
    sees, plus a fixed cost per call (:data:`TILE_CALL_PIXELS`).  Ties go to the larger tile.
    """
    if max_side >= max(height, width):
        return 0
    best, best_cost = minimum, math.inf
    for tile in range(max(minimum, multiple), max(minimum, max_side) + 1, multiple):
        tile_h, tile_w = min(tile, height), min(tile, width)
        count = len(tile_starts(height, tile_h, overlap)) * len(tile_starts(width, tile_w, overlap))
        cost = count * (tile_h * tile_w + TILE_CALL_PIXELS)
        if cost <= best_cost:
            best, best_cost = tile, cost
    return best


def bytes_per_pixel_estimate(model: nn.Module, *, in_place_scan: bool = False) -> float:
    """Peak inference activation bytes per input pixel (fp32), from the model's width and patch size.

    Serpent's widest tensors live at the finest scale, on (H/P)·(W/P) tokens of D to 4·D channels.
    With the unrolled scan (CUDA, the torch backend) the four directions' copies dominate: peak RSS
    growth measured at 256x256 was 970 / 3391 / 9866 bytes per pixel for serpent-b / -l / -h, and
    ``100 * 4 * D / P**2 + 256`` gives 1056 / 3456 / 13056.  With the numba path's in-place scan
    (``in_place_scan``; no unrolled copies, no delta tensor) it was 304 / 956 / 3766 (1024x1024,
    512x512 for serpent-h), and ``120 * D / P**2 + 128`` gives 368 / 1088 / 3968.  Both err on the
    safe side.  Other models get a generic figure.
    """
    config = getattr(model, "config", None)
    patch = getattr(config, "patch_size", None)
    embed = getattr(config, "embed_dim", None)
    if patch and embed:
        if in_place_scan:
            return 120.0 * embed / patch**2 + 128.0
        return 100.0 * 4 * embed / patch**2 + 256.0
    return 4096.0


def run_tiled(
    fn: Forward, image: Tensor, tile: int | None, overlap: int, *, bytes_per_pixel: float
) -> tuple[Tensor, int]:
    """Run ``fn`` over ``image`` with a fixed tile (0 = whole image) or ``None`` for auto.

    Auto starts from the memory estimate (whole image when it fits) and halves the tile after
    each out-of-memory error down to :data:`MIN_TILE`.  Returns the output and the tile used
    (0 when the image went through in one piece).
    """
    _, _, height, width = image.shape
    if tile is not None:
        return tiled_forward(fn, image, tile, overlap), (0 if tile >= max(height, width) else tile)
    size = fit_tile(height, width, auto_tile_size(image.device, bytes_per_pixel), overlap)
    while True:
        try:
            return tiled_forward(fn, image, size, overlap), size
        except Exception as exc:
            if not is_oom(exc):
                raise
            if image.device.type == "cuda":
                torch.cuda.empty_cache()
            current = size or max(height, width)
            if current <= MIN_TILE:
                raise SerpentError(
                    f"out of memory even with {MIN_TILE}px tiles; try --device cpu or a smaller image"
                ) from None
            size = max(MIN_TILE, current // 2 // TILE_MULTIPLE * TILE_MULTIPLE)
