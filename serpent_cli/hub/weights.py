"""Weights files: safetensors with the variant config as JSON in the header metadata.

Only safetensors is ever read (never pickle), and the header is validated before any
tensor is touched, so a foreign or corrupt file is one clear error, not a half-loaded model.

Registered files (bundled in ``weights/`` or in the Hub cache for a registry entry) must also match the
sha256 the registry pins (:func:`serpent_cli.hub.client.registered_pin`); other files (``--weights`` of a user's own
training) are checked structurally only, since no pin can exist for them.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from serpent_cli.atomic import write_atomic
from serpent_cli.errors import WeightsError, first_line
from serpent_cli.hub.client import registered_pin
from serpent_cli.hub.local import verify_sha256
from serpent_cli.models.config import CONFIG_FORMAT_VERSION, SerpentConfig
from serpent_cli.models.registry import variants

FORMAT_NAME = "serpent-weights"
FORMAT_VERSION = "1"
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_PARAMS_ENV = "SERPENT_MAX_PARAMS"
DEFAULT_MAX_PARAMS = 500_000_000  # 2 GB of fp32; the largest network we ship or compare with (U-Net-128) has 124 M

# Sane ranges for the values a weights header may ask for.  Why: the header is untrusted input, and
# every real variant sits far inside these, so a value outside is a corrupt or hostile file; it is
# refused with one line before anything is built.  The parameter bound below catches combinations.
SERPENT_INT_RANGES = {"patch_size": (1, 16), "embed_dim": (1, 1024), "in_chans": (1, 4), "num_scales": (1, 8),
                      "blocks_per_stage": (1, 64), "expand": (1, 16), "d_conv": (1, 31),
                      "dt_rank_divisor": (1, 4096)}
SERPENT_FLOAT_RANGES = {"state_divisor": (0.01, 4096.0), "dt_min": (1e-9, 10.0), "dt_max": (1e-9, 10.0),
                        "norm_eps": (1e-12, 1.0)}
UNET_INT_RANGES = {"channels": (1, 1024), "depth": (1, 8), "in_chans": (1, 4)}


def read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, after checking it really is one."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise WeightsError(f"{path}: not a safetensors file (too short)")
            (size,) = struct.unpack("<Q", head)
            if size <= 0 or size > MAX_HEADER_BYTES or size + 8 > path.stat().st_size:
                raise WeightsError(f"{path}: not a safetensors file (bad header length); is it a pickle or truncated?")
            header = json.loads(fh.read(size))
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except IsADirectoryError:
        raise WeightsError(f"{path} is a directory, not a weights file") from None
    except (ValueError, RecursionError):  # bad UTF-8, bad JSON, or JSON nested deep enough to exhaust the stack
        raise WeightsError(f"{path}: not a safetensors file (unreadable header)") from None
    meta = (header.get("__metadata__") or {}) if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: not a safetensors file (unreadable header)")
    return {str(k): str(v) for k, v in meta.items()}


def max_params() -> int:
    """The largest network a weights file may describe (``SERPENT_MAX_PARAMS`` overrides 500 M)."""
    try:
        return int(os.environ.get(MAX_PARAMS_ENV, DEFAULT_MAX_PARAMS))
    except ValueError:
        return DEFAULT_MAX_PARAMS


def check_config_values(data: object, ints: dict[str, tuple[int, int]],
                        floats: dict[str, tuple[float, float]] | None = None) -> dict[str, Any]:
    """``data`` (a parsed config) if every known field has a sane type and value, else a ValueError saying which.

    Fields not listed are left to the config class (it rejects unknown names).
    """
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    for name, (low, high) in ints.items():
        value = data.get(name, low)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} = {_clip(value)} is outside {low}..{high}")
    for name, (low, high) in (floats or {}).items():
        value = data.get(name, low)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and low <= value <= high):
            raise ValueError(f"{name} = {_clip(value)} is outside {low:g}..{high:g}")
    if "name" in data and not (isinstance(data["name"], str) and len(data["name"]) <= 200):
        raise ValueError("name must be a string of at most 200 characters")
    return data


def _clip(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def build_bounded(path: Path, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()``, once its parameter count is known to be within :func:`max_params`.

    Why: a header can ask for a network of any size; building it first on the meta device costs no
    memory and gives the exact count from the same code that builds the real one.
    """
    try:
        with torch.device("meta"):
            probe = build()
    except (ValueError, TypeError, ArithmeticError, RuntimeError) as exc:
        raise WeightsError(f"{path}: invalid config in weights metadata ({first_line(exc)})") from None
    count = sum(t.numel() for t in probe.parameters()) + sum(t.numel() for t in probe.buffers())
    limit = max_params()
    if count > limit:
        raise WeightsError(f"{path}: its config describes a network of {count / 1e6:,.0f} M parameters, over the "
                           f"{limit / 1e6:,.0f} M limit; the file is corrupt or not a serpent model "
                           f"(raise {MAX_PARAMS_ENV} if it is genuine)")
    try:
        return build()
    except MemoryError:
        raise WeightsError(f"{path}: not enough memory to build its {count / 1e6:,.1f} M-parameter network") from None


