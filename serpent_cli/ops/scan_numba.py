"""The ``numba`` scan backend: PyTorch autograd around the compiled CPU kernels.

Two entry points share one pair of kernels (:mod:`serpent_cli.ops.numba_kernels`):

* :func:`selective_scan_numba` - mamba-ssm's ``selective_scan_fn`` contract, (batch,
  channels, L) tensors with B/C groups; it transposes to channels-last once (a copy of the
  inputs, cheap next to the N-fold work of the scan) and runs the kernel in plain mode.
* :class:`DirectionalScan` - the four-direction scan of SS2D over its two position orders
  (row-major and column-major, channels last), with no unrolled copies (DESIGN.md section 3);
  ``serpent_cli.ops.ss2d_scan_orders`` calls it.

Compiled machine code is cached per user (see :func:`configure_cache`), so only the first
run on a machine pays for compilation.
"""

from __future__ import annotations

import torch

from serpent_cli.numba_setup import follow_torch_threads, start_threads
from serpent_cli.ops import numba_kernels as kernels
from serpent_cli.ops.scan_torch import _compute_dtype  # one rule: fp64 stays fp64, else fp32
from serpent_cli.ops.workspace import scratch

NUM_DIRECTIONS = 4
# Positions per saved boundary state: the backward recomputes one segment's states into a
# (segment, N, block) buffer, so this bounds its memory; the saved states cost N / SEGMENT
# of the delta tensor.
SEGMENT = 64
MAX_BLOCK = 64  # channels per work item: the state h[N, block] stays in L1
MIN_BLOCK = 16

start_threads()


def forward_compile_pending() -> bool:
    """True when an inference forward has a kernel with nothing usable in the per-user cache, so it compiles.

    The scan's forward and SS2D's fused stages around it (:mod:`serpent_cli.ops.numba_ss2d`).  Reads numba's
    cache index (missing, or stale after an upgrade: empty); if numba's cache internals ever move, it
    answers False (no notice) rather than fail.
    """
    from serpent_cli.ops.numba_ss2d import gate_kernel, input_kernel

    try:
        return any(not kernel._cache._cache_file._load_index()
                   for kernel in (kernels.scan_forward, input_kernel, gate_kernel))
    except Exception:
        return False


