"""Compiled CPU kernels of the selective scan (numba), forward and backward.

Why this shape (DESIGN.md section 3, backend 4):

* One parallel region per call, over (batch x position order x channel block) work items.  A shared CPU
  punishes many short parallel regions (each ends in a barrier); one region per scan does not.
* Channels-last data, ``(batch, position, [direction,] channel)``, so the innermost loop runs
  over contiguous channels and the compiler vectorises it; the state ``h[n, channel]`` of a
  block stays in L1.
* The cost to beat is one ``exp`` per (position, channel, state).  PyPI's llvmlite has no
  vector math library, so ``math.exp`` would stay a scalar libm call; :func:`fast_exp2` is a
  polynomial 2^x with the exponent set by bit manipulation, which LLVM vectorises (2 ulp in
  float32; rounding by the add-a-magic-constant trick and a minimax degree-5 polynomial took
  it from 22 to 18 vector operations: 1.1-1.4x the scan's throughput on one core).  A decay's
  exponent delta * A is <= 0 whenever softplus is on and A <= 0 (always, in SS2D), so its exp
  (:func:`exp2_decay`) skips the upper clamp: 15 operations, 1.1-1.25x more.  Float64
  inputs use ``math.exp`` (exact gradient checks, not speed).
* Four scan directions without unrolled copies: a direction only changes the order in which
  positions are visited.  SS2D hands the kernel its tensors in two position orders
  (row-major, and column-major, i.e. transposed; see ``serpent_cli.ops.to_scan_orders``),
  and each of the four directions walks one of them forwards or backwards.  Every step then
  reads the next (or previous) row of each array, so the walk is sequential in memory: a
  column-major walk over image-order tensors (as in an earlier version) jumps a whole image
  row per step and ran 2.5x slower at 256x256 (a TLB miss per array per step).  In plain
  mode (``directional=False``, one order, one direction) the same kernel serves mamba-ssm's
  ``selective_scan_fn`` contract, with B/C groups mapped onto channel blocks.
* The backward recomputes states from boundary states saved every ``segment`` positions
  by the forward, so its memory does not grow with L x N.
* The three innermost state loops (forward update, backward recompute, adjoint) run as explicit
  16-lane vector code for float32 blocks of 16-64 channels (:mod:`serpent_cli.ops.numba_simd`:
  1.4-1.8x the forward's throughput); the scalar loops here serve float64 and other widths, and
  are the reference the vector code is tested against.

Array conventions (all C-contiguous, same float dtype); Q position orders (2 in directional
mode, 1 in plain mode), J walks per order (forwards, then backwards when J = 2), direction
k = j * Q + q:
    u (b, Q, L, E); delta (b, Q, L, J, E) raw (before bias / softplus), or in low-rank mode
    (``dt_weight`` (K, R, E) with R > 0) delta (b, Q, L, J, R), the dt_proj inputs, each
    step's delta being delta[..., :] @ dt_weight[k] (never stored: R is 1-32, E up to 1024,
    so this saves the largest tensor of the scan); A (K, E, N);
    Bm, Cm (b, Q, L, G, N) with G = J in directional mode, G = groups in plain mode;
    D, bias (K, E); y (b, Q, L, E), the sum of order q's walks, in order q.
"""

from __future__ import annotations

import math

# isort: off
from serpent_cli import numba_setup  # noqa: F401  (first: numba's cache folder and CPU target)
# isort: on
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

from serpent_cli.ops.numba_simd import (
    EXP2_COEFFS,
    LOG2E,
    adjoint_simd,
    backward_segment_simd,
    forward_simd,
    forward_walk_simd,
    recompute_simd,
)

LN2 = 0.6931471805599453

# Not "fast": no-NaN / no-inf flags would let LLVM drop the clamps and break NaN propagation
# (the reduced-precision fallback relies on seeing a NaN).  Reassociation lets the channel
# reductions of the backward vectorise; contraction gives FMAs.
FASTMATH = {"contract", "reassoc", "nsz", "arcp", "afn"}
JIT = {"nogil": True, "cache": True, "fastmath": FASTMATH, "error_model": "numpy"}


_BIT_TWINS = {types.int32: (types.float32, ir.FloatType()), types.float32: (types.int32, ir.IntType(32))}


@intrinsic
def _reinterpret_bits(typingctx, value):  # type: ignore[no-untyped-def]
    """The same 32 bits as the other type: int32 -> float32, float32 -> int32 (a vectorisable bitcast)."""
    if value not in _BIT_TWINS:
        return None
    result, llvm_type = _BIT_TWINS[value]

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], llvm_type)

    return result(value), codegen


