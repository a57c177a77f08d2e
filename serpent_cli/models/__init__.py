"""Model registry: names -> constructors (timm-style), so every command builds models one way."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from serpent_cli.config import VARIANTS, SerpentConfig
from serpent_cli.models.serpent import Serpent
from serpent_cli.models.unet import UNet

ModelFactory = Callable[..., nn.Module]
_FACTORIES: dict[str, ModelFactory] = {}


def register_model(name: str, factory: ModelFactory) -> None:
    """Make ``name`` buildable with :func:`create_model` (peers such as U-Nets use this too)."""
    _FACTORIES[name] = factory


def list_models() -> list[str]:
    return sorted(_FACTORIES)


def _serpent_factory(base: SerpentConfig) -> ModelFactory:
    def build(**overrides: Any) -> Serpent:
        return Serpent(dataclasses.replace(base, **overrides))

    return build


for _name, _config in VARIANTS.items():
    register_model(_name, _serpent_factory(_config))
for _width in (32, 64, 128):
    register_model(f"unet-{_width}", lambda _w=_width, **kw: UNet(channels=_w, **kw))


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
