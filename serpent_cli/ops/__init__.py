"""Selective-scan ops, kept apart from the modules that use them (as in mamba-ssm).

``selective_scan`` is the one entry point; it dispatches to a backend:

* ``numba``  - our compiled CPU kernels (the CPU path whenever numba imports), which also
  run SS2D's four scan directions in place (:func:`ss2d_scan`),
* ``torch``  - vectorised chunked scan in plain PyTorch (any device),
* ``triton`` - our GPU kernels (CUDA; on CPU tensors only under ``TRITON_INTERPRET=1``,
  which is slow and meant for tests),
* ``mamba``  - ``mamba_ssm``'s CUDA kernel when that optional package imports.

``auto`` picks the fastest backend available for the tensors' device: on CUDA ``triton``
when it imports and passes a one-time self-check against the PyTorch scan (so a broken
Triton install degrades to a slower backend with a warning, never to wrong results), else
``mamba`` when present, else ``torch``;
on CPU ``numba`` when it imports, else ``torch``.  The environment variable ``SERPENT_SCAN_BACKEND``
forces one (useful for benchmarks and bug reports); forcing one that cannot run on the
tensors' device is a one-line error saying why.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from collections.abc import Callable

import torch

from serpent_cli.errors import UsageError
from serpent_cli.ops.scan_torch import selective_scan_torch

BACKENDS = ("auto", "numba", "torch", "triton", "mamba")
ENV_VAR = "SERPENT_SCAN_BACKEND"

ScanFn = Callable[..., torch.Tensor]


class BackendUnavailable(UsageError, RuntimeError):
    """A scan backend was asked for that cannot run here (missing package or device)."""


class UnknownBackend(UsageError, ValueError):
    """A scan backend name that does not exist (from an argument or SERPENT_SCAN_BACKEND)."""


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
def _numba_fn() -> ScanFn | None:
    """The compiled CPU scan, or None where numba does not import (then torch serves)."""
    if importlib.util.find_spec("numba") is None:
        return None
    try:
        from serpent_cli.ops.scan_numba import selective_scan_numba
    except Exception:  # a broken numba / llvmlite install must not break the CPU path
        return None
    return selective_scan_numba


@functools.cache
def _triton_fn() -> ScanFn | None:
    try:
        from serpent_cli.ops.scan_triton import selective_scan_triton
    except Exception:  # triton missing or unusable on this platform
        return None
    return selective_scan_triton


def _triton_interpreting() -> bool:
    """Triton's CPU interpreter is on (it must be set before triton is first imported)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


