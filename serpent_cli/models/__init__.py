"""Networks: the Serpent variants, the U-Net baselines, the spandrel peers, and the one registry of their names.

Names are known without importing torch (:mod:`serpent_cli.models.registry`); the network classes are
imported when a model is first built, or when ``Serpent`` / ``UNet`` are looked up here.  Loading
trained weights is one layer up (:func:`serpent_cli.create_model`), so this package never imports the Hub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serpent_cli.models.config import SerpentConfig
from serpent_cli.models.registry import (
    VARIANTS,
    ModelInfo,
    build_model,
    check_variant,
    default_order,
    list_models,
    model_info,
    register_model,
    registered,
    shipped_models,
    trainable_models,
    variants,
)

if TYPE_CHECKING:
    from serpent_cli.models.serpent import Serpent
    from serpent_cli.models.unet import UNet


def __getattr__(name: str) -> Any:
    """``Serpent`` and ``UNet`` on first use, so importing this package does not import torch."""
    if name == "Serpent":
        from serpent_cli.models.serpent import Serpent

        return Serpent
    if name == "UNet":
        from serpent_cli.models.unet import UNet

        return UNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "VARIANTS",
    "ModelInfo",
    "Serpent",
    "SerpentConfig",
    "UNet",
    "build_model",
    "check_variant",
    "default_order",
    "list_models",
    "model_info",
    "register_model",
    "registered",
    "shipped_models",
    "trainable_models",
    "variants",
]
