"""Device and precision choice, shared by deblur, train, eval and bench.

The spelling of ``--device`` / ``--precision`` is checked without torch (:func:`check_device_spec`,
:func:`check_precision_spec`), so a typo is a usage error in milliseconds; whether the device is
actually present is asked of torch only when there is work to do.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from serpent_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device_spec(spec: str) -> str:
    """The normalised spelling of a ``--device`` value, or a UsageError naming the accepted ones."""
    spec = spec.strip().lower()
    if not _DEVICE_RE.fullmatch(spec):
        raise UsageError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps")
    return spec


def check_precision_spec(spec: str) -> str:
    """The normalised spelling of a ``--precision`` value, or a UsageError naming the accepted ones."""
    spec = spec.strip().lower()
    if spec not in PRECISIONS:
        raise UsageError(f"unknown precision {spec!r}; use {', '.join(PRECISIONS)}")
    return spec


def _mps_available() -> bool:
    import torch

    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' -> a usable torch.device, or a clear UsageError."""
    import torch

    spec = check_device_spec(spec)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine; use --device cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps" and not _mps_available():
        raise UsageError(f"--device {spec}: MPS is not available on this machine; use --device cpu")
    return device


def resolve_precision(spec: str, device: torch.device) -> torch.dtype:
    """'auto' is bf16 on CUDA devices that support it, else fp32 (CPU half precision is slow)."""
    import torch

    spec = check_precision_spec(spec)
    if spec == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[spec]


def is_oom(exc: BaseException) -> bool:
    """Whether an exception means 'this does not fit in memory': CUDA, the CPU allocator, or an rlimit.

    Tiling retries smaller tiles on it and `serpent bench` reports "OOM" for it: one answer for both.
    """
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("out of memory", "can't allocate memory", "cannot allocate memory"))