@functools.cache
def _triton_verified(device: torch.device) -> bool:
    """One-time check per device that the Triton scan agrees with the PyTorch scan.

    Small shape, L not a multiple of the chunk, forward and all gradients.  A failure (a
    compiler bug, an unsupported GPU) is a warning and ``auto`` moves on to the next backend.
    """
    fn = _triton_fn()
    if fn is None:
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        b, d, n, length, g = 1, 8, 4, 300, 2  # two chunks of 256, the second ragged

        def r(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen).to(device).requires_grad_()

        A = (-torch.rand(d, n, generator=gen) - 0.5).to(device).requires_grad_()
        ins = [r(b, d, length), r(b, d, length), A, r(b, g, n, length), r(b, g, n, length), r(d), r(d)]
        y = fn(*ins, True)
        ref = selective_scan_torch(*ins, True)
        gy = torch.randn(y.shape, generator=gen).to(device)
        got = torch.autograd.grad(y, ins, gy)
        want = torch.autograd.grad(ref, ins, gy)
        ok = all(
            torch.allclose(a, w, rtol=1e-3, atol=1e-3) for a, w in zip((y, *got), (ref, *want), strict=True)
        )
    except Exception as exc:  # compile or launch failure: fall back, but say so
        warnings.warn(f"Triton scan unusable on {device} ({type(exc).__name__}: {exc}); using another backend",
                      RuntimeWarning, stacklevel=2)
        return False
    if not ok:
        warnings.warn(f"Triton scan failed its self-check on {device}; using another backend",
                      RuntimeWarning, stacklevel=2)
    return ok


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device``, the one ``auto`` prefers first.

    On CPU, ``triton`` is listed (after ``torch``, so never picked by ``auto``) only while
    ``TRITON_INTERPRET=1``: the interpreter is for tests, far too slow for real work.
    """
    device = torch.device(device)
    found = []
    if device.type == "cpu" and _numba_fn() is not None:
        found.append("numba")
    if device.type == "cuda":
        if _triton_fn() is not None:
            found.append("triton")
        if _mamba_fn() is not None:
            found.append("mamba")
    found.append("torch")
    if device.type == "cpu" and _triton_interpreting() and _triton_fn() is not None:
        found.append("triton")
    return found


def _why_unavailable(backend: str, device: torch.device) -> str:
    if backend == "numba":
        if device.type != "cpu":
            return f"the numba kernels run on the CPU, not on {device.type}"
        if importlib.util.find_spec("numba") is None:
            return "the numba package is not installed (pip install numba)"
        return "numba is installed but does not import here"
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed (pip install triton; Linux x86-64 with a CUDA GPU)"
        if _triton_fn() is None:
            return "triton is installed but does not import here"
        return (f"Triton kernels run on CUDA devices, not on {device.type} "
                "(TRITON_INTERPRET=1 runs them on CPU tensors, slowly, for testing)")
    if backend == "mamba":
        if importlib.util.find_spec("mamba_ssm") is None:
            return "the mamba-ssm package is not installed (pip install 'serpent-cli[cuda]'; it needs CUDA to build)"
        if device.type != "cuda":
            return f"mamba-ssm's kernels run on CUDA devices, not on {device.type}"
        return "mamba-ssm is installed but does not import (a CUDA build problem?)"
    return f"it cannot run on {device}"


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Turn ``auto`` (or the environment override) into a concrete backend name."""
    device = torch.device(device)
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if backend == "auto" and forced:
        backend = forced
    if backend not in BACKENDS:
        raise UnknownBackend(f"unknown scan backend {backend!r}; choose from {', '.join(BACKENDS)}")
    usable = available_backends(device)
    if backend == "auto":
        for name in usable:
            if name != "triton" or _triton_verified(device):
                return name
        return "torch"
    if backend not in usable:
        source = f" (from {ENV_VAR})" if forced and forced == backend else ""
        raise BackendUnavailable(
            f"scan backend {backend!r}{source} cannot run: {_why_unavailable(backend, device)}; "
            f"available on {device}: {', '.join(n for n in usable if n != 'triton' or device.type == 'cuda')}"
        )
    return backend


def get_backend(name: str) -> ScanFn:
    """The scan function of a concrete backend name."""
    if name == "torch":
        return selective_scan_torch
    fn = {"triton": _triton_fn, "mamba": _mamba_fn, "numba": _numba_fn}.get(name, lambda: None)()
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


def directional_backend(device: torch.device | str, backend: str = "auto") -> bool:
    """True when SS2D should call :func:`ss2d_scan` (the in-place four-direction scan).

    Only the numba backend walks the directions in place; the others (and FLOP counting,
    which needs the registered op) keep the unroll / scan / merge path.
    """
    device = torch.device(device)
    if device.type != "cpu" or _counting():
        return False
    return resolve_backend(backend, device) == "numba"


def kernels_to_compile(device: torch.device | str) -> bool:
    """True when the next scan on ``device`` first compiles the numba kernels (a first run on a machine, or
    the first after an upgrade): about 15 s on a 2-core CPU, which a command should announce."""
    if not directional_backend(device):
        return False
    from serpent_cli.ops.scan_numba import forward_compile_pending

    return forward_compile_pending()


