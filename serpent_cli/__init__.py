"""serpent: image restoration with the Serpent network (multi-scale selective state-space models).

The public names are resolved lazily (PEP 562): ``import serpent_cli`` and ``serpent --help`` must
not pay for importing torch; ``from serpent_cli import create_model`` still works as before.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# Transparent huge pages for torch's large CPU tensors (2 MB and up; Linux, where the kernel allows them on
# request).  A forward pass allocates and frees maps of 8-32 MB per layer; with 4 KB pages each is faulted in
# page by page every time: 10-17% of a serpent-l forward at 512x512 on 2 cores, 4-7% of U-Net(32)'s, and
# 8% of a deblur, with the same peak memory.  torch reads this once, at its first allocation, so it is set
# before torch is imported; a value the user set is kept (0 turns it off).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

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
