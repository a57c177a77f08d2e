"""Selective scan as Triton kernels, forward and backward, parallel along the sequence too.

Why not one thread block per channel walking the whole sequence (mamba-ssm's layout)?  At
Serpent's shapes the sequence is very long and the channels few (serpent-h at 512x512:
256 channels, L = 262144), so that leaves most of a GPU idle.  Here every program owns a
tile of ``BLOCK_D`` channels x ``CHUNK`` time steps, and the sequence is cut into chunks:

forward
  1. ``_fwd_chunk_kernel``: per chunk, the local end state (zero initial state) and the
     chunk's summed delta (its decay product is ``exp(A * sum(delta))``).  No scan needed:
     the end state is ``sum_t exp(A * (S_T - S_t)) * delta_t * u_t * B_t`` with one
     cumulative sum ``S`` of delta shared by every state index.
  2. ``_carry_kernel``: an associative scan across the chunks (tiny data) giving every
     chunk its true initial state.
  3. ``_fwd_out_kernel``: the recurrence inside each chunk (``tl.associative_scan``), corrected
     by ``prod(decay) * h_start``, contracted with C, plus ``D * u``.

backward (adjoint ``g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}``, a reverse recurrence)
  1. ``_bwd_chunk_kernel``: per chunk, the local adjoint at the chunk's first step.
  2. ``_carry_kernel`` in reverse chunk order: the adjoint flowing into every chunk.
  3. ``_bwd_main_kernel``: recomputes h (forward scan) and g (forward scan on the tile loaded
     in reversed time order, so no reverse scan is needed: ``reverse=True`` scans with a
     non-commutative combine have been unreliable across Triton versions), flips h into
     g's order with ``tl.flip`` (or ``tl.gather``), and forms every gradient.  ``a_t h_{t-1}`` is taken as
     ``h_t - x_t`` (no division by a decay).  dB and dC are reduced over the channel tile
     and added atomically into fp32 buffers; dA, dD and d(delta_bias) are written as
     per-chunk partial sums and summed by PyTorch.

All state arithmetic is fp32 whatever the input dtype (fp32, bf16, fp16).  A channel tile
never spans two groups, so B and C are loaded once per tile and shared by its channels.
On a machine without a GPU the same kernels run under ``TRITON_INTERPRET=1`` on CPU
tensors (very slowly): that is how the tests check them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class KernelConfig:
    """Tile shape and warps of one kernel; CHUNK is shared by all kernels of one call."""

    block_d: int
    num_warps: int


# Defaults chosen for memory-bound long-sequence scans (H100/H200 class); the GPU benchmark
# sweeps alternatives.  CHUNK must be a power of two (tl.arange, tl.flip).
CHUNK = int(os.environ.get("SERPENT_TRITON_CHUNK", "256"))
FWD_STATE = KernelConfig(block_d=8, num_warps=4)
FWD_OUT = KernelConfig(block_d=4, num_warps=4)
BWD_STATE = KernelConfig(block_d=8, num_warps=4)
BWD_MAIN = KernelConfig(block_d=4, num_warps=8)
MIN_CHUNK = 8
# How the backward turns the h tile into reversed time order: "flip" (tl.flip, xor butterflies)
# or "gather" (tl.gather); the GPU benchmark times both, the variable allows a switch without edits.
REVERSE_VIA = os.environ.get("SERPENT_TRITON_REVERSE", "flip")
MAX_CARRY_BLOCK = 1024
MAX_GRID_Y = 65535


@triton.jit
def _combine(a1, b1, a2, b2):
    """Compose two steps of h -> a*h + b (left = earlier): associative, not commutative."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # log(1 + exp(x)) without overflow: max(x, 0) + log(1 + exp(-|x|)).
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _load_delta(dt_ptr, bias_ptr, rows, d_offs, t, L, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta for a (BLOCK_D, CHUNK) tile at time indices t (any order): biased, activated, 0 past L."""
    mask = (t < L) & (t >= 0)
    raw = tl.load(dt_ptr + rows[:, None] * L + t[None, :], mask=mask[None, :], other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + tl.load(bias_ptr + d_offs).to(tl.float32)[:, None]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    # Zero delta past the end: decay 1 and no input, so padding never changes a state.
    return tl.where(mask[None, :], dt, 0.0), raw


@triton.jit
def _tile_coords(n_dblocks, d_per_group, D, BLOCK_D: tl.constexpr):
    """This program's tile: chunk index, batch, channel offsets, group, and flat (batch, channel) rows."""
    pid = tl.program_id(0)
    c = tl.program_id(1)
    b = pid // n_dblocks
    d_offs = (pid % n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    grp = ((pid % n_dblocks) * BLOCK_D) // d_per_group
    rows = (b * D + d_offs).to(tl.int64)
    return c, b, d_offs, grp, rows


@triton.jit
def _decayed_chunk_sums(A_ptr, X_ptr, out_ptr, x_row, d_offs, rows, c, t, mask_t, span, v, L, N, NC):
    """out[n] = sum_t exp(A[:, n] * span_t) * v_t * X[n, t] over the chunk, per state index n.

    Forward: the chunk's end state (span = delta after t, v = delta*u, X = B). Backward: the adjoint at
    the chunk's start (span = delta before t, v = dy, X = C). One reduction serves both passes.
    """
    for n in range(N):
        a_n = tl.load(A_ptr + d_offs * N + n).to(tl.float32)
        x_n = tl.load(X_ptr + (x_row + n) * L + t, mask=mask_t, other=0.0).to(tl.float32)
        total = tl.sum(tl.exp(a_n[:, None] * span) * v * x_n[None, :], axis=1)
        tl.store(out_ptr + (rows * NC + c) * N + n, total)


@triton.jit
def _fwd_chunk_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, local_ptr, dsum_ptr,
    L, D, G, N, NC, n_dblocks, d_per_group,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
):
    c, b, d_offs, grp, rows = _tile_coords(n_dblocks, d_per_group, D, BLOCK_D)
    t = c * CHUNK + tl.arange(0, CHUNK)
    mask_t = t < L
    u = tl.load(u_ptr + rows[:, None] * L + t[None, :], mask=mask_t[None, :], other=0.0).to(tl.float32)
    dt, _ = _load_delta(dt_ptr, bias_ptr, rows, d_offs, t, L, HAS_BIAS, SOFTPLUS)
    total = tl.sum(dt, axis=1)
    after = total[:, None] - tl.cumsum(dt, axis=1)  # sum of delta strictly after t
    du = dt * u
    _decayed_chunk_sums(A_ptr, B_ptr, local_ptr, (b * G + grp).to(tl.int64) * N, d_offs, rows, c, t, mask_t,
                        after, du, L, N, NC)
    tl.store(dsum_ptr + rows * NC + c, total)


@triton.jit
def _carry_kernel(local_ptr, dsum_ptr, A_ptr, out_ptr, D, N, NC,
                  REVERSE: tl.constexpr, BLOCK_C: tl.constexpr, NP: tl.constexpr):
    """Exclusive scan over chunks of h -> exp(A * dsum) * h + local, per (batch, channel) row.

    REVERSE walks the chunks from the last one (the backward's adjoint carry).
    """
    row = tl.program_id(0).to(tl.int64)
    d = row % D
    n_offs = tl.arange(0, NP)
    n_mask = n_offs < N
    a = tl.load(A_ptr + d * N + n_offs, mask=n_mask, other=0.0).to(tl.float32)
    carry = tl.zeros([NP], dtype=tl.float32)
    pos_local = tl.arange(0, BLOCK_C)
    for start in range(0, NC, BLOCK_C):
        pos = start + pos_local
        src = pos - 1  # exclusive: position i sees the chunks before it in scan order
        valid = (src >= 0) & (src < NC)
        if REVERSE:
            src_chunk = NC - 1 - src
            dst_chunk = NC - 1 - pos
        else:
            src_chunk = src
            dst_chunk = pos
        m2 = valid[:, None] & n_mask[None, :]
        loc = tl.load(local_ptr + (row * NC + src_chunk)[:, None] * N + n_offs[None, :], mask=m2, other=0.0)
        s = tl.load(dsum_ptr + row * NC + src_chunk, mask=valid, other=0.0)
        decay = tl.exp(s[:, None] * a[None, :])
        prod, acc = tl.associative_scan((decay, loc), axis=0, combine_fn=_combine)
        h = acc + prod * carry[None, :]
        keep = (pos < NC)[:, None] & n_mask[None, :]
        tl.store(out_ptr + (row * NC + dst_chunk)[:, None] * N + n_offs[None, :], h, mask=keep)
        carry = tl.sum(tl.where((pos_local == BLOCK_C - 1)[:, None], h, 0.0), axis=0)


@triton.jit
def _fwd_out_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, hstart_ptr, y_ptr,
    L, D, G, N, NC, n_dblocks, d_per_group,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
):
    c, b, d_offs, grp, rows = _tile_coords(n_dblocks, d_per_group, D, BLOCK_D)
    t = c * CHUNK + tl.arange(0, CHUNK)
    mask_t = t < L
    u = tl.load(u_ptr + rows[:, None] * L + t[None, :], mask=mask_t[None, :], other=0.0).to(tl.float32)
    dt, _ = _load_delta(dt_ptr, bias_ptr, rows, d_offs, t, L, HAS_BIAS, SOFTPLUS)
    du = dt * u
    y = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
    b_row = (b * G + grp).to(tl.int64) * N
    for n in range(N):
        a_n = tl.load(A_ptr + d_offs * N + n).to(tl.float32)
        b_n = tl.load(B_ptr + (b_row + n) * L + t, mask=mask_t, other=0.0).to(tl.float32)
        c_n = tl.load(C_ptr + (b_row + n) * L + t, mask=mask_t, other=0.0).to(tl.float32)
        h0 = tl.load(hstart_ptr + (rows * NC + c) * N + n)
        prod, h = tl.associative_scan((tl.exp(dt * a_n[:, None]), du * b_n[None, :]), axis=1, combine_fn=_combine)
        y += (h + prod * h0[:, None]) * c_n[None, :]
    if HAS_D:
        y += tl.load(D_ptr + d_offs).to(tl.float32)[:, None] * u
    tl.store(y_ptr + rows[:, None] * L + t[None, :], y.to(y_ptr.dtype.element_ty), mask=mask_t[None, :])