def fast_exp2(x):  # type: ignore[no-untyped-def]  # pragma: no cover - replaced by the overload
    """2**x; float32: polynomial + exponent bits (vectorisable), float64: libm."""
    return 2.0**x


def exp2_decay(x):  # type: ignore[no-untyped-def]  # pragma: no cover - replaced by the overload
    """2**x for x <= 127 (a decay's exponent, <= 0): :func:`fast_exp2` without its upper clamp.

    LLVM merges the two clamps into compare / compare / blend / blend; with one clamp left it is a
    single max, 15 vector operations per state update instead of 18 (1.1-1.25x the scan's throughput).
    """
    return 2.0**x




def _exp2_overload(clamp_high: bool):  # type: ignore[no-untyped-def]
    """The float32 / float64 implementations of :func:`fast_exp2` (``clamp_high``) and :func:`exp2_decay`."""

    def typer(x):  # type: ignore[no-untyped-def]
        if x == types.float32:
            c0, c1, c2, c3, c4, c5 = (np.float32(c) for c in EXP2_COEFFS)
            lo, hi = np.float32(-126.0), np.float32(127.0)
            # 1.5 * 2^23 + 127: for |x| <= 127, x + magic lies in [2^23, 2^24), where the float32 spacing is
            # 1, so the addition rounds x to the nearest integer w and leaves w + 127 (+ 2^22) in the low
            # mantissa bits; shifted left by 23 those bits are the float32 exponent field of 2^w.
            magic = np.float32(12582912.0 + 127.0)

            def impl32(x):  # type: ignore[no-untyped-def]
                # Clamp to the normal float32 range (2^-126 .. 2^127); 2^-126 is 0 for a decay.
                # Plain comparisons, not min/max: those lower to branches that stop vectorisation,
                # and a NaN passes through both (and through the polynomial).
                if x < lo:
                    x = lo
                if clamp_high and x > hi:
                    x = hi
                shifted = x + magic
                f = x - (shifted - magic)  # x - round(x), exact, in [-1/2, 1/2]
                p = c0 + f * (c1 + f * (c2 + f * (c3 + f * (c4 + f * c5))))
                return p * _reinterpret_bits(np.int32(_reinterpret_bits(shifted) << np.int32(23)))

            return impl32

        def impl64(x):  # type: ignore[no-untyped-def]
            return math.exp(x * LN2)

        return impl64

    return typer


# Only "contract" here: the rounding trick, (x + M) - M, is exactly what reassociation would fold away.
overload(fast_exp2, jit_options={"fastmath": {"contract"}})(_exp2_overload(clamp_high=True))
overload(exp2_decay, jit_options={"fastmath": {"contract"}})(_exp2_overload(clamp_high=False))


@numba.njit(inline="always")
def decay_factor(x, bounded):  # type: ignore[no-untyped-def]
    """2**x of a state decay; ``bounded`` (x <= 0 known) takes the cheaper exp.

    ``bounded`` is constant over the kernels' channel loops, so LLVM hoists the branch and
    vectorises each version of the loop separately.
    """
    if bounded:
        return exp2_decay(x)
    return fast_exp2(x)


def softplus_parts(x):  # type: ignore[no-untyped-def]  # pragma: no cover - replaced by the overload
    """(softplus(x), sigmoid(x)) without a libm call in float32."""
    return x, x


@overload(softplus_parts, jit_options={"fastmath": FASTMATH})
def _softplus_parts_impl(x):  # type: ignore[no-untyped-def]
    if x == types.float32:
        zero, one, two, log2e = np.float32(0.0), np.float32(1.0), np.float32(2.0), np.float32(-LOG2E)
        k3, k5, k7, k9 = np.float32(1 / 3), np.float32(1 / 5), np.float32(1 / 7), np.float32(1 / 9)
        k11, k13, k15 = np.float32(1 / 11), np.float32(1 / 13), np.float32(1 / 15)

        def impl32(x):  # type: ignore[no-untyped-def]
            # softplus(x) = max(x, 0) + log1p(z), z = exp(-|x|) in (0, 1]; log1p(z) = 2 atanh(s),
            # s = z / (2 + z) in (0, 1/3], a series that converges fast there (8 terms: < 1e-8).
            z = exp2_decay(abs(x) * log2e)  # <= 0
            s = z / (two + z)
            s2 = s * s
            series = s * (one + s2 * (k3 + s2 * (k5 + s2 * (k7 + s2 * (k9 + s2 * (k11 + s2 * (k13 + s2 * k15)))))))
            sig = one / (one + z)
            pos = x
            if x < zero:
                sig = z * sig
                pos = zero
            return pos + two * series, sig

        return impl32

    def impl64(x):  # type: ignore[no-untyped-def]
        z = math.exp(-abs(x))
        sig = 1.0 / (1.0 + z)
        if x < 0.0:
            sig = z * sig
        return max(x, 0.0) + math.log1p(z), sig

    return impl64