def channel_block(channels: int, batch: int, threads: int | None = None) -> int:
    """Channels per work item: a divisor of ``channels``, as wide as possible up to MAX_BLOCK.

    Wide blocks vectorise best (measured on one core at 256x256, N = 11: 0.58 / 0.88 / 1.04
    G state updates/s at 16 / 32 / 64 channels: the compiler's vector loop needs 32 or more
    iterations), so a block is narrowed only until every thread has a work item, and never
    below MIN_BLOCK when ``channels`` has such a divisor.
    """
    threads = threads or follow_torch_threads()
    divisors = [d for d in range(min(channels, MAX_BLOCK), 0, -1) if channels % d == 0]
    chosen = divisors[0]
    for d in divisors:
        if d < MIN_BLOCK and chosen >= MIN_BLOCK:
            break
        chosen = d
        if batch * (channels // d) >= threads:
            break
    return chosen


def _run_forward(u, delta, dt_weight, A, Bm, Cm, D, bias, softplus, directional, keep, y_role=None):  # type: ignore[no-untyped-def]
    """Run the forward kernel on the kernel's layout (see numba_kernels); returns y and the boundary states.

    ``y_role``: y goes into that :func:`~serpent_cli.ops.workspace.scratch` buffer (fresh unless one is being reused).
    """
    batch, orders, length, channels = u.shape
    directions, n_state = orders * delta.shape[3], A.shape[2]
    dtype = u.dtype
    groups = Bm.shape[3]
    block = channel_block(channels if directional else channels // groups, batch * orders, follow_torch_threads())
    shape = (batch, orders, length, channels)
    y = scratch(y_role, shape, u) if y_role else torch.empty(shape, dtype=dtype)
    n_saved = -(-length // SEGMENT) if keep else 0
    saved = torch.empty(batch, directions, n_saved, n_state, channels, dtype=dtype)
    kernels.scan_forward(
        u.numpy(), delta.numpy(), dt_weight.numpy(), A.numpy(), Bm.numpy(), Cm.numpy(), D.numpy(), bias.numpy(),
        softplus, directional, block, SEGMENT, y.numpy(), saved.numpy(),
    )
    return y, saved


def _run_backward(u, delta, dt_weight, A, Bm, Cm, D, bias, softplus, directional, saved, grad_y):  # type: ignore[no-untyped-def]
    """Run the backward kernel; grads of (u, delta, dt_weight, A, Bm, Cm, D, bias), partials summed."""
    batch, orders, _, channels = u.shape
    directions, n_state = orders * delta.shape[3], A.shape[2]
    groups = Bm.shape[3]
    dtype = u.dtype
    block = channel_block(channels if directional else channels // groups, batch * orders, follow_torch_threads())
    blocks = channels // block
    rank = dt_weight.shape[1]
    grad_u = torch.empty_like(u)
    # Full delta: every block writes its own channels; low-rank: one partial per block.
    grad_delta = torch.empty(blocks if rank else 1, *delta.shape, dtype=dtype)
    grad_dt_weight = torch.empty(batch, *dt_weight.shape, dtype=dtype)
    grad_A = torch.empty(batch, directions, channels, n_state, dtype=dtype)
    # Every block writes its own group's slots of its partial; the others must read as zero.
    make = torch.zeros if (not directional and groups > 1) else torch.empty
    grad_B = make(blocks, *Bm.shape, dtype=dtype)
    grad_C = make(blocks, *Cm.shape, dtype=dtype)
    grad_D = torch.empty(batch, directions, channels, dtype=dtype)
    grad_bias = torch.empty(batch, directions, channels, dtype=dtype)
    kernels.scan_backward(
        u.numpy(), delta.numpy(), dt_weight.numpy(), A.numpy(), Bm.numpy(), Cm.numpy(), D.numpy(), bias.numpy(),
        softplus, directional, block, SEGMENT, saved.numpy(), grad_y.numpy(),
        grad_u.numpy(), grad_delta.numpy(), grad_dt_weight.numpy(), grad_A.numpy(), grad_B.numpy(),
        grad_C.numpy(), grad_D.numpy(), grad_bias.numpy(),
    )
    partials = (grad_dt_weight, grad_A, grad_B, grad_C, grad_D, grad_bias)
    # A full delta's gradient has one slot (every block wrote its own channels): no sum, no copy.
    return (grad_u, grad_delta.sum(0) if rank else grad_delta[0], *(g.sum(0) for g in partials))


def _contiguous(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to(dtype).contiguous()


def _rows_view(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype`` without a copy when its last axis is unit-stride (any other strides are fine)."""
    t = t.detach().to(dtype)
    return t if t.stride(-1) == 1 else t.contiguous()


class _PlainScan(torch.autograd.Function):
    """mamba-ssm's contract: u, delta (b, d, L); A (d, N); B, C (b, g, N, L); D, bias (d,)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):  # type: ignore[override]
        dtype = _compute_dtype(u)
        channels = u.shape[1]
        zeros = torch.zeros(1, channels, dtype=dtype)
        # The kernel's layout with one position order and one walk: (b, 1, L, [1 or groups,] ...).
        args = (
            _contiguous(u.transpose(1, 2).unsqueeze(1), dtype),
            _contiguous(delta.transpose(1, 2)[:, None, :, None], dtype),
            torch.empty(1, 0, channels, dtype=dtype),  # full delta: no dt weight
            _contiguous(A.unsqueeze(0), dtype),
            _contiguous(B.permute(0, 3, 1, 2).unsqueeze(1), dtype),
            _contiguous(C.permute(0, 3, 1, 2).unsqueeze(1), dtype),
            zeros if D is None else _contiguous(D.unsqueeze(0), dtype),
            zeros if delta_bias is None else _contiguous(delta_bias.unsqueeze(0), dtype),
        )
        keep = torch.is_grad_enabled() or any(ctx.needs_input_grad)
        y, saved = _run_forward(*args, bool(delta_softplus), False, keep)
        ctx.save_for_backward(*args, saved)
        ctx.softplus = bool(delta_softplus)
        ctx.has_D, ctx.has_bias = D is not None, delta_bias is not None
        ctx.dtypes = [t.dtype if t is not None else None for t in (u, delta, A, B, C, D, delta_bias)]
        return y[:, 0].transpose(1, 2).to(u.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):  # type: ignore[override]
        *args, saved = ctx.saved_tensors
        u = args[0]
        gy = _contiguous(grad_y.transpose(1, 2).unsqueeze(1), u.dtype)
        g_u, g_delta, _, g_A, g_B, g_C, g_D, g_bias = _run_backward(*args, ctx.softplus, False, saved, gy)
        dtypes = ctx.dtypes
        out = [
            g_u[:, 0].transpose(1, 2).to(dtypes[0]),
            g_delta[:, 0, :, 0].transpose(1, 2).to(dtypes[1]),
            g_A.squeeze(0).to(dtypes[2]),
            g_B[:, 0].permute(0, 2, 3, 1).to(dtypes[3]),
            g_C[:, 0].permute(0, 2, 3, 1).to(dtypes[4]),
            g_D.squeeze(0).to(dtypes[5]) if ctx.has_D else None,
            g_bias.squeeze(0).to(dtypes[6]) if ctx.has_bias else None,
        ]
        return (*[g if need else None for g, need in zip(out, ctx.needs_input_grad)], None)


class DirectionalScan(torch.autograd.Function):
    """SS2D's four directions over its two position orders (``serpent_cli.ops.ss2d_scan_orders``).

    ``dt_weight`` None: ``delta`` is the full (b, 2, L, 2, E) delta; else ``delta`` is the
    (b, 2, L, 2, R) input of dt_proj and ``dt_weight`` (4, E, R) its weight, applied in the kernel.
    """

    @staticmethod
    def forward(ctx, u, delta, dt_weight, A, B, C, D, delta_bias):  # type: ignore[override]
        dtype = _compute_dtype(u)
        if dt_weight is None:
            weight = torch.empty(A.shape[0], 0, u.shape[-1], dtype=dtype)
        else:
            weight = _contiguous(dt_weight.transpose(1, 2), dtype)  # (4, R, E): rows over channels
        # The kernel reads delta (low-rank mode), B and C one scalar at a time, so SS2D's slices of its
        # projection go in as they are (4% of a serpent-b forward was copying them); u is walked in vectors.
        loose = _rows_view if dt_weight is not None else _contiguous
        args = (_contiguous(u, dtype), loose(delta, dtype), weight, _contiguous(A, dtype), _rows_view(B, dtype),
                _rows_view(C, dtype), _contiguous(D, dtype), _contiguous(delta_bias, dtype))
        keep = torch.is_grad_enabled() or any(ctx.needs_input_grad)
        y, saved = _run_forward(*args, True, True, keep, y_role="ss2d.scan_out")
        ctx.save_for_backward(*args, saved)
        ctx.dtypes = [None if t is None else t.dtype for t in (u, delta, dt_weight, A, B, C, D, delta_bias)]
        return y.to(u.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):  # type: ignore[override]
        *args, saved = ctx.saved_tensors
        gy = _contiguous(grad_y, args[0].dtype)
        grads = list(_run_backward(*args, True, True, saved, gy))
        grads[2] = grads[2].transpose(1, 2)  # back to dt_weight's (4, E, R)
        return tuple(g.to(dt) if need else None for g, dt, need in zip(grads, ctx.dtypes, ctx.needs_input_grad))


def selective_scan_numba(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Compiled CPU scan; same contract as :func:`serpent_cli.ops.selective_scan`."""
    return _PlainScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus)
