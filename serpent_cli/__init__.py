"""serpent: image restoration with the Serpent network (multi-scale selective state-space models).

The public names are resolved lazily (PEP 562): ``import serpent_cli`` and ``serpent --help`` must
not pay for importing torch; ``from serpent_cli import create_model`` still works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "VARIANTS": "serpent_cli.models.registry",
    "SerpentConfig": "serpent_cli.models.config",
    "create_model": "serpent_cli.factory",
    "list_models": "serpent_cli.models.registry",
}

if TYPE_CHECKING:
    from serpent_cli.factory import create_model
    from serpent_cli.models.config import SerpentConfig
    from serpent_cli.models.registry import VARIANTS, list_models


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'serpent_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["VARIANTS", "SerpentConfig", "__version__", "create_model", "list_models"]
