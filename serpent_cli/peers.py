"""The models `serpent bench` compares: Serpent variants and the peers of DESIGN.md section 5.

Peers are built with random initialisation (no downloads): FLOPs, memory and latency do
not depend on the weights.  SwinIR and NAFNet come from spandrel's architecture classes,
so they are exactly the networks people run through spandrel-based tools; spandrel is
imported lazily, and only when one of those peers is asked for.  spandrel (with torchvision) and
matplotlib are the optional ``bench`` extra: a user who only deblurs does not need them.  torch
itself is imported when a model is built, so the names here check a command line without it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from serpent_cli.errors import SerpentError

if TYPE_CHECKING:
    import torch
    from torch import nn

BENCH_EXTRA = "pip install 'serpent-cli[bench]'"
"""How to get the SwinIR / NAFNet peers and --plot (spandrel, torchvision, matplotlib)."""


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarkable model: its name, a one-line description, and whether it needs spandrel."""

    name: str
    description: str
    needs_spandrel: bool = False


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("serpent-b", "Serpent, patch 4"),
        ModelSpec("serpent-l", "Serpent, patch 2"),
        ModelSpec("serpent-h", "Serpent, patch 1"),
        ModelSpec("unet-32", "U-Net, 32 channels"),
        ModelSpec("unet-64", "U-Net, 64 channels"),
        ModelSpec("unet-128", "U-Net, 128 channels"),
        ModelSpec("swinir-b", "SwinIR, embed 96, depths 6x6, heads 6, window 8, mlp 2", needs_spandrel=True),
        ModelSpec("swinir-l", "SwinIR, embed 180, depths 6x6, heads 6, window 8, mlp 2", needs_spandrel=True),
        ModelSpec("nafnet-32", "NAFNet, width 32, GoPro layout", needs_spandrel=True),
    )
}


def spandrel_available() -> bool:
    """Whether the spandrel peers can be built here (spandrel and its torchvision import)."""
    try:
        import spandrel  # noqa: F401
    except Exception:  # ImportError, or torchvision built for another torch
        return False
    return True


def default_models() -> list[str]:
    """Every known model whose dependencies import here."""
    have_spandrel = spandrel_available()
    return [name for name, spec in MODELS.items() if have_spandrel or not spec.needs_spandrel]


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


_SPANDREL_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "swinir-b": lambda: _swinir(96),
    "swinir-l": lambda: _swinir(180),
    "nafnet-32": _nafnet32,
}


def _meta_attention_masks(model: nn.Module) -> None:
    """Shape-only Swin attention masks for meta runs.

    SwinIR builds the shifted-window mask for any size other than its ``img_size`` on the CPU,
    in every block, on every call (16 M elements per block at 512x512).  The mask is added to
    the attention logits, which the flop counter does not count, so a meta tensor of the right
    shape gives the same count without seconds of CPU work per block.
    """
    import torch

    for module in model.modules():
        if hasattr(module, "calculate_mask") and hasattr(module, "window_size"):
            ws = module.window_size

            def meta_mask(x_size: tuple[int, int], ws: int = ws) -> torch.Tensor:
                return torch.empty((x_size[0] // ws) * (x_size[1] // ws), ws * ws, ws * ws, device="meta")

            module.calculate_mask = meta_mask  # type: ignore[method-assign]


def build_model(name: str, *, meta: bool = False) -> nn.Module:
    """A freshly initialised model by bench name, on the CPU or (``meta=True``) allocating nothing."""
    if name not in MODELS:
        raise SerpentError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if MODELS[name].needs_spandrel:
        if not spandrel_available():
            raise SerpentError(f"model {name} needs the spandrel package: {BENCH_EXTRA}")
        # SwinIR's constructor calls .item(), which meta tensors refuse: build small on the CPU, then move.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.meshgrid indexing chatter from third-party code
            model = _SPANDREL_BUILDERS[name]()
        if meta:
            model = model.to("meta")
            _meta_attention_masks(model)
        return model
    import torch

    from serpent_cli.models import create_model

    if meta:
        with torch.device("meta"):
            return create_model(name)
    return create_model(name)


def count_params(model: nn.Module) -> int:
    """Trainable parameter count (works on meta tensors)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["BENCH_EXTRA", "MODELS", "ModelSpec", "build_model", "count_params", "default_models", "spandrel_available"]
