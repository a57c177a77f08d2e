"""The benchmark degradation (DESIGN.md section 4): Gaussian blur + additive Gaussian noise.

Used by `serpent degrade`, training (on the fly) and evaluation (seeded per file), so all
three see exactly the same corruption.  Evaluation noise is drawn from a generator seeded
by a stable hash of the image's relative path plus a global seed: the same numbers on
every machine and every run, independent of file order or process count.

torch is imported where pixels are touched, not at import: checking the parameters of
`serpent degrade` (a usage error) does not need it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

EVAL_SEED = 0
"""The global seed of the benchmark noise (`serpent eval`, `serpent degrade`)."""

DEGRADATION_NAMES = ("benchmark", "blind")
"""The benchmark (the paper's, fixed) and the blind family (:mod:`serpent_cli.degradation.family`)."""


def check_degradation_name(name: str) -> None:
    """A usage error for an unknown degradation name, answered before torch is imported."""
    if name not in DEGRADATION_NAMES:
        from serpent_cli.errors import UsageError

        raise UsageError(f"unknown degradation {name!r}; choose one of {', '.join(DEGRADATION_NAMES)}")


class RegionDegradation(Protocol):
    """What training and evaluation need from a degradation (the benchmark or the blind family).

    ``margin``: pixels of real context the blur needs around a crop.  ``degrade_region``: the degraded
    crop of a region that carries that margin, randomness from the caller's generator.  Calling it
    degrades a whole image (reflect-padded at the borders) with randomness from ``generator``.
    ``describe``: its fixed parameters, for logs and JSON.
    """

    name: str

    @property
    def margin(self) -> int: ...

    def degrade_region(self, region: torch.Tensor, top: int, left: int, size: int,
                       generator: torch.Generator) -> torch.Tensor: ...

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def describe(self) -> dict[str, object]: ...


@dataclass(frozen=True)
class Degradation:
    """Blur kernel size / sigma and noise sigma on the [0, 1] scale."""

    kernel_size: int = 61
    blur_sigma: float = 3.0
    noise_sigma: float = 0.05

    def __post_init__(self) -> None:
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel size must be a positive odd number, got {self.kernel_size}")
        if self.blur_sigma < 0 or self.noise_sigma < 0:
            raise ValueError("blur and noise sigmas must be >= 0")

    def blur(self, images: torch.Tensor) -> torch.Tensor:
        """Per-channel separable Gaussian blur with reflect padding; (B, C, H, W) or (C, H, W)."""
        import torch.nn.functional as F

        from serpent_cli.models.padding import reflect_pad

        if self.blur_sigma == 0 or self.kernel_size == 1:
            return images
        squeeze = images.dim() == 3
        x = images.unsqueeze(0) if squeeze else images
        k = gaussian_kernel_1d(self.kernel_size, self.blur_sigma, dtype=x.dtype, device=x.device)
        c = x.shape[1]
        x = reflect_pad(x, *(self.kernel_size // 2,) * 4)
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        return x.squeeze(0) if squeeze else x

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Blur then add noise. Not clipped: the network sees the true degradation."""
        import torch

        blurred = self.blur(images)
        if self.noise_sigma == 0:
            return blurred
        noise = torch.randn(blurred.shape, generator=generator, dtype=torch.float32, device="cpu")
        return blurred + (self.noise_sigma * noise).to(blurred.device, blurred.dtype)

    name = "benchmark"

    @property
    def margin(self) -> int:
        """Pixels of context the blur reads on each side of a crop."""
        return self.kernel_size // 2 if self.blur_sigma > 0 else 0

    def degrade_region(self, region: torch.Tensor, top: int, left: int, size: int,
                       generator: torch.Generator) -> torch.Tensor:
        """The ``size`` x ``size`` crop at (top, left) of ``region`` (C, H, W), blurred with its surroundings.

        The noise is drawn from ``generator`` after whatever the caller drew before (crop, flips):
        the exact sequence training has always used, so its samples stay bit-identical.
        """
        import torch

        blurred = self.blur(region)[:, top : top + size, left : left + size]
        noise = torch.randn(blurred.shape, generator=generator) * self.noise_sigma
        return blurred + noise

    def describe(self) -> dict[str, object]:
        """The fixed parameters, for logs and JSON."""
        return {"name": self.name, "blur_kernel": self.kernel_size, "blur_sigma": self.blur_sigma,
                "noise_sigma": self.noise_sigma}


BENCHMARK = Degradation()


def gaussian_kernel_1d(size: int, sigma: float, *, dtype: torch.dtype | None = None,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised 1-D Gaussian (float32 unless ``dtype``); the 2-D kernel is its outer product (separable)."""
    import torch

    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).to(dtype=dtype or torch.float32, device=device)


def stable_seed(key: str, seed: int = 0) -> int:
    """A 63-bit seed from a string (e.g. a relative path) and a global seed, equal on every machine."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seeded_generator(key: str, seed: int = 0) -> torch.Generator:
    """CPU generator for the noise of one file; see :func:`stable_seed`."""
    import torch

    return torch.Generator().manual_seed(stable_seed(key, seed))
