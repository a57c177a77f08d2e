"""Restore one :class:`~serpent_cli.io.imageio.Picture` with a network, keeping what must not change.

- Alpha never goes through the network: the picture's alpha plane is carried over as is.
- Grayscale is replicated to RGB for the network (trained on RGB) and converted back with the
  ITU-R 601 luma weights (what Pillow's ``convert("L")`` uses), so L stays L.
- Reduced precision (bf16 / fp16) runs under autocast; if the output holds NaN or inf the
  image is run again in fp32 and a warning says so (fp16 overflow is the classic cause of
  black output in tools of this kind).
- Large images are tiled through :mod:`serpent_cli.io.tiling` (``tile=None`` sizes tiles from
  free memory and retries smaller after an out-of-memory error).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from serpent_cli.errors import UsageError, WeightsError
from serpent_cli.io.imageio import Picture
from serpent_cli.io.tile_options import DEFAULT_OVERLAP
from serpent_cli.io.tiling import bytes_per_pixel_estimate, run_tiled
from serpent_cli.models.registry import alternative_for_photos, check_variant, default_order, model_info
from serpent_cli.ops import directional_backend

LUMA = (0.299, 0.587, 0.114)
_PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class RestoreReport:
    """What happened to one picture: the tile used (0 = whole image), the precision, warnings."""

    tile: int = 0
    precision: str = "fp32"
    warnings: list[str] = field(default_factory=list)


class Restorer:
    """A model placed on a device with a precision and tiling policy; restores pictures one by one."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        *,
        tile: int | None = None,
        overlap: int = DEFAULT_OVERLAP,
    ) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.dtype = dtype
        self.tile = tile
        self.overlap = overlap
        # Autocast keeps fp32 weights and casts per op, so a reduced-precision run needs about the
        # activation memory of fp32 at worst; the estimate stays the fp32 one (safe side).
        self.bytes_per_pixel = bytes_per_pixel_estimate(model, in_place_scan=directional_backend(device))

    def _forward(self, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            ctx = (
                torch.autocast(device_type=self.device.type, dtype=dtype)
                if dtype != torch.float32
                else contextlib.nullcontext()
            )
            with torch.inference_mode(), ctx:
                return self.model(x).float()

        return run

    def restore_tensor(self, image: torch.Tensor, report: RestoreReport | None = None) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] -> restored, same shape, unclipped, on the CPU."""
        report = report if report is not None else RestoreReport()
        x = image.to(self.device, torch.float32)
        out, used = run_tiled(self._forward(self.dtype), x, self.tile, self.overlap,
                              bytes_per_pixel=self.bytes_per_pixel)
        report.tile, report.precision = used, _PRECISION_NAMES.get(self.dtype, str(self.dtype))
        if self.dtype != torch.float32 and not torch.isfinite(out).all():
            report.warnings.append(
                f"{report.precision} output held NaN/inf values; ran this image again in fp32"
            )
            out, used = run_tiled(self._forward(torch.float32), x, self.tile, self.overlap,
                                  bytes_per_pixel=self.bytes_per_pixel)
            report.tile, report.precision = used, "fp32"
        return out.cpu()

    def restore(self, pic: Picture) -> tuple[Picture, RestoreReport]:
        """The restored picture (alpha, bit depth, ICC and EXIF untouched) and a report."""
        report = RestoreReport()
        x = pic.to_tensor().unsqueeze(0)
        if pic.is_gray:
            x = x.expand(-1, 3, -1, -1)
        y = self.restore_tensor(x, report)[0].clamp(0.0, 1.0)
        if pic.is_gray:
            weights = torch.tensor(LUMA, dtype=y.dtype).view(3, 1, 1)
            y = (y * weights).sum(0, keepdim=True)
        pixels = y.permute(1, 2, 0).numpy().astype(np.float32)
        return pic.with_pixels(pixels), report


def load_restoration_model(model: str | None, weights: Path | None) -> tuple[nn.Module, str, Path]:
    """The network to restore with, its variant name and the weights file it came from.

    ``--weights`` wins (its stored config names the variant; ``--model``, if given, must match);
    else :func:`pretrained_weights`.  A missing file is a :class:`UsageError` (exit 2).
    """
    from serpent_cli.hub.weights import load_model

    check_variant(model)
    if weights is not None:
        if not weights.is_file():
            raise UsageError(f"--weights {weights}: no such file")
        net = load_model(weights, expected_name=model)
        return net, net.config.name, weights  # type: ignore[union-attr]
    name, path = pretrained_weights(model)
    return load_model(path, expected_name=name), name, path


def default_choice_note(name: str) -> str | None:
    """The line to show when ``name`` was picked without --model: what it is for, and the other model here.

    The default reproduces the paper's benchmark and over-sharpens an ordinary photo, so a first run names the
    model made for photos (only when its weights are here to use).
    """
    from serpent_cli.hub.client import resolve_pretrained

    other = alternative_for_photos(name)
    if other is None:
        return None
    try:
        resolve_pretrained(other)
    except WeightsError:
        return None
    return f"model: {name}, made for {model_info(name).trained_for}; for {model_info(other).purpose}: --model {other}"


def pretrained_weights(model: str | None) -> tuple[str, Path]:
    """The registered weights to use for ``--model`` (None: the first of the registry's default order found).

    Bundled weights first (``SERPENT_WEIGHTS_DIR`` replaces the bundled folder: tests, and users with a
    shared weights folder), then the Hub cache that ``serpent download`` fills.  None found is a
    :class:`UsageError` (exit 2) saying how to fix it.
    """
    from serpent_cli.hub.client import resolve_pretrained
    from serpent_cli.hub.local import bundled_weights_dir

    candidates = [model] if model is not None else list(default_order())
    for name in candidates:
        try:
            return name, resolve_pretrained(name)  # bundled weights/ first, then the Hub cache
        except WeightsError:
            continue
    folder = bundled_weights_dir()
    wanted = candidates[0]
    missing = f"{wanted}.safetensors" if model is not None else ", ".join(f"{n}.safetensors" for n in candidates)
    raise UsageError(
        f"no trained weights found ({missing} not in {folder}); pass --weights FILE, "
        f"or run 'serpent download {wanted}'"
    )
