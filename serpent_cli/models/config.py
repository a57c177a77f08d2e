"""Variant configuration: one frozen dataclass fully describes a Serpent network.

The config is what a weights file carries (as JSON in the safetensors header), so a
checkpoint can always rebuild the exact network it was trained with.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

CONFIG_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SerpentConfig:
    """Hyper-parameters of one Serpent variant (DESIGN.md section 2).

    ``state_divisor`` and ``dt_rank_divisor`` encode our reading of the paper's
    "hidden dimension c/6": the SSM state size at a scale with ``c`` channels is
    ``max(1, round(c / state_divisor))`` and the dt rank ``ceil(c / dt_rank_divisor)``.
    The default 3 makes N = E / 6 with E = 2c the SS2D inner width (N = 11, 21, 43, 85),
    the reading with which our FLOP counter reproduces the paper's compute ratios
    (DESIGN.md section 2); ``state_divisor=6`` is VMamba's ``d_state = d_model / 6``.
    Weights files carry their config, so files of either reading load as trained.
    """

    name: str = "serpent-b"
    patch_size: int = 4
    embed_dim: int = 32
    in_chans: int = 3
    num_scales: int = 4
    blocks_per_stage: int = 2
    expand: int = 2
    d_conv: int = 3
    state_divisor: float = 3.0
    dt_rank_divisor: int = 16
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for field in ("patch_size", "embed_dim", "in_chans", "num_scales", "blocks_per_stage", "expand"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.d_conv < 1 or self.d_conv % 2 == 0:
            raise ValueError(f"d_conv must be odd and >= 1, got {self.d_conv}")

    def channels(self, scale: int) -> int:
        """Channel count at ``scale`` (0 = finest): D, 2D, 4D, 8D."""
        return self.embed_dim * 2**scale

    def state_size(self, channels: int) -> int:
        """SSM state size N at a scale with ``channels`` channels."""
        return max(1, round(channels / self.state_divisor))

    def dt_rank(self, channels: int) -> int:
        """Rank R of the delta projection at a scale with ``channels`` channels."""
        return max(1, math.ceil(channels / self.dt_rank_divisor))

    @property
    def pad_multiple(self) -> int:
        """Inputs are reflect-padded to a multiple of this so every merge halves evenly."""
        return self.patch_size * 2 ** (self.num_scales - 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SerpentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> SerpentConfig:
        return cls.from_dict(json.loads(text))

