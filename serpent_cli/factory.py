"""``create_model``: a model by registered name, freshly built or with trained weights.

It sits above both :mod:`serpent_cli.models` (which builds) and :mod:`serpent_cli.hub` (which finds and
loads weights files), so neither of those imports the other upwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from serpent_cli.models.registry import build_model, model_info

if TYPE_CHECKING:
    from torch import nn


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
    model_info(name)  # unknown names: KeyError listing the known ones
    if (pretrained or weights is not None) and overrides:
        raise ValueError("config overrides cannot be combined with loading weights")
    if weights is not None or pretrained:
        from serpent_cli.hub.client import resolve_pretrained
        from serpent_cli.hub.weights import load_model

        path = Path(weights) if weights is not None else resolve_pretrained(name)
        return load_model(path, expected_name=name)
    return build_model(name, **overrides)
