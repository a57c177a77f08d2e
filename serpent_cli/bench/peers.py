"""The models `serpent bench` compares: the registry's bench line-up (DESIGN.md section 5), built to be measured.

Models are built with random initialisation (no downloads): FLOPs, memory and latency do not depend on
the weights.  Which models exist, and which need spandrel, is the model registry's answer
(:mod:`serpent_cli.models.registry`); this module only adds what measuring needs: building on the
``meta`` device and counting parameters.  torch itself is imported when a model is built, so the
names here check a command line without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from serpent_cli.errors import SerpentError, UsageError
from serpent_cli.models.peers import BENCH_EXTRA, spandrel_available
from serpent_cli.models.registry import build_model as build_registered
from serpent_cli.models.registry import registered

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarkable model: its name, a one-line description, and whether it needs spandrel."""

    name: str
    description: str
    needs_spandrel: bool = False


MODELS: dict[str, ModelSpec] = {
    info.name: ModelSpec(info.name, info.description, info.needs_spandrel) for info in registered() if info.in_bench
}
"""The bench line-up, in the registry's order: Serpent variants, U-Nets, then the spandrel peers."""


def default_models() -> list[str]:
    """Every known model whose dependencies import here."""
    have_spandrel = spandrel_available()
    return [name for name, spec in MODELS.items() if have_spandrel or not spec.needs_spandrel]


def choose_models(requested: list[str]) -> tuple[list[str], bool]:
    """The models to measure, and whether the default line-up had to leave spandrel's peers out.

    Models asked for are kept as given (unknown names are :func:`~serpent_cli.bench.runner.validate_options`'s
    to refuse); asking for one that needs spandrel when it does not import is a usage error.
    """
    if requested:
        missing = [m for m in requested if m in MODELS and MODELS[m].needs_spandrel]
        if missing and not spandrel_available():
            raise UsageError(f"{', '.join(missing)} need the spandrel package: {BENCH_EXTRA}")
        return requested, False
    chosen = default_models()
    return chosen, len(chosen) < len(MODELS)


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
    import torch

    if MODELS[name].needs_spandrel:
        # SwinIR's constructor calls .item(), which meta tensors refuse: build small on the CPU, then move.
        model = build_registered(name)
        if meta:
            model = model.to("meta")
            _meta_attention_masks(model)
        return model
    if meta:
        with torch.device("meta"):
            return build_registered(name)
    return build_registered(name)


def count_params(model: nn.Module) -> int:
    """Trainable parameter count (works on meta tensors)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "BENCH_EXTRA", "MODELS", "ModelSpec", "build_model", "choose_models", "count_params", "default_models",
    "spandrel_available",
]
