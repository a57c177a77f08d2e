"""serpent: image restoration with the Serpent network (multi-scale selective state-space models)."""

from __future__ import annotations

from serpent_cli.config import VARIANTS, SerpentConfig
from serpent_cli.models import create_model, list_models

__version__ = "0.1.0"

__all__ = ["VARIANTS", "SerpentConfig", "__version__", "create_model", "list_models"]