@triton.jit
def _bwd_chunk_kernel(
    dt_ptr, A_ptr, C_ptr, bias_ptr, dy_ptr, agg_ptr, dsum_ptr,
    L, D, G, N, NC, n_dblocks, d_per_group,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
):
    """Local adjoint at the chunk's first step, with alpha_t = exp(A * delta_{t+1})."""
    c, b, d_offs, grp, rows = _tile_coords(n_dblocks, d_per_group, D, BLOCK_D)
    t = c * CHUNK + tl.arange(0, CHUNK)
    mask_t = t < L
    dt_next, _ = _load_delta(dt_ptr, bias_ptr, rows, d_offs, t + 1, L, HAS_BIAS, SOFTPLUS)
    dy = tl.load(dy_ptr + rows[:, None] * L + t[None, :], mask=mask_t[None, :], other=0.0).to(tl.float32)
    total = tl.sum(dt_next, axis=1)
    before = tl.cumsum(dt_next, axis=1) - dt_next  # sum of delta_{k+1} for chunk steps k < t
    _decayed_chunk_sums(A_ptr, C_ptr, agg_ptr, (b * G + grp).to(tl.int64) * N, d_offs, rows, c, t, mask_t,
                        before, dy, L, N, NC)
    tl.store(dsum_ptr + rows * NC + c, total)