@numba.njit(inline="always")
def position(j: int, t: int, length: int) -> int:
    """Storage position of step t of walk j over one position order: forwards, then backwards."""
    if j == 0:
        return t
    return length - 1 - t


@numba.njit(inline="always")
def load_direction(A, D, bias, k, e0, a2, dk, bk):  # type: ignore[no-untyped-def]
    """Per (direction, channel block): A * log2(e) transposed to (N, block) rows, D and the delta bias.

    Returns whether every A is <= 0 (a NaN counts as not): then, with delta >= 0 (softplus), every
    decay exponent delta * A is <= 0 and :func:`decay_factor` may take the cheaper exp.
    """
    n_state, block = a2.shape
    nonpositive = True
    for n in range(n_state):
        for e in range(block):
            value = A[k, e0 + e, n] * LOG2E
            a2[n, e] = value
            if not value <= 0.0:
                nonpositive = False
    for e in range(block):
        dk[e] = D[k, e0 + e]
        bk[e] = bias[k, e0 + e]
    return nonpositive


@numba.njit(inline="always")
def raw_delta(delta, dt_weight, b, q, p, j, k, e0, bk, raw):  # type: ignore[no-untyped-def]
    """raw[e] = delta bias + delta of one step: given (full mode) or dts @ dt_weight[k] (low-rank mode)."""
    block = raw.shape[0]
    rank = dt_weight.shape[1]
    if rank > 0:
        for e in range(block):
            raw[e] = bk[e]
        for r in range(rank):
            x = delta[b, q, p, j, r]
            wrow = dt_weight[k, r, e0 : e0 + block]
            for e in range(block):
                raw[e] += x * wrow[e]
    else:
        drow = delta[b, q, p, j, e0 : e0 + block]
        for e in range(block):
            raw[e] = drow[e] + bk[e]


