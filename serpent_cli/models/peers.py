"""Third-party peer networks for `serpent bench` (SwinIR, NAFNet), built from spandrel's architecture classes.

They are exactly the networks people run through spandrel-based tools; spandrel (with torchvision) is
the optional ``bench`` extra and is imported only when one of these is built.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from serpent_cli.errors import SerpentError

if TYPE_CHECKING:
    from torch import nn

BENCH_EXTRA = "pip install 'serpent-cli[bench]'"
"""How to get the SwinIR / NAFNet peers and --plot (spandrel, torchvision, matplotlib)."""


def spandrel_available() -> bool:
    """Whether the spandrel peers can be built here (spandrel and its torchvision import)."""
    try:
        import spandrel  # noqa: F401
    except Exception:  # ImportError, or torchvision built for another torch
        return False
    return True


def _swinir(embed_dim: int) -> nn.Module:
    from spandrel.architectures.SwinIR import SwinIR

    # img_size only sets the precomputed attention mask; other sizes compute theirs on the fly.
    return SwinIR(
        img_size=64,
        patch_size=1,
        in_chans=3,
        embed_dim=embed_dim,
        depths=[6] * 6,
        num_heads=[6] * 6,
        window_size=8,
        mlp_ratio=2.0,
        upscale=1,
        img_range=1.0,
        upsampler="",
        resi_connection="1conv",
        drop_path_rate=0.0,
    )


def _nafnet32() -> nn.Module:
    from spandrel.architectures.NAFNet import NAFNet

    # NAFNet-GoPro-width32 (Chen et al. 2022): 17.1 M parameters, 16 GMACs at 256x256.
    return NAFNet(img_channel=3, width=32, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28], dec_blk_nums=[1, 1, 1, 1])


_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "swinir-b": lambda: _swinir(96),
    "swinir-l": lambda: _swinir(180),
    "nafnet-32": _nafnet32,
}


def build_spandrel(name: str, **overrides: Any) -> nn.Module:
    """A freshly initialised spandrel peer on the CPU (its constructor calls ``.item()``, which meta refuses)."""
    if overrides:
        raise ValueError(f"{name} takes no architecture overrides")
    if not spandrel_available():
        raise SerpentError(f"model {name} needs the spandrel package: {BENCH_EXTRA}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.meshgrid indexing chatter from third-party code
        return _BUILDERS[name]()
