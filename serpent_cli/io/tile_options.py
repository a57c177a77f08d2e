"""The tiling facts the command line needs before torch loads: the default overlap and how ``--tile`` reads.

The commands' option defaults and the library's keyword defaults (:class:`serpent_cli.restore.Restorer`,
`serpent bench`'s tile runs) take the overlap from here, so they are one number; this module stays
free of torch so ``serpent deblur --help`` and a usage error stay fast.
"""

from __future__ import annotations

from serpent_cli.errors import UsageError

DEFAULT_OVERLAP = 32
"""Pixels shared by neighbouring tiles.  Measured with the bundled weights (tests/test_tiling.py): the blend
hides every seam, and PSNR against the clean photo is the same as untiled within 0.05 dB; the remaining
difference from an untiled run is the network seeing less context, which more overlap does not fix."""

MIN_TILE_OPTION = 32
"""The smallest ``--tile`` accepted (smaller tiles are dominated by the network's padding)."""


def parse_tile(text: str) -> int | None:
    """``--tile``: 'auto' -> None (sized from free memory), '0' -> 0 (whole image), 'N' -> N >= 32 pixels."""
    text = text.strip().lower()
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--tile {text!r}: use auto, 0 (whole image) or a size in pixels") from None
    if value < 0 or 0 < value < MIN_TILE_OPTION:
        raise UsageError(f"--tile {value}: use 0 (whole image) or at least {MIN_TILE_OPTION} pixels")
    return value


def check_overlap(overlap: int) -> int:
    """``--tile-overlap`` must not be negative."""
    if overlap < 0:
        raise UsageError("--tile-overlap must be >= 0")
    return overlap
