"""Model registry: names -> constructors (timm-style), so every command builds models one way.

Names are known without importing torch (``list_models`` answers a usage error in milliseconds);
the network classes are imported when a model is first built, or when ``Serpent`` / ``UNet`` are
looked up here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serpent_cli.config import VARIANTS, SerpentConfig
from serpent_cli.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

    from serpent_cli.models.serpent import Serpent
    from serpent_cli.models.unet import UNet

ModelFactory = Callable[..., "nn.Module"]
_FACTORIES: dict[str, ModelFactory] = {}

DEFAULT_ORDER = ("serpent-l", "serpent-b", "serpent-h")
"""Without --model, `serpent deblur` and `serpent eval` use the first of these whose trained weights are
here (bundled, or in the Hub cache): one default for both commands.

serpent-l first: in the paper it is within 0.1 dB of serpent-h at a quarter of its cost, and
clearly better than serpent-b; on a CPU it is still practical for photos.
"""


def check_variant(name: str | None) -> None:
    """A ``--model`` naming no Serpent variant is a usage error (checked before anything is loaded)."""
    if name is not None and name not in VARIANTS:
        raise UsageError(f"unknown --model {name!r}; choose one of {', '.join(VARIANTS)}")


def register_model(name: str, factory: ModelFactory) -> None:
    """Make ``name`` buildable with :func:`create_model` (peers such as U-Nets use this too)."""
    _FACTORIES[name] = factory


def list_models() -> list[str]:
    return sorted(_FACTORIES)


def _serpent_factory(base: SerpentConfig) -> ModelFactory:
    def build(**overrides: Any) -> Serpent:
        from serpent_cli.models.serpent import Serpent

        return Serpent(dataclasses.replace(base, **overrides))

    return build


def _unet_factory(width: int) -> ModelFactory:
    def build(**overrides: Any) -> UNet:
        from serpent_cli.models.unet import UNet

        return UNet(channels=width, **overrides)

    return build


for _name, _config in VARIANTS.items():
    register_model(_name, _serpent_factory(_config))
for _width in (32, 64, 128):
    register_model(f"unet-{_width}", _unet_factory(_width))


def __getattr__(name: str) -> Any:
    """``Serpent`` and ``UNet`` on first use, so importing this registry does not import torch."""
    if name == "Serpent":
        from serpent_cli.models.serpent import Serpent

        return Serpent
    if name == "UNet":
        from serpent_cli.models.unet import UNet

        return UNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_model(
    name: str,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a model by name.

    ``pretrained=True`` loads the registered weights of ``name`` (bundled in ``weights/``
    or from the Hub cache); ``weights=`` loads a given safetensors file, whose stored
    config must describe the same architecture.  ``overrides`` change config fields
    (e.g. ``state_divisor=4``) of a freshly built model.
    """
    if name not in _FACTORIES:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if (pretrained or weights is not None) and overrides:
        raise ValueError("config overrides cannot be combined with loading weights")
    if weights is not None or pretrained:
        from serpent_cli.weights import load_model, resolve_pretrained

        path = Path(weights) if weights is not None else resolve_pretrained(name)
        return load_model(path, expected_name=name)
    return _FACTORIES[name](**overrides)


__all__ = ["Serpent", "SerpentConfig", "UNet", "create_model", "list_models", "register_model"]