@triton.jit
def _bwd_main_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, hstart_ptr, gin_ptr,
    du_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    L, D, G, N, NC, n_dblocks, d_per_group,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, REVERSE_GATHER: tl.constexpr,
):
    c, b, d_offs, grp, rows = _tile_coords(n_dblocks, d_per_group, D, BLOCK_D)
    j = tl.arange(0, CHUNK)
    if REVERSE_GATHER:
        rev_idx = (CHUNK - 1 - j)[None, :] + tl.zeros([BLOCK_D, CHUNK], dtype=tl.int32)
    t = c * CHUNK + j  # forward time order (for h)
    tr = c * CHUNK + (CHUNK - 1) - j  # reversed time order (for g and every gradient)
    mask_t = t < L
    mask_r = tr < L
    # Forward-order tile: only what the h recurrence needs.
    u = tl.load(u_ptr + rows[:, None] * L + t[None, :], mask=mask_t[None, :], other=0.0).to(tl.float32)
    dt, _ = _load_delta(dt_ptr, bias_ptr, rows, d_offs, t, L, HAS_BIAS, SOFTPLUS)
    du_f = dt * u
    # Reversed-order tile.
    ur = tl.load(u_ptr + rows[:, None] * L + tr[None, :], mask=mask_r[None, :], other=0.0).to(tl.float32)
    dtr, raw_r = _load_delta(dt_ptr, bias_ptr, rows, d_offs, tr, L, HAS_BIAS, SOFTPLUS)
    dtr_next, _ = _load_delta(dt_ptr, bias_ptr, rows, d_offs, tr + 1, L, HAS_BIAS, SOFTPLUS)
    dyr = tl.load(dy_ptr + rows[:, None] * L + tr[None, :], mask=mask_r[None, :], other=0.0).to(tl.float32)
    dur = dtr * ur
    grad_u = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
    grad_dt = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
    bc_row = (b * G + grp).to(tl.int64) * N
    for n in range(N):
        a_n = tl.load(A_ptr + d_offs * N + n).to(tl.float32)
        b_n = tl.load(B_ptr + (bc_row + n) * L + t, mask=mask_t, other=0.0).to(tl.float32)
        h0 = tl.load(hstart_ptr + (rows * NC + c) * N + n)
        prod, h = tl.associative_scan((tl.exp(dt * a_n[:, None]), du_f * b_n[None, :]), axis=1, combine_fn=_combine)
        h = h + prod * h0[:, None]
        if REVERSE_GATHER:  # into reversed time order
            h = tl.gather(h, rev_idx, axis=1)
        else:
            h = tl.flip(h, 1)
        br_n = tl.load(B_ptr + (bc_row + n) * L + tr, mask=mask_r, other=0.0).to(tl.float32)
        cr_n = tl.load(C_ptr + (bc_row + n) * L + tr, mask=mask_r, other=0.0).to(tl.float32)
        g_in = tl.load(gin_ptr + (rows * NC + c) * N + n)
        alpha = tl.exp(dtr_next * a_n[:, None])
        gprod, g = tl.associative_scan((alpha, dyr * cr_n[None, :]), axis=1, combine_fn=_combine)
        g = g + gprod * g_in[:, None]
        x = dur * br_n[None, :]
        decayed = h - x  # = exp(delta_t A) * h_{t-1}
        grad_u += g * dtr * br_n[None, :]
        grad_dt += g * (ur * br_n[None, :] + a_n[:, None] * decayed)
        tl.store(dA_ptr + (rows * NC + c) * N + n, tl.sum(g * decayed * dtr, axis=1))
        tl.atomic_add(dB_ptr + (bc_row + n) * L + tr, tl.sum(g * dur, axis=0), mask=mask_r, sem="relaxed")
        tl.atomic_add(dC_ptr + (bc_row + n) * L + tr, tl.sum(h * dyr, axis=0), mask=mask_r, sem="relaxed")
    if HAS_D:
        grad_u += tl.load(D_ptr + d_offs).to(tl.float32)[:, None] * dyr
        tl.store(dD_ptr + rows * NC + c, tl.sum(dyr * ur, axis=1))
    if SOFTPLUS:
        grad_dt = grad_dt * tl.sigmoid(raw_r)
    grad_dt = tl.where(mask_r[None, :], grad_dt, 0.0)
    if HAS_BIAS:
        tl.store(dbias_ptr + rows * NC + c, tl.sum(grad_dt, axis=1))
    offs = rows[:, None] * L + tr[None, :]
    tl.store(du_ptr + offs, grad_u.to(du_ptr.dtype.element_ty), mask=mask_r[None, :])
    tl.store(ddt_ptr + offs, grad_dt.to(ddt_ptr.dtype.element_ty), mask=mask_r[None, :])


