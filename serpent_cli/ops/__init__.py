"""Selective-scan ops, kept apart from the modules that use them (as in mamba-ssm).

``selective_scan`` is the one entry point; it dispatches to a backend:

* ``torch``  - vectorised chunked scan in plain PyTorch (any device),
* ``triton`` - our GPU kernels (CUDA only),
* ``mamba``  - ``mamba_ssm``'s CUDA kernel when that optional package imports.

``auto`` picks the fastest backend available for the tensors' device.  The environment
variable ``SERPENT_SCAN_BACKEND`` forces one (useful for benchmarks and bug reports).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable

import torch

from serpent_cli.ops.scan_torch import selective_scan_torch

BACKENDS = ("auto", "torch", "triton", "mamba")
ENV_VAR = "SERPENT_SCAN_BACKEND"

ScanFn = Callable[..., torch.Tensor]


class BackendUnavailable(RuntimeError):
    """A scan backend was asked for that cannot run here (missing package or device)."""


@functools.cache
def _mamba_fn() -> ScanFn | None:
    if importlib.util.find_spec("mamba_ssm") is None:
        return None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # a broken CUDA build must not break the CPU path
        return None
    return selective_scan_fn


@functools.cache
def _triton_fn() -> ScanFn | None:
    try:
        from serpent_cli.ops.scan_triton import selective_scan_triton
    except Exception:  # triton missing or unusable on this platform
        return None
    return selective_scan_triton


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device``, fastest first."""
    device = torch.device(device)
    found = []
    if device.type == "cuda":
        if _triton_fn() is not None:
            found.append("triton")
        if _mamba_fn() is not None:
            found.append("mamba")
    found.append("torch")
    return found


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Turn ``auto`` (or the environment override) into a concrete backend name."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if backend == "auto" and forced:
        backend = forced
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose from {', '.join(BACKENDS)}")
    usable = available_backends(device)
    if backend == "auto":
        return usable[0]
    if backend not in usable:
        raise BackendUnavailable(
            f"scan backend {backend!r} is not available on {torch.device(device)} "
            f"(available: {', '.join(usable)})"
        )
    return backend


def get_backend(name: str) -> ScanFn:
    """The scan function of a concrete backend name."""
    if name == "torch":
        return selective_scan_torch
    fn = _triton_fn() if name == "triton" else _mamba_fn() if name == "mamba" else None
    if fn is None:
        raise BackendUnavailable(f"scan backend {name!r} is not available")
    return fn


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Selective scan with the contract of mamba-ssm's ``selective_scan_fn``.

    u, delta: (batch, channels, L); A: (channels, N); B, C: (batch, groups, N, L) with
    ``channels`` divisible by ``groups``; D, delta_bias: (channels,).  Returns y with the
    shape and dtype of ``u``.  Differentiable in every tensor argument.
    """
    _check_shapes(u, delta, A, B, C, D, delta_bias)
    if u.device.type == "meta" or _counting():
        # FLOP counting / shape-only runs: the registered op is visible to torch.utils.flop_counter.
        from serpent_cli.ops.scan_op import selective_scan_op

        return selective_scan_op(u, delta, A, B, C, D, delta_bias, delta_softplus)
    name = resolve_backend(backend, u.device)
    fn = get_backend(name)
    if name == "mamba":
        return fn(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus)
    return fn(u, delta, A, B, C, D, delta_bias, delta_softplus)


def _counting() -> bool:
    """True inside ``serpent_cli.ops.scan_op.counting_scan()`` (cheap when the op was never imported)."""
    import sys

    scan_op = sys.modules.get("serpent_cli.ops.scan_op")
    return scan_op is not None and scan_op.is_counting()


def _check_shapes(u, delta, A, B, C, D, delta_bias) -> None:  # type: ignore[no-untyped-def]
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"u and delta must both be (batch, channels, L); got {tuple(u.shape)} and {tuple(delta.shape)}"
        )
    batch, channels, length = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (channels={channels}, N); got {tuple(A.shape)}")
    n_state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != n_state or t.shape[3] != length:
            raise ValueError(f"{name} must be (batch, groups, N={n_state}, L={length}); got {tuple(t.shape)}")
        if channels % t.shape[1]:
            raise ValueError(f"channels ({channels}) must be divisible by {name}'s groups ({t.shape[1]})")
    if B.shape[1] != C.shape[1]:
        raise ValueError("B and C must have the same number of groups")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (channels,):
            raise ValueError(f"{name} must be (channels={channels},); got {tuple(t.shape)}")


__all__ = ["BACKENDS", "BackendUnavailable", "available_backends", "get_backend", "resolve_backend", "selective_scan"]