@numba.njit(parallel=True, **JIT)
def scan_forward(u, delta, dt_weight, A, Bm, Cm, D, bias, softplus, directional, block, segment, y, saved):  # type: ignore[no-untyped-def]
    """y[:, q] = sum over the walks of order q of the scan (+ D u); saved[b, k, s] = state before step s * segment.

    ``saved`` has a zero-length segment axis when no backward will follow (inference).
    """
    batch, orders, length, channels = u.shape
    walks = delta.shape[3]
    n_state = A.shape[2]
    blocks = channels // block
    save = saved.shape[2] > 0
    dtype = u.dtype
    for item in prange(batch * orders * blocks):
        b = item // (orders * blocks)
        q = item // blocks % orders
        e0 = (item % blocks) * block
        h = np.empty((n_state, block), dtype)
        a2 = np.empty((n_state, block), dtype)
        dt = np.empty(block, dtype)
        du = np.empty(block, dtype)
        acc = np.empty(block, dtype)
        raws = np.empty(block, dtype)
        dk = np.empty(block, dtype)
        bk = np.empty(block, dtype)
        for j in range(walks):
            k = j * orders + q
            group = j if directional else e0 // (channels // Bm.shape[3])
            bounded = load_direction(A, D, bias, k, e0, a2, dk, bk) and softplus
            h[:, :] = 0.0
            if forward_walk_simd(h, a2, Bm, Cm, u, delta, dt_weight, bk, dk, y, saved, b, q, j, k, group, e0,
                                 softplus, bounded, save, segment) > 0:
                continue
            for t in range(length):
                if save and t % segment == 0:
                    for n in range(n_state):
                        saved[b, k, t // segment, n, e0 : e0 + block] = h[n]
                p = position(j, t, length)
                yrow = y[b, q, p, e0 : e0 + block]
                urow = u[b, q, p, e0 : e0 + block]
                raw_delta(delta, dt_weight, b, q, p, j, k, e0, bk, raws)
                for e in range(block):
                    raw = raws[e]
                    if softplus:
                        raw = softplus_parts(raw)[0]
                    dt[e] = raw
                    du[e] = raw * urow[e]
                    acc[e] = dk[e] * urow[e]
                brow = Bm[b, q, p, group]
                crow = Cm[b, q, p, group]
                if forward_simd(h, a2, brow, crow, dt, du, acc, bounded) == 0:
                    for n in range(n_state):
                        bn = brow[n]
                        cn = crow[n]
                        hrow = h[n]
                        arow = a2[n]
                        for e in range(block):
                            hn = decay_factor(dt[e] * arow[e], bounded) * hrow[e] + du[e] * bn
                            hrow[e] = hn
                            acc[e] += cn * hn
                if j == 0:
                    yrow[:] = acc
                else:
                    for e in range(block):
                        yrow[e] += acc[e]


@numba.njit(parallel=True, **JIT)
def scan_backward(  # type: ignore[no-untyped-def]
    u, delta, dt_weight, A, Bm, Cm, D, bias, softplus, directional, block, segment, saved, grad_y,
    grad_u, grad_delta, grad_dt_weight, grad_A, grad_B, grad_C, grad_D, grad_bias,
):
    """Analytic gradients, walking each direction backwards one segment at a time.

    Per segment the states are recomputed from the saved boundary state into a small
    buffer, then the adjoint g_t = a_{t+1} g_{t+1} + C_t dy_t runs backwards through it.
    Outputs: grad_u (b, Q, L, E) written in full; grad_delta (1, b, Q, L, J, E) in full mode
    (every block writes its channels) or (blocks, b, Q, L, J, R) in low-rank mode, grad_B,
    grad_C (blocks, b, Q, L, G, N): one partial per channel block (summed by the caller;
    zeroed by the caller where a block does not write); grad_A (b, K, E, N), grad_dt_weight
    (b, K, R, E), grad_D, grad_bias (b, K, E): one partial per batch element.
    """
    batch, orders, length, channels = u.shape
    walks = delta.shape[3]
    n_state = A.shape[2]
    blocks = channels // block
    dtype = u.dtype
    zero = dtype.type(0.0)
    one = dtype.type(1.0)
    for item in prange(batch * orders * blocks):
        b = item // (orders * blocks)
        q = item // blocks % orders
        blk = item % blocks
        e0 = blk * block
        a2 = np.empty((n_state, block), dtype)
        ak = np.empty((n_state, block), dtype)
        g = np.empty((n_state, block), dtype)
        gA = np.empty((n_state, block), dtype)
        states = np.empty((segment + 1, n_state, block), dtype)
        decays = np.empty((segment, n_state, block), dtype)  # exp(delta A) of the recompute, reused
        dts = np.empty((segment, block), dtype)
        sigs = np.empty((segment, block), dtype)
        du = np.empty(block, dtype)
        gdt = np.empty(block, dtype)
        gdu = np.empty(block, dtype)
        dk = np.empty(block, dtype)
        bk = np.empty(block, dtype)
        gD = np.empty(block, dtype)
        gbias = np.empty(block, dtype)
        raws = np.empty(block, dtype)
        grows = np.empty(block, dtype)
        rank = dt_weight.shape[1]
        gW = np.empty((rank, block), dtype)
        gslot = blk if rank > 0 else 0
        for p in range(length):
            grad_u[b, q, p, e0 : e0 + block] = zero
        for j in range(walks):
            k = j * orders + q
            group = j if directional else e0 // (channels // Bm.shape[3])
            bounded = load_direction(A, D, bias, k, e0, a2, dk, bk) and softplus
            g[:, :] = 0.0
            gA[:, :] = 0.0
            for n in range(n_state):
                for e in range(block):
                    ak[n, e] = A[k, e0 + e, n]
            for e in range(block):
                gD[e] = 0.0
                gbias[e] = 0.0
            gW[:, :] = 0.0
            n_segments = (length + segment - 1) // segment
            for s in range(n_segments - 1, -1, -1):
                t0 = s * segment
                t1 = min(length, t0 + segment)
                # 1. Recompute the states of this segment from its saved start state.
                for n in range(n_state):
                    states[0, n] = saved[b, k, s, n, e0 : e0 + block]
                if backward_segment_simd(states, decays, a2, ak, g, gA, Bm, Cm, u, delta, dt_weight, bk, dk, dts, sigs,
                                         grad_y, grad_u, gbias, gD, gW, grad_B, grad_C, grad_delta, b, q, j, k, group,
                                         e0, blk, gslot, t0, t1, softplus, bounded) > 0:
                    continue
                for t in range(t0, t1):
                    i = t - t0
                    p = position(j, t, length)
                    urow = u[b, q, p, e0 : e0 + block]
                    dtrow = dts[i]
                    sigrow = sigs[i]
                    raw_delta(delta, dt_weight, b, q, p, j, k, e0, bk, raws)
                    for e in range(block):
                        raw = raws[e]
                        sig = one
                        if softplus:
                            raw, sig = softplus_parts(raw)
                        dtrow[e] = raw
                        sigrow[e] = sig
                        du[e] = raw * urow[e]
                    brow = Bm[b, q, p, group]
                    if recompute_simd(states[i], states[i + 1], decays[i], a2, brow, dtrow, du, bounded) == 0:
                        for n in range(n_state):
                            bn = brow[n]
                            arow = a2[n]
                            prev = states[i, n]
                            nxt = states[i + 1, n]
                            decay_row = decays[i, n]
                            for e in range(block):
                                a = decay_factor(dtrow[e] * arow[e], bounded)
                                decay_row[e] = a
                                nxt[e] = a * prev[e] + du[e] * bn
                # 2. The adjoint, backwards through the segment.
                for t in range(t1 - 1, t0 - 1, -1):
                    i = t - t0
                    p = position(j, t, length)
                    urow = u[b, q, p, e0 : e0 + block]
                    gyrow = grad_y[b, q, p, e0 : e0 + block]
                    dtrow = dts[i]
                    brow = Bm[b, q, p, group]
                    crow = Cm[b, q, p, group]
                    gbrow = grad_B[blk, b, q, p, group]
                    gcrow = grad_C[blk, b, q, p, group]
                    for e in range(block):
                        du[e] = dtrow[e] * urow[e]
                        gdt[e] = 0.0
                        gdu[e] = 0.0
                    if adjoint_simd(g, gA, decays[i], states[i], states[i + 1], ak, brow, crow, gbrow, gcrow, gyrow,
                                    du, dtrow, gdu, gdt, bounded) == 0:
                        for n in range(n_state):
                            bn = brow[n]
                            cn = crow[n]
                            decrow = decays[i, n]
                            akrow = ak[n]
                            grow = g[n]
                            garow = gA[n]
                            prev = states[i, n]
                            cur = states[i + 1, n]
                            acc_b = zero
                            acc_c = zero
                            for e in range(block):
                                a = decrow[e]
                                gn = grow[e] + cn * gyrow[e]
                                acc_c += cur[e] * gyrow[e]
                                acc_b += gn * du[e]
                                gdu[e] += gn * bn
                                decayed = gn * prev[e] * a  # dL/da * a
                                gdt[e] += decayed * akrow[e]
                                garow[e] += decayed * dtrow[e]
                                grow[e] = a * gn
                            gbrow[n] = acc_b
                            gcrow[n] = acc_c
                    gurow = grad_u[b, q, p, e0 : e0 + block]
                    sigrow = sigs[i]
                    for e in range(block):
                        uu = urow[e]
                        gurow[e] += gdu[e] * dtrow[e] + dk[e] * gyrow[e]
                        graw = (gdt[e] + gdu[e] * uu) * sigrow[e]
                        grows[e] = graw
                        gbias[e] += graw
                        gD[e] += gyrow[e] * uu
                    if rank > 0:  # back through delta = dts @ dt_weight[k]
                        for r in range(rank):
                            x = delta[b, q, p, j, r]
                            wrow = dt_weight[k, r, e0 : e0 + block]
                            gwrow = gW[r]
                            acc_x = zero
                            for e in range(block):
                                acc_x += grows[e] * wrow[e]
                                gwrow[e] += grows[e] * x
                            grad_delta[gslot, b, q, p, j, r] = acc_x
                    else:
                        grad_delta[gslot, b, q, p, j, e0 : e0 + block] = grows
            for n in range(n_state):
                for e in range(block):
                    grad_A[b, k, e0 + e, n] = gA[n, e]
            for e in range(block):
                grad_D[b, k, e0 + e] = gD[e]
                grad_bias[b, k, e0 + e] = gbias[e]
            for r in range(rank):
                for e in range(block):
                    grad_dt_weight[b, k, r, e0 + e] = gW[r, e]