def _block_d(wanted: int, d_per_group: int) -> int:
    """Largest power of two <= wanted dividing the channels of a group (a tile never spans groups)."""
    block = 1
    while block * 2 <= wanted and d_per_group % (block * 2) == 0:
        block *= 2
    return block


def _carry(local: torch.Tensor, dsum: torch.Tensor, A: torch.Tensor, reverse: bool) -> torch.Tensor:
    batch, channels, n_chunks, n_state = local.shape
    out = torch.empty_like(local)
    block_c = min(MAX_CARRY_BLOCK, max(2, triton.next_power_of_2(n_chunks)))
    _carry_kernel[(batch * channels,)](
        local, dsum, A, out, channels, n_state, n_chunks,
        REVERSE=reverse, BLOCK_C=block_c, NP=triton.next_power_of_2(n_state), num_warps=4,
    )
    return out


def _geometry(u: torch.Tensor, B: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    return batch, channels, length, groups, n_state, channels // groups


def scan_forward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward scan on contiguous inputs; returns y and the chunk-start states (for backward)."""
    chunk = chunk or CHUNK
    batch, channels, length, groups, n_state, dpg = _geometry(u, B)
    n_chunks = triton.cdiv(length, chunk)
    f32 = dict(device=u.device, dtype=torch.float32)
    local = torch.empty(batch, channels, n_chunks, n_state, **f32)
    dsum = torch.empty(batch, channels, n_chunks, **f32)
    dummy = torch.empty(1, **f32)
    bias = delta_bias if delta_bias is not None else dummy
    geo = (length, channels, groups, n_state, n_chunks)
    bd = _block_d(FWD_STATE.block_d, dpg)
    _fwd_chunk_kernel[(batch * channels // bd, n_chunks)](
        u, delta, A, B, bias, local, dsum, *geo, channels // bd, dpg,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, BLOCK_D=bd, CHUNK=chunk,
        num_warps=FWD_STATE.num_warps,
    )
    hstart = _carry(local, dsum, A, reverse=False)
    y = torch.empty_like(u)
    bd = _block_d(FWD_OUT.block_d, dpg)
    _fwd_out_kernel[(batch * channels // bd, n_chunks)](
        u, delta, A, B, C, D if D is not None else dummy, bias, hstart, y, *geo, channels // bd, dpg,
        HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, BLOCK_D=bd, CHUNK=chunk,
        num_warps=FWD_OUT.num_warps,
    )
    return y, hstart


def scan_backward(
    grad_y: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    hstart: torch.Tensor,
    chunk: int | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients (du, ddelta, dA, dB, dC, dD, ddelta_bias) in the dtypes of the inputs."""
    chunk = chunk or CHUNK
    batch, channels, length, groups, n_state, dpg = _geometry(u, B)
    n_chunks = hstart.shape[2]
    f32 = dict(device=u.device, dtype=torch.float32)
    dummy = torch.empty(1, **f32)
    bias = delta_bias if delta_bias is not None else dummy
    geo = (length, channels, groups, n_state, n_chunks)
    flags = dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, CHUNK=chunk)
    agg = torch.empty(batch, channels, n_chunks, n_state, **f32)
    dsum = torch.empty(batch, channels, n_chunks, **f32)
    bd = _block_d(BWD_STATE.block_d, dpg)
    _bwd_chunk_kernel[(batch * channels // bd, n_chunks)](
        delta, A, C, bias, grad_y, agg, dsum, *geo, channels // bd, dpg, BLOCK_D=bd, **flags,
        num_warps=BWD_STATE.num_warps,
    )
    gin = _carry(agg, dsum, A, reverse=True)
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dA = torch.empty(batch, channels, n_chunks, n_state, **f32)
    dB = torch.zeros(B.shape, **f32)
    dC = torch.zeros(C.shape, **f32)
    dD = torch.empty(batch, channels, n_chunks, **f32) if D is not None else dummy
    dbias = torch.empty(batch, channels, n_chunks, **f32) if delta_bias is not None else dummy
    bd = _block_d(BWD_MAIN.block_d, dpg)
    _bwd_main_kernel[(batch * channels // bd, n_chunks)](
        u, delta, A, B, C, D if D is not None else dummy, bias, grad_y, hstart, gin,
        du, ddelta, dA, dB, dC, dD, dbias, *geo, channels // bd, dpg,
        HAS_D=D is not None, BLOCK_D=bd, REVERSE_GATHER=REVERSE_VIA == "gather", **flags,
        num_warps=BWD_MAIN.num_warps,
    )
    grad_D = dD.sum(dim=(0, 2)).to(D.dtype) if D is not None else None
    grad_bias = dbias.sum(dim=(0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddelta, dA.sum(dim=(0, 2)).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), grad_D, grad_bias


class _TritonScan(torch.autograd.Function):
    """Autograd wrapper: the forward keeps only the chunk-start states (b, d, L/CHUNK, N)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, chunk):  # type: ignore[override]
        y, hstart = scan_forward(u, delta, A, B, C, D, delta_bias, delta_softplus, chunk)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, hstart)
        ctx.delta_softplus = delta_softplus
        ctx.chunk = chunk
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):  # type: ignore[override]
        u, delta, A, B, C, D, delta_bias, hstart = ctx.saved_tensors
        grads = scan_backward(
            grad_y.contiguous(), u, delta, A, B, C, D, delta_bias, ctx.delta_softplus, hstart, ctx.chunk
        )
        return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), None, None)


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    chunk: int | None = None,
) -> torch.Tensor:
    """Triton selective scan; same contract as :func:`serpent_cli.ops.selective_scan`.

    ``chunk`` (a power of two; default ``CHUNK``) is the time-tile length, exposed for tests
    and tuning.  Inputs may be fp32, bf16 or fp16; states and reductions are fp32.
    """
    if chunk is None:  # short sequences (coarse scales) get a tile no longer than they are
        chunk = min(CHUNK, max(MIN_CHUNK, triton.next_power_of_2(u.shape[-1])))
        while triton.cdiv(u.shape[-1], chunk) > MAX_GRID_Y:  # chunks are the grid's y axis
            chunk *= 2
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two, got {chunk}")
    if u.shape[-1] == 0:
        return torch.empty_like(u)
    if triton.cdiv(u.shape[-1], chunk) > MAX_GRID_Y:
        raise ValueError(f"L={u.shape[-1]} needs a chunk longer than {chunk} (at most {MAX_GRID_Y} chunks)")
    u, delta, B, C = (t.contiguous() for t in (u, delta, B, C))
    A = A.float().contiguous() if A.dtype not in (torch.float32,) else A.contiguous()
    D = D.contiguous() if D is not None else None
    delta_bias = delta_bias.contiguous() if delta_bias is not None else None
    return _TritonScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, chunk)


__all__ = ["CHUNK", "KernelConfig", "scan_backward", "scan_forward", "selective_scan_triton"]
