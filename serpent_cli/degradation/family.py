"""The blind degradation family (DESIGN.md section 4): what real photos go through, randomised.

The benchmark (:mod:`serpent_cli.degradation.benchmark`) is one fixed Gaussian blur plus one noise level; a real
photo is softly focused, shaken, defocused, sometimes sharp, more or less noisy, often JPEG-compressed.
A model trained on this family learns to undo each amount of each kind, and to leave sharp photos
alone.  One draw, in this order (every number comes from the caller's generator):

=====================  ===========  ==========================================================
blur kind              probability  parameters
=====================  ===========  ==========================================================
none                   0.12         (a sharp photo must come back unharmed)
isotropic Gaussian     0.22         sigma uniform in [0.2, 4] px
anisotropic Gaussian   0.22         sigma_x, sigma_y uniform in [0.2, 4] px, angle uniform [0, pi)
motion                 0.24         trail length uniform in [3, 21] px, random-walk trajectory
defocus disk           0.20         radius uniform in [1, 6] px, anti-aliased edge
=====================  ===========  ==========================================================

* Noise: none with probability 0.2, else additive Gaussian with sigma uniform in [0, 0.05].
* JPEG: with probability 0.3, quality uniform in {50, ..., 95}: the image is clipped to [0, 1],
  rounded to 8 bits, encoded and decoded by Pillow in memory (4:2:0 chroma, Pillow's default).
  Without JPEG the output is not clipped, like the benchmark (the network sees the true
  degradation); with it, it is the decoded 8-bit image.
* Motion: a trajectory of unit steps whose heading does a random walk (turn rate per trail drawn in
  [0, 0.35] rad per step), scaled to the drawn arc length, centred on its mean (so the blur does
  not shift the photo) and splatted bilinearly into the kernel; every kernel sums to 1.
* All kernels live in a 25 x 25 support (radius 12: 3 sigma of the widest Gaussian, the longest trail
  and the largest disk all fit), applied per channel with reflect padding like the benchmark.

Why the probabilities: the blur kinds get roughly equal shares, motion and defocus slightly more
than either Gaussian (they are the harder, non-separable ones), and about one sample in eight is
sharp so "do no harm" is learned.  The mixture covers the benchmark (sigma 3, noise 0.05) too.

Every draw is a pure function of the generator's seed; callers seed it with
:func:`serpent_cli.degradation.benchmark.stable_seed` of (seed, image key), so training, resume, DDP and
evaluation all see the same samples.  :func:`degradation_by_name` maps the CLI's names to objects.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from serpent_cli.degradation.benchmark import (
    BENCHMARK,
    Degradation,
    RegionDegradation,
    check_degradation_name,
    seeded_generator,
)
from serpent_cli.models.padding import reflect_pad

KERNEL_RADIUS = 12
KERNEL_SIZE = 2 * KERNEL_RADIUS + 1
BLUR_KINDS = ("none", "gaussian", "anisotropic", "motion", "defocus")
BLUR_PROBS = (0.12, 0.22, 0.22, 0.24, 0.20)
SIGMA_RANGE = (0.2, 4.0)
MOTION_LENGTH_RANGE = (3.0, 21.0)
MOTION_STEPS = 64
MOTION_MAX_TURN = 0.35
DEFOCUS_RADIUS_RANGE = (1.0, 6.0)
NOISE_NONE_PROB = 0.2
NOISE_SIGMA_MAX = 0.05
JPEG_PROB = 0.3
JPEG_QUALITY_RANGE = (50, 95)


@dataclass(frozen=True, eq=False)
class BlindDraw:
    """One draw of the family: the blur kernel and what made it, the noise level, the JPEG quality."""

    kind: str
    params: dict[str, float]
    kernel: torch.Tensor | None  # (KERNEL_SIZE, KERNEL_SIZE), float64, sums to 1; None: no blur
    separable_sigma: float | None  # isotropic Gaussian: blur with the two 1-D passes instead
    noise_sigma: float
    jpeg_quality: int | None

    def describe(self) -> dict[str, object]:
        """Plain numbers for logs and JSON (kind, sigma / angle / length / radius, noise, JPEG quality)."""
        return {"blur": self.kind, **{k: round(v, 4) for k, v in self.params.items()},
                "noise_sigma": round(self.noise_sigma, 5), "jpeg_quality": self.jpeg_quality}


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g, dtype=torch.float64))


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(KERNEL_SIZE, dtype=torch.float64) - KERNEL_RADIUS
    return torch.meshgrid(r, r, indexing="ij")  # (y, x)


def anisotropic_gaussian_kernel(sigma_x: float, sigma_y: float, angle: float) -> torch.Tensor:
    """2-D Gaussian with standard deviations along axes rotated by ``angle`` (radians), normalised."""
    y, x = _grid()
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    k = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return k / k.sum()


def defocus_kernel(radius: float) -> torch.Tensor:
    """A disk whose edge pixels are weighted by how far inside the circle they sit (anti-aliased)."""
    y, x = _grid()
    k = (radius + 0.5 - torch.sqrt(x**2 + y**2)).clamp(0, 1)
    return k / k.sum()


def motion_kernel(length: float, angle: float, turns: torch.Tensor) -> torch.Tensor:
    """A camera-shake trail: heading ``angle`` plus cumulative ``turns``, arc length ``length``, centred."""
    heading = angle + torch.cumsum(turns.double(), 0)
    steps = torch.stack([torch.sin(heading), torch.cos(heading)], 1)  # (y, x) unit steps
    pts = torch.cat([torch.zeros(1, 2, dtype=torch.float64), torch.cumsum(steps, 0)])
    pts = pts * (length / len(turns))
    pts = pts - pts.mean(0)  # no shift of the image; |pt| <= length / 2 <= 10.5 < radius
    k = torch.zeros(KERNEL_SIZE, KERNEL_SIZE, dtype=torch.float64)
    p = pts + KERNEL_RADIUS
    base = p.floor()
    fy, fx = (p - base).unbind(1)
    i0, j0 = base.long().unbind(1)
    for di, dj, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        k.index_put_(((i0 + di).clamp(0, KERNEL_SIZE - 1), (j0 + dj).clamp(0, KERNEL_SIZE - 1)), w, accumulate=True)
    return k / k.sum()


@dataclass(frozen=True)
class BlindFamily:
    """The randomised family; stateless, so it pickles into data-loader workers."""

    name = "blind"

    @property
    def margin(self) -> int:
        return KERNEL_RADIUS

    def describe(self) -> dict[str, object]:
        """The fixed mixture (not one draw: see :meth:`BlindDraw.describe`), for JSON records."""
        return {"name": self.name, "blur": dict(zip(BLUR_KINDS, BLUR_PROBS)), "sigma": list(SIGMA_RANGE),
                "motion_length": list(MOTION_LENGTH_RANGE), "defocus_radius": list(DEFOCUS_RADIUS_RANGE),
                "noise_none": NOISE_NONE_PROB, "noise_sigma_max": NOISE_SIGMA_MAX, "jpeg": JPEG_PROB,
                "jpeg_quality": list(JPEG_QUALITY_RANGE)}

    def draw(self, g: torch.Generator) -> BlindDraw:
        """Sample one degradation; consumes a fixed pattern of numbers per kind from ``g``."""
        u = float(torch.rand((), generator=g, dtype=torch.float64))
        kind = BLUR_KINDS[-1]
        acc = 0.0
        for name, prob in zip(BLUR_KINDS, BLUR_PROBS):
            acc += prob
            if u < acc:
                kind = name
                break
        params: dict[str, float] = {}
        kernel: torch.Tensor | None = None
        separable: float | None = None
        if kind == "gaussian":
            separable = params["sigma"] = _uniform(g, *SIGMA_RANGE)
        elif kind == "anisotropic":
            params = {"sigma_x": _uniform(g, *SIGMA_RANGE), "sigma_y": _uniform(g, *SIGMA_RANGE),
                      "angle": _uniform(g, 0.0, math.pi)}
            kernel = anisotropic_gaussian_kernel(params["sigma_x"], params["sigma_y"], params["angle"])
        elif kind == "motion":
            params = {"length": _uniform(g, *MOTION_LENGTH_RANGE), "angle": _uniform(g, 0.0, 2 * math.pi),
                      "turn": _uniform(g, 0.0, MOTION_MAX_TURN)}
            turns = torch.randn(MOTION_STEPS, generator=g, dtype=torch.float64) * params["turn"]
            kernel = motion_kernel(params["length"], params["angle"], turns)
        elif kind == "defocus":
            params["radius"] = _uniform(g, *DEFOCUS_RADIUS_RANGE)
            kernel = defocus_kernel(params["radius"])
        noise = 0.0 if float(torch.rand((), generator=g)) < NOISE_NONE_PROB else _uniform(g, 0.0, NOISE_SIGMA_MAX)
        jpeg = None
        if float(torch.rand((), generator=g)) < JPEG_PROB:
            lo, hi = JPEG_QUALITY_RANGE
            jpeg = int(torch.randint(lo, hi + 1, (), generator=g))
        return BlindDraw(kind, params, kernel, separable, noise, jpeg)

    def blur(self, images: torch.Tensor, draw: BlindDraw) -> torch.Tensor:
        """Per-channel blur of (C, H, W) with reflect padding (the same border rule as the benchmark)."""
        if draw.separable_sigma is not None:  # the benchmark's own separable blur, at this sigma
            return Degradation(KERNEL_SIZE, draw.separable_sigma, 0.0).blur(images)
        if draw.kernel is None:
            return images
        c = images.shape[0]
        x = reflect_pad(images.unsqueeze(0), *(KERNEL_RADIUS,) * 4)
        k = draw.kernel.to(dtype=x.dtype, device=x.device)
        return F.conv2d(x, k.view(1, 1, KERNEL_SIZE, KERNEL_SIZE).expand(c, 1, -1, -1), groups=c).squeeze(0)

    def finish(self, blurred: torch.Tensor, draw: BlindDraw, g: torch.Generator) -> torch.Tensor:
        """Noise (drawn from ``g`` even at sigma 0, so the stream does not depend on it), then JPEG."""
        noise = torch.randn(blurred.shape, generator=g, dtype=torch.float32)
        out = blurred + (draw.noise_sigma * noise).to(blurred.device, blurred.dtype)
        return out if draw.jpeg_quality is None else jpeg_roundtrip(out, draw.jpeg_quality)

    def degrade_region(self, region: torch.Tensor, top: int, left: int, size: int,
                       generator: torch.Generator) -> torch.Tensor:
        """Draw, blur ``region`` (which carries :attr:`margin` of context), crop, add noise, JPEG."""
        draw = self.draw(generator)
        blurred = self.blur(region, draw)[:, top : top + size, left : left + size]
        return self.finish(blurred, draw, generator)

    def degrade(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, BlindDraw]:
        """A whole (C, H, W) image and the draw that degraded it."""
        draw = self.draw(generator)
        return self.finish(self.blur(images, draw), draw, generator), draw

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dim() != 3:
            raise ValueError(f"the blind family degrades one (C, H, W) image at a time, got {tuple(images.shape)}")
        return self.degrade(images, generator if generator is not None else torch.Generator())[0]


BLIND = BlindFamily()


def jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode (C, H, W) with C = 1 or 3 as 8-bit JPEG in memory at ``quality`` and decode it back."""
    c = image.shape[0]
    if c not in (1, 3):
        raise ValueError(f"JPEG needs 1 or 3 channels, got {c}")
    arr = (image.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[:, :, 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as decoded:
        out = np.asarray(decoded.convert("L" if c == 1 else "RGB"), dtype=np.float32) / 255.0
    t = torch.from_numpy(out.copy())
    t = t.unsqueeze(0) if c == 1 else t.permute(2, 0, 1)
    return t.contiguous().to(image.device, image.dtype)


def describe_draw(key: str, seed: int = 0) -> dict[str, object]:
    """What the family does to the image with this key (as `serpent eval` / `serpent degrade` seed it)."""
    return BLIND.draw(seeded_generator(key, seed)).describe()


def degradation_by_name(name: str) -> RegionDegradation:
    """``benchmark`` (the fixed paper degradation) or ``blind`` (this family); anything else: a usage error."""
    if name == "benchmark":
        return BENCHMARK
    check_degradation_name(name)
    return BLIND


def degrade_keyed(degradation: RegionDegradation, image: torch.Tensor, key: str,
                  seed: int = 0) -> tuple[torch.Tensor, dict[str, object]]:
    """Degrade a whole (C, H, W) image seeded by (key, seed), as `serpent degrade` and `serpent eval` do.

    Returns the degraded image and what was done to it (the blind family's draw; nothing extra for
    the benchmark, whose parameters are fixed).
    """
    g = seeded_generator(key, seed)
    if isinstance(degradation, BlindFamily):
        out, draw = degradation.degrade(image, g)
        return out, draw.describe()
    return degradation(image, generator=g), {}