def read_config(path: Path) -> SerpentConfig:
    """The variant config stored in a weights file."""
    meta = read_metadata(path)
    if meta.get("format") != FORMAT_NAME or "config" not in meta:
        raise WeightsError(f"{path}: not a serpent weights file (no serpent config in its metadata)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(
            f"{path}: weights format version {meta.get('format_version')!r} is not supported "
            f"(this serpent reads version {FORMAT_VERSION}); upgrade serpent"
        )
    try:
        data = check_config_values(json.loads(meta["config"]), SERPENT_INT_RANGES, SERPENT_FLOAT_RANGES)
        return SerpentConfig.from_dict(data)
    except (ValueError, TypeError, RecursionError) as exc:
        raise WeightsError(f"{path}: invalid config in weights metadata: {exc}") from None


def save_model(
    model: nn.Module,
    path: Path,
    *,
    dtype: torch.dtype | None = torch.float16,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and config atomically (temporary file + rename)."""
    tensors = {
        k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config_version": str(CONFIG_FORMAT_VERSION),
    }
    meta.update(_arch_metadata(model))
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    path = Path(path)
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return path


def load_model(path: Path, *, expected_name: str | None = None, sha256: str | None = None) -> nn.Module:
    """Build the network a weights file describes and load it, strictly (fp32 on CPU).

    ``sha256`` (or, for a registered file, the registry pin) is checked before anything is parsed.
    """
    from serpent_cli.models.serpent import Serpent

    path = Path(path)
    if sha256 is not None:
        verify_sha256(path, sha256, expected_name or "")
    elif (pin := registered_pin(path)) is not None:
        verify_sha256(path, pin[1], pin[0])
    meta = read_metadata(path)
    if meta.get("arch") == UNET_ARCH:
        model: nn.Module = _build_unet(path, meta, expected_name)
        return _load_tensors(path, model, meta.get("name", "unet"))
    config = read_config(path)
    if expected_name and expected_name.startswith("unet"):
        raise WeightsError(f"{path}: holds a {config.name}, not a {expected_name}; pick the matching --model")
    expected = variants().get(expected_name or "")
    if expected is not None and expected.patch_size != config.patch_size:
        raise WeightsError(
            f"{path}: holds a {config.name} (patch size {config.patch_size}), not a {expected_name}; "
            f"pick the matching --model or leave --model out"
        )
    return _load_tensors(path, build_bounded(path, lambda: Serpent(config)), config.name)


def _load_tensors(path: Path, model: nn.Module, name: str) -> nn.Module:
    """Strictly load a file's tensors into ``model`` (names, shapes, finiteness checked first)."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: cannot read tensors ({exc}); the file may be truncated or corrupt") from None
    wanted = model.state_dict()
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    if missing or unexpected:
        raise WeightsError(
            f"{path}: tensors do not match {name} "
            f"({len(missing)} missing, {len(unexpected)} unexpected); is it another architecture?"
        )
    for key, tensor in state.items():
        if tensor.shape != wanted[key].shape:
            raise WeightsError(
                f"{path}: tensor {key} has shape {tuple(tensor.shape)}, expected {tuple(wanted[key].shape)}"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise WeightsError(f"{path}: tensor {key} holds NaN or inf values; the file is corrupt")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()


UNET_ARCH = "unet"


def _arch_metadata(model: nn.Module) -> dict[str, str]:
    """What rebuilds ``model``: a Serpent config, or (arch "unet") the U-Net's widths."""
    from serpent_cli.models.unet import UNet

    if isinstance(model, UNet):
        cfg = {"channels": model.channels, "depth": model.depth, "in_chans": model.out.out_channels}
        return {"arch": UNET_ARCH, "name": f"unet-{model.channels}", "unet_config": json.dumps(cfg, sort_keys=True)}
    config: SerpentConfig = model.config  # type: ignore[assignment]
    return {"config": config.to_json()}


def _build_unet(path: Path, meta: dict[str, str], expected_name: str | None) -> nn.Module:
    """A fresh U-Net as a weights file describes it (U-Net files carry ``arch: unet``)."""
    from serpent_cli.models.unet import UNet

    if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{path}: not a serpent weights file of a supported format version")
    try:
        cfg = check_config_values(json.loads(meta["unet_config"]), UNET_INT_RANGES)
        channels, in_chans, depth = cfg["channels"], cfg["in_chans"], cfg["depth"]
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise WeightsError(f"{path}: invalid U-Net config in weights metadata: {exc}") from None
    model = build_bounded(path, lambda: UNet(channels=channels, in_chans=in_chans, depth=depth))
    name = meta.get("name", f"unet-{model.channels}")
    if expected_name and expected_name != name:
        raise WeightsError(f"{path}: holds a {name}, not a {expected_name}; pick the matching --model")
    return model