def to_scan_orders(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """Two channels-last maps (b, H, W, ...) -> (b, 2, H*W, ...): ``row`` in row-major order, ``col`` in column-major.

    SS2D's scan directions walk one of these two orders forwards or backwards (row-major,
    column-major, both reversed), so with both orders stored every walk reads memory in
    sequence; the second order is one transposed copy, not four unrolled ones.
    """
    b, h, w, *rest = row.shape
    out = row.new_empty(b, 2, h * w, *rest)
    out[:, 0].view(b, h, w, *rest).copy_(row)
    out[:, 1].view(b, w, h, *rest).copy_(col.transpose(1, 2))
    return out


def from_scan_orders(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(b, 2, H*W, ...) in the two orders -> their sum in image order, (b, H, W, ...)."""
    b, _, _, *rest = y.shape
    return y[:, 0].view(b, height, width, *rest) + y[:, 1].view(b, width, height, *rest).transpose(1, 2)


def conv_silu_to_scan_orders(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """SS2D's scan input: silu(conv(x)) of a channels-last map x (b, H, W, E), in both orders, (b, 2, H W, E).

    Without autograd, on CPU float32 maps, one fused pass (:mod:`serpent_cli.ops.numba_ss2d`);
    otherwise the torch ops (conv, silu, :func:`to_scan_orders`), which are also its reference.
    """
    from serpent_cli.ops.numba_ss2d import conv_silu_numba, fused_input_applies

    if fused_input_applies(x, conv):
        return conv_silu_numba(x, conv)
    x = torch.nn.functional.silu(conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
    return to_scan_orders(x, x)


def gated_norm_from_scan_orders(y: torch.Tensor, z: torch.Tensor, norm: torch.nn.LayerNorm, height: int,
                                width: int) -> torch.Tensor:
    """SS2D's output before out_proj: ``norm(from_scan_orders(y)) * silu(z)``, as (b, H, W, E).

    Without autograd, on CPU float32 maps, one fused pass (:mod:`serpent_cli.ops.numba_ss2d`);
    otherwise (training, other dtypes or widths) the torch ops, which are also its reference.
    """
    from serpent_cli.ops.numba_ss2d import fused_gate_applies, gated_norm_numba

    if fused_gate_applies(y, z, norm):
        return gated_norm_numba(y, z, norm, height, width)
    return norm(from_scan_orders(y, height, width)) * torch.nn.functional.silu(z)


def ss2d_scan_orders(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor,
    dt_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """SS2D's four-direction scan (numba backend) on the two position orders, softplus on delta.

    Direction k = 2 j + q walks order q (0 row-major, 1 column-major; see
    :func:`to_scan_orders`) forwards (j = 0) or backwards (j = 1).  u: (b, 2, L, E);
    delta: (b, 2, L, 2, E) raw, [:, q, :, j] for direction 2 j + q; A: (4, E, N); B, C:
    (b, 2, L, 2, N) likewise; D, delta_bias: (4, E).  With ``dt_weight`` (4, E, R), ``delta``
    is instead the (b, 2, L, 2, R) input of dt_proj, applied per step inside the kernel (the
    (b, 2, L, 2, E) delta tensor is never made).  Returns (b, 2, L, E): per order, the sum of
    its two walks (+ D u), in that order; :func:`from_scan_orders` adds them in image order.
    """
    from serpent_cli.ops.scan_numba import DirectionalScan

    return DirectionalScan.apply(u, delta, dt_weight, A, B, C, D, delta_bias)


def ss2d_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """:func:`ss2d_scan_orders` for tensors in image order (tests, benchmarks, other callers).

    u: (b, L, E) image order, channels last, L = height * width; delta: (b, L, 4, E) raw, one
    per direction; A: (4, E, N); B, C: (b, L, 4, N); D, delta_bias: (4, E).  Returns (b, L, E):
    the sum over the four scan orders (row-major, column-major, both reversed) of each
    direction's scan read back into image order, equal to
    ``merge_four_ways(scan(unroll_four_ways(...)))`` without materialising the unrolled copies.
    """
    b, length, e = u.shape
    orders = [image_order_to_scan_orders(t, height, width) for t in (u, delta, B, C)]
    y = ss2d_scan_orders(orders[0], orders[1], A, orders[2], orders[3], D, delta_bias)
    return from_scan_orders(y, height, width).reshape(b, length, e)


def image_order_to_scan_orders(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """An image-order tensor -> the layout of :func:`ss2d_scan_orders`.

    (b, L, E) (the same for every direction, like u) -> (b, 2, L, E); (b, L, 4, X) (one per
    direction k = 2 j + q, like delta, B, C) -> (b, 2, L, 2, X), direction k's values in order q.
    """
    image = t.reshape(t.shape[0], height, width, *t.shape[2:])
    if t.dim() == 3:
        return to_scan_orders(image, image)
    by_walk = image.unflatten(3, (2, 2))  # direction k = 2 j + q -> [..., j, q, :]
    return to_scan_orders(by_walk[..., 0, :], by_walk[..., 1, :])


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


__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "UnknownBackend",
    "available_backends",
    "conv_silu_to_scan_orders",
    "directional_backend",
    "from_scan_orders",
    "gated_norm_from_scan_orders",
    "get_backend",
    "image_order_to_scan_orders",
    "kernels_to_compile",
    "resolve_backend",
    "selective_scan",
    "ss2d_scan",
    "ss2d_scan_orders",
    "to_scan_orders",
]
