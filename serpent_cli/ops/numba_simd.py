"""The scan's per-position work as explicit 16-lane vector code (LLVM IR written with llvmlite).

Why: for every (position, channel block) the kernels of :mod:`serpent_cli.ops.numba_kernels`
run a few loops over the block's channels (dt_proj's low-rank product, softplus, D u, the output)
and a loop over the N states with the channels inside.  Left to LLVM's loop vectoriser, the state
loop keeps everything in memory (the output accumulator loaded and stored once per state, delta
and delta * u reloaded per state, constants re-broadcast: 2.4x the cost of its arithmetic, measured
on one core of an Emerald Rapids Xeon), and the loops around it, passing values through small
arrays, cost as much again at N = 11.  Here each position's whole step runs with a block of 16-64
channels held in vector registers; memory sees only what must be there (the states, A, the
backward's running sums): the forward scan 1.5-2.2x, the backward 1.4-1.9x, with the same results
up to float32 rounding.  One call covers a whole walk (forward) or segment (backward), the
positions' rows found by pointer arithmetic rather than numba slices (1.03-1.13x more), and the
next position's prelude (low-rank dt_proj, softplus) is issued before this position's state loop,
so its dependency chain overlaps the loop (1.04-1.25x more at 16-64 channels).

* ``<16 x float>`` is portable IR: LLVM lowers it to one zmm register on AVX-512, two ymm on
  AVX2, four xmm on SSE or NEON.
* The decay's 2^x: with AVX-512, ``vscalefps`` applies the integer part (one instruction, exact,
  underflowing to 0, NaN passing through), so no clamps and no exponent bits: 12 vector
  operations per state update instead of 15.  Elsewhere the same bit trick as the scalar kernels
  (:func:`serpent_cli.ops.numba_kernels.fast_exp2`).
* Every floating-point instruction carries the ``contract`` flag.  numba's fast-math pass adds
  its own flags only to instructions that have none, and reassociation would fold the rounding
  trick ``(x + M) - M`` to ``x``.
* Only float32 blocks of 16, 32, 48 or 64 channels take these paths (the whole-position ones also
  need a low-rank delta); everything else (float64 gradient checks, other widths, a full delta)
  runs the kernels' scalar loops, which are also the reference the tests hold these paths to.

numba caches a kernel by its own source file: after editing this file, empty the per-user
cache (``~/.cache/serpent/numba``) or the kernels (numba_kernels, numba_ss2d) keep the old code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16
LOG2E = 1.4426950408889634
WIDE = 4  # at most 4 vectors per block: 64 channels (scan_numba.MAX_BLOCK)
F32 = ir.FloatType()
I32 = ir.IntType(32)
VF = ir.VectorType(F32, LANES)
VI = ir.VectorType(I32, LANES)
FLAGS = ("contract",)
REDUCE_FLAGS = ("contract", "reassoc")  # a horizontal sum in any order (as the scalar kernels' reassoc)

# 2^f on |f| <= 1/2: a near-minimax degree-5 fit of the relative error (1.4e-7 on the interval,
# 1.9e-7 = 2 ulp with the float32 rounding; a Taylor polynomial needs degree 6 for that).  The
# scalar kernels (numba_kernels.fast_exp2) use the same polynomial.
EXP2_COEFFS = (1.0000001192092896, 0.6931470036506653, 0.24022115767002106, 0.05550665408372879,
               0.009675692766904831, 0.0013292087242007256)


def has_avx512(context) -> bool:  # type: ignore[no-untyped-def]
    """The target numba compiles for has AVX-512F (then ``vscalefps`` is available)."""
    try:
        features = context.codegen()._tm_features
    except Exception:  # numba internals moved: the portable exp
        return False
    return "+avx512f" in str(features).split(",")


class Lanes:
    """16-lane float32 vector arithmetic on an IR builder, every instruction flagged ``contract``."""

    def __init__(self, builder: ir.IRBuilder, scalef: bool) -> None:
        self.b = builder
        self.scalef = scalef

    @staticmethod
    def const(value: float) -> ir.Constant:
        return ir.Constant(VF, [ir.Constant(F32, float(np.float32(value)))] * LANES)

    def splat(self, scalar: ir.Value) -> ir.Value:
        undef = ir.Constant(VF, ir.Undefined)
        first = self.b.insert_element(undef, scalar, ir.Constant(I32, 0))
        return self.b.shuffle_vector(first, undef, ir.Constant(VI, [0] * LANES))

    def add(self, a: ir.Value, c: ir.Value) -> ir.Value:
        return self.b.fadd(a, c, flags=FLAGS)

    def sub(self, a: ir.Value, c: ir.Value) -> ir.Value:
        return self.b.fsub(a, c, flags=FLAGS)

    def mul(self, a: ir.Value, c: ir.Value) -> ir.Value:
        return self.b.fmul(a, c, flags=FLAGS)

    def fma(self, a: ir.Value, c: ir.Value, d: ir.Value) -> ir.Value:
        """a * c + d (fused where the CPU has FMA)."""
        return self.add(self.mul(a, c), d)

    def load(self, row: ir.Value, lane0: ir.Value) -> ir.Value:
        return self.b.load(self.b.bitcast(self.b.gep(row, [lane0]), VF.as_pointer()), align=4)

    def store(self, value: ir.Value, row: ir.Value, lane0: ir.Value) -> None:
        self.b.store(value, self.b.bitcast(self.b.gep(row, [lane0]), VF.as_pointer()), align=4)

    def hsum(self, v: ir.Value) -> ir.Value:
        """The sum of the 16 lanes (a shuffle tree)."""
        fnty = ir.FunctionType(F32, [F32, VF])
        fn = cgutils.get_or_insert_function(self.b.module, fnty, "llvm.vector.reduce.fadd.v16f32")
        return self.b.call(fn, [ir.Constant(F32, -0.0), v], fastmath=REDUCE_FLAGS)

    def softplus(self, x: ir.Value, slope: bool = False):  # type: ignore[no-untyped-def]
        """log(1 + e^x) per lane, as numba_kernels.softplus_parts: max(x, 0) + 2 atanh(z / (2 + z)), z = e^-|x|.

        With ``slope``, (softplus, sigmoid) as a pair: the sigmoid is 1 / (1 + z), times z where x < 0.
        """
        fabs = cgutils.get_or_insert_function(self.b.module, ir.FunctionType(VF, [VF]), "llvm.fabs.v16f32")
        z = self.exp2(self.mul(self.b.call(fabs, [x]), self.const(-LOG2E)), clamp_high=False)
        s = self.b.fdiv(z, self.add(self.const(2.0), z), flags=FLAGS)
        s2 = self.mul(s, s)
        series = self.const(1 / 15)
        for k in (13, 11, 9, 7, 5, 3):
            series = self.fma(s2, series, self.const(1 / k))
        series = self.mul(s, self.fma(s2, series, self.const(1.0)))
        zero = self.const(0.0)
        negative = self.b.fcmp_ordered("<", x, zero, flags=FLAGS)
        value = self.fma(self.const(2.0), series, self.b.select(negative, zero, x))
        if not slope:
            return value
        sig = self.b.fdiv(self.const(1.0), self.add(self.const(1.0), z), flags=FLAGS)
        return value, self.b.select(negative, self.mul(z, sig), sig)

    def silu(self, x: ir.Value) -> ir.Value:
        """x * sigmoid(x) = x / (1 + 2^(-x log2 e)); for very negative x, 2^... overflows to inf (or the clamp's
        2^127): about -0."""
        denominator = self.add(self.const(1.0), self.exp2(self.mul(x, self.const(-LOG2E)), clamp_high=True))
        return self.b.fdiv(x, denominator, flags=FLAGS)

    def exp2(self, x: ir.Value, clamp_high: bool) -> ir.Value:
        """2^x per lane, 2 ulp; ``clamp_high`` False when x <= 0 is known (a decay's exponent)."""
        c = [self.const(v) for v in EXP2_COEFFS]
        if self.scalef:
            rint = cgutils.get_or_insert_function(self.b.module, ir.FunctionType(VF, [VF]), "llvm.rint.v16f32")
            whole = self.b.call(rint, [x])
            frac = self.sub(x, whole)
        else:
            lo, hi = self.const(-126.0), self.const(127.0)
            x = self.b.select(self.b.fcmp_ordered("<", x, lo, flags=FLAGS), lo, x)
            if clamp_high:
                x = self.b.select(self.b.fcmp_ordered(">", x, hi, flags=FLAGS), hi, x)
            magic = self.const(12582912.0 + 127.0)  # see numba_kernels._exp2_overload
            shifted = self.add(x, magic)
            frac = self.sub(x, self.sub(shifted, magic))
        p = c[5]
        for k in (4, 3, 2, 1, 0):
            p = self.fma(p, frac, c[k])
        if self.scalef:
            fnty = ir.FunctionType(VF, [VF, VF, VF, ir.IntType(16), I32])
            scalef = cgutils.get_or_insert_function(self.b.module, fnty, "llvm.x86.avx512.mask.scalef.ps.512")
            # p * 2^whole, all 16 lanes (mask -1), current rounding mode (4).
            return self.b.call(scalef, [p, whole, ir.Constant(VF, ir.Undefined), ir.Constant(ir.IntType(16), -1),
                                        ir.Constant(I32, 4)])
        bits = self.b.shl(self.b.bitcast(shifted, VI), ir.Constant(VI, [23] * LANES))
        return self.mul(p, self.b.bitcast(bits, VF))


class Views:
    """Float32 rows and elements behind data pointers, with numba's shapes and byte strides.

    One entry per array (or per view into one): the vector bodies index entry ``i`` by row
    (:meth:`row`) or element (:meth:`item`), whatever the entry's strides.
    """

    def __init__(self, builder: ir.IRBuilder, entries: list[tuple[ir.Value, list[ir.Value], list[ir.Value]]]) -> None:
        self.b = builder
        self.entries = entries

    @classmethod
    def of_arrays(cls, context, builder: ir.IRBuilder, arrtypes: Sequence[types.Array],  # type: ignore[no-untyped-def]
                  values: Sequence[ir.Value]) -> Views:
        entries = []
        for arrtype, value in zip(arrtypes, values, strict=True):
            ary = context.make_array(arrtype)(context, builder, value)
            entries.append((ary.data, cgutils.unpack_tuple(builder, ary.shape),
                            cgutils.unpack_tuple(builder, ary.strides)))
        return cls(builder, entries)

    def shape(self, i: int) -> list[ir.Value]:
        return self.entries[i][1]

    def _at(self, pointer: ir.Value, byte_offset: ir.Value) -> ir.Value:
        base = self.b.bitcast(pointer, ir.IntType(8).as_pointer())
        return self.b.bitcast(self.b.gep(base, [byte_offset]), F32.as_pointer())

    def row(self, i: int, index: ir.Value | None = None) -> ir.Value:
        """float* to a 1-D entry's data, or to row ``index`` of a 2-D entry (rows are unit-stride)."""
        data, _, strides = self.entries[i]
        return data if index is None else self._at(data, self.b.mul(index, strides[0]))

    def item(self, i: int, index: ir.Value) -> ir.Value:
        """Element ``index`` of a 1-D entry of any stride (loaded)."""
        data, _, strides = self.entries[i]
        return self.b.load(self._at(data, self.b.mul(index, strides[-1])))

    def view(self, i: int, leading: Sequence[ir.Value], channel0: ir.Value | None = None,
             width: ir.Value | None = None) -> tuple[ir.Value, list[ir.Value], list[ir.Value]]:
        """The entry of ``array[*leading]``, or of ``array[*leading, ..., channel0 : channel0 + width]``."""
        data, shape, strides = self.entries[i]
        offset = ir.Constant(strides[0].type, 0)
        for index, stride in zip(leading, strides, strict=False):
            offset = self.b.add(offset, self.b.mul(index, stride))
        shape = list(shape[len(leading):])
        if channel0 is not None:
            offset = self.b.add(offset, self.b.mul(channel0, strides[-1]))
            shape[-1] = width
        return self._at(data, offset), shape, list(strides[len(leading):])


def _whole_block(body: Callable, arrays: tuple, scalars: tuple, condition: Callable | None = None):  # type: ignore[type-arg,no-untyped-def]
    """Typing and code generation of an intrinsic ``f(*arrays, *scalars) -> intp`` running ``body`` on a block.

    The block width is the first array's last dimension.  Float32 blocks of 16, 32, 48 or 64 channels
    run as 1-4 vectors (one copy of the code each) and return the width; anything else (float64, other
    widths, or ``condition(arrays, scalars)`` false at run time) returns 0 and the caller's scalar loop
    does the work.  ``body(lanes, arrays, lane0s, scalars)`` generates the code for the vectors starting
    at channels ``lane0s``.
    """
    if not all(isinstance(a, types.Array) for a in arrays):
        return None
    vector = all(a.dtype == types.float32 for a in arrays)
    n_arrays = len(arrays)

    def codegen(context, builder, signature, llargs):  # type: ignore[no-untyped-def]
        intp = context.get_value_type(types.intp)
        done = cgutils.alloca_once_value(builder, ir.Constant(intp, 0))
        if not vector:
            return builder.load(done)
        lanes = Lanes(builder, has_avx512(context))
        arrs = Views.of_arrays(context, builder, signature.args[:n_arrays], llargs[:n_arrays])
        llscalars = list(llargs[n_arrays:])
        width = arrs.shape(0)[-1]
        ready = condition(arrs, llscalars) if condition is not None else cgutils.true_bit
        for count in range(1, WIDE + 1):
            fits = builder.icmp_signed("==", width, ir.Constant(intp, LANES * count))
            with builder.if_then(builder.and_(ready, fits)):
                body(lanes, arrs, [ir.Constant(intp, LANES * v) for v in range(count)], llscalars)
                builder.store(width, done)
        return builder.load(done)

    return types.intp(*arrays, *scalars), codegen


def _state_loop(lanes: Lanes, n_state: ir.Value, bounded: ir.Value, step: Callable) -> None:  # type: ignore[type-arg]
    """``for n in range(n_state): step(n, clamp_high)``; without vscalefps in two copies chosen once by ``bounded``."""
    b = lanes.b
    if lanes.scalef:  # no clamps either way
        with cgutils.for_range(b, n_state) as loop:
            step(loop.index, False)
        return
    with b.if_else(bounded) as (then, otherwise):
        for branch, clamp_high in ((then, False), (otherwise, True)):
            with branch, cgutils.for_range(b, n_state) as loop:
                step(loop.index, clamp_high)


def _update_states(lanes: Lanes, arrs: Views, rows: tuple[int, int, int, int], lane0s: list[ir.Value],
                   dt: list[ir.Value], du: list[ir.Value], acc: list[ir.Value], bounded: ir.Value) -> None:
    """h[n] = 2^(dt a2[n]) h[n] + du B[n]; acc += C[n] h[n], over n; ``rows`` index h, a2, B, C in ``arrs``.

    dt, du: one vector per lane group; acc: one stack slot per lane group (kept in registers by LLVM).
    """
    b = lanes.b
    ih, ia, ib, ic = rows

    def step(n: ir.Value, clamp_high: bool) -> None:
        h, a2 = arrs.row(ih, n), arrs.row(ia, n)
        bn, cn = lanes.splat(arrs.item(ib, n)), lanes.splat(arrs.item(ic, n))
        for v, e in enumerate(lane0s):
            decay = lanes.exp2(lanes.mul(dt[v], lanes.load(a2, e)), clamp_high)
            hn = lanes.fma(decay, lanes.load(h, e), lanes.mul(du[v], bn))
            lanes.store(hn, h, e)
            b.store(lanes.fma(cn, hn, b.load(acc[v])), acc[v])

    _state_loop(lanes, arrs.shape(ih)[0], bounded, step)


def _forward(lanes: Lanes, arrs: Views, lane0s: list[ir.Value], scalars: list[ir.Value]) -> None:
    """The state loop of one position (arrays: h, a2, B, C, dt, du, acc; scalar: bounded); acc updated."""
    b = lanes.b
    dt = [lanes.load(arrs.row(4), e) for e in lane0s]
    du = [lanes.load(arrs.row(5), e) for e in lane0s]
    acc = [cgutils.alloca_once_value(b, lanes.load(arrs.row(6), e)) for e in lane0s]
    _update_states(lanes, arrs, (0, 1, 2, 3), lane0s, dt, du, acc, scalars[0])
    for v, e in enumerate(lane0s):
        lanes.store(b.load(acc[v]), arrs.row(6), e)


def _prelude(lanes: Lanes, arrs: Views, lane0s: list[ir.Value]) -> list[list[ir.Value]]:
    """[delta, delta u, D u] of one position, one vector per lane group: delta = softplus(bias + dts @ W).

    Arrays as :func:`_finish`'s (only u, dts, W, bias and D are read).
    """
    dt = [lanes.softplus(raw) for raw in _low_rank_delta(lanes, arrs, 5, 6, 7, lane0s)]
    u = [lanes.load(arrs.row(4), e) for e in lane0s]
    return [dt, [lanes.mul(d, x) for d, x in zip(dt, u, strict=True)],
            [lanes.mul(lanes.load(arrs.row(8), e), x) for e, x in zip(lane0s, u, strict=True)]]


def _finish(lanes: Lanes, arrs: Views, lane0s: list[ir.Value], values: list[list[ir.Value]], first: ir.Value,
            bounded: ir.Value) -> None:
    """The state loop of one position and its output, from its :func:`_prelude` values.

    Arrays: h, a2 (N, block); B, C (N,); u (block,); dts (R,), the dt_proj input; W (R, block), its
    weight; bias, D (block,); y (block,).  acc = D u, plus the state loop; y gets acc (``first``: the
    walk's first pass over y, which stores; the second adds).
    """
    b = lanes.b
    dt, du, d_u = values
    acc = [cgutils.alloca_once_value(b, x) for x in d_u]
    _update_states(lanes, arrs, (0, 1, 2, 3), lane0s, dt, du, acc, bounded)
    y = arrs.row(9)
    with b.if_else(first) as (then, otherwise):
        with then:
            for v, e in enumerate(lane0s):
                lanes.store(b.load(acc[v]), y, e)
        with otherwise:
            for v, e in enumerate(lane0s):
                lanes.store(lanes.add(lanes.load(y, e), b.load(acc[v])), y, e)


class _Carried:
    """Vectors carried from one loop iteration to the next, in stack slots (promoted to registers by LLVM)."""

    def __init__(self, builder: ir.IRBuilder, values: list[list[ir.Value]]) -> None:
        self.b = builder
        self.cells = [[cgutils.alloca_once_value(builder, value) for value in group] for group in values]

    def load(self) -> list[list[ir.Value]]:
        return [[self.b.load(cell) for cell in cells] for cells in self.cells]

    def store(self, values: list[list[ir.Value]]) -> None:
        for cells, group in zip(self.cells, values, strict=True):
            for cell, value in zip(cells, group, strict=True):
                self.b.store(value, cell)


def _following(b: ir.IRBuilder, i: ir.Value, limit: ir.Value) -> ir.Value:
    """i + 1, or limit - 1 for the last step (whose "next" prelude is computed again and not used)."""
    following = b.add(i, ir.Constant(i.type, 1))
    return b.select(b.icmp_signed("<", following, limit), following, b.sub(limit, ir.Constant(i.type, 1)))


def _walk_segments(lanes: Lanes, length: ir.Value, segment: ir.Value, at_boundary: Callable,  # type: ignore[type-arg]
                   step: Callable) -> None:  # type: ignore[type-arg]
    """``for t in range(length): [at_boundary(t // segment) when t % segment == 0]; step(t)``, without a division."""
    b = lanes.b
    one = ir.Constant(length.type, 1)
    count = b.sdiv(b.sub(b.add(length, segment), one), segment)
    with cgutils.for_range(b, count) as seg:
        start = b.mul(seg.index, segment)
        at_boundary(seg.index)
        end = b.add(start, segment)
        stop = b.select(b.icmp_signed("<", end, length), end, length)
        with cgutils.for_range(b, stop, start=start) as loop:
            step(loop.index)


def _forward_walk(lanes: Lanes, arrs: Views, lane0s: list[ir.Value], scalars: list[ir.Value]) -> None:
    """Every step of one walk of scan_forward (low-rank delta, softplus): :func:`_prelude` and :func:`_finish`.

    Arrays: h, a2 (N, block); Bm, Cm (b, Q, L, G, N); u (b, Q, L, E); delta (b, Q, L, J, R); W (K, R, E);
    bias, D (block,); y (b, Q, L, E); saved (b, K, S, N, E).  Scalars: batch index, order q, walk j,
    direction k, group, first channel e0, softplus, bounded, save, segment.  The positions' views are
    pointer arithmetic here, so the kernel's per-position work is only this code (numba's slicing of
    eight arrays per position, with reference counting, cost as much as a 21-state update).
    """
    b = lanes.b
    bi, q, j, k, group, e0, _, bounded, save, segment = scalars
    length, n_state, width = arrs.shape(4)[2], arrs.shape(0)[0], arrs.shape(0)[1]
    forwards = b.icmp_signed("==", j, ir.Constant(j.type, 0))
    last = b.sub(length, ir.Constant(length.type, 1))
    weight = arrs.view(6, [k], e0, width)

    def at_boundary(s: ir.Value) -> None:
        with b.if_then(save):
            views = Views(b, [arrs.entries[0], arrs.view(10, [bi, k, s], e0, width)])
            with cgutils.for_range(b, n_state) as loop:
                src, dst = views.row(0, loop.index), views.row(1, loop.index)
                for e in lane0s:
                    lanes.store(lanes.load(src, e), dst, e)

    def views_at(t: ir.Value) -> Views:
        p = b.select(forwards, t, b.sub(last, t))
        return Views(b, [arrs.entries[0], arrs.entries[1], arrs.view(2, [bi, q, p, group]),
                         arrs.view(3, [bi, q, p, group]), arrs.view(4, [bi, q, p], e0, width),
                         arrs.view(5, [bi, q, p, j]), weight, arrs.entries[7], arrs.entries[8],
                         arrs.view(9, [bi, q, p], e0, width)])

    # Software pipelining: each step first computes the next position's prelude (softplus and all: a
    # dependency chain of some 100 cycles), then its own state loop, so the two overlap in the CPU's
    # out-of-order window; in program order after the state loop (700+ micro-operations at 64 channels)
    # the chain would stall every position.
    carried = _Carried(b, _prelude(lanes, views_at(ir.Constant(length.type, 0)), lane0s))

    def step(t: ir.Value) -> None:
        values = carried.load()
        carried.store(_prelude(lanes, views_at(_following(b, t, length)), lane0s))
        _finish(lanes, views_at(t), lane0s, values, forwards, bounded)

    _walk_segments(lanes, length, segment, at_boundary, step)


def _low_rank_delta(lanes: Lanes, arrs: Views, dts: int, weight: int, bias: int,
                    lane0s: list[ir.Value]) -> list[ir.Value]:
    """bias + dts @ W per lane group (arrays: dts (R,), W (R, block), bias (block,)), the raw delta."""
    b = lanes.b
    raw = [cgutils.alloca_once_value(b, lanes.load(arrs.row(bias), e)) for e in lane0s]
    with cgutils.for_range(b, arrs.shape(weight)[0]) as loop:
        x = lanes.splat(arrs.item(dts, loop.index))
        w = arrs.row(weight, loop.index)
        for v, e in enumerate(lane0s):
            b.store(lanes.fma(x, lanes.load(w, e), b.load(raw[v])), raw[v])
    return [b.load(r) for r in raw]


def _low_rank_softplus(arrs: Views, weight: int, softplus: ir.Value) -> ir.Value:
    """The run-time condition of the walk intrinsics: softplus on and a low-rank delta (W (K, R, E) with R > 0)."""
    rank = arrs.shape(weight)[1]
    return arrs.b.and_(softplus, arrs.b.icmp_signed(">", rank, ir.Constant(rank.type, 0)))


def _recompute_states(lanes: Lanes, arrs: Views, rows: tuple[int, int, int, int, int], lane0s: list[ir.Value],
                      dt: list[ir.Value], du: list[ir.Value], bounded: ir.Value) -> None:
    """decay[n] = 2^(dt a2[n]); nxt[n] = decay[n] prev[n] + du B[n]; ``rows`` index prev, nxt, decay, a2, B."""
    ip, inx, idc, ia, ib = rows

    def step(n: ir.Value, clamp_high: bool) -> None:
        prev, nxt, dec, a2 = arrs.row(ip, n), arrs.row(inx, n), arrs.row(idc, n), arrs.row(ia, n)
        bn = lanes.splat(arrs.item(ib, n))
        for v, e in enumerate(lane0s):
            decay = lanes.exp2(lanes.mul(dt[v], lanes.load(a2, e)), clamp_high)
            lanes.store(decay, dec, e)
            lanes.store(lanes.fma(decay, lanes.load(prev, e), lanes.mul(du[v], bn)), nxt, e)

    _state_loop(lanes, arrs.shape(ip)[0], bounded, step)


def _recompute(lanes: Lanes, arrs: Views, lane0s: list[ir.Value], scalars: list[ir.Value]) -> None:
    """The states of one position from the previous ones (arrays: prev, nxt, decay, a2, B, dt, du; scalar: bounded)."""
    dt = [lanes.load(arrs.row(5), e) for e in lane0s]
    du = [lanes.load(arrs.row(6), e) for e in lane0s]
    _recompute_states(lanes, arrs, (0, 1, 2, 3, 4), lane0s, dt, du, scalars[0])


def _recompute_prelude(lanes: Lanes, arrs: Views, lane0s: list[ir.Value]) -> list[list[ir.Value]]:
    """[delta, softplus' slope, delta u] of one recompute step, one vector per lane group (arrays as
    :func:`_recompute_position`; only u, dts, W and bias are read)."""
    dt, sig = zip(*(lanes.softplus(raw, slope=True) for raw in _low_rank_delta(lanes, arrs, 6, 7, 8, lane0s)),
                  strict=True)
    return [list(dt), list(sig), [lanes.mul(d, lanes.load(arrs.row(5), e)) for d, e in zip(dt, lane0s, strict=True)]]


def _recompute_position(lanes: Lanes, arrs: Views, lane0s: list[ir.Value], values: list[list[ir.Value]],
                        bounded: ir.Value) -> None:
    """A whole recompute step with a low-rank delta and softplus (scan_backward, step 1), from its prelude values.

    Arrays: prev, nxt, decay, a2 (N, block); B (N,); u (block,); dts (R,); W (R, block); bias (block,);
    dt_out, sig_out (block,), written: the delta and softplus' slope, which the adjoint reuses.
    """
    dt, sig, du = values
    for v, e in enumerate(lane0s):
        lanes.store(dt[v], arrs.row(9), e)
        lanes.store(sig[v], arrs.row(10), e)
    _recompute_states(lanes, arrs, (0, 1, 2, 3, 4), lane0s, dt, du, bounded)


def _adjoint_states(lanes: Lanes, arrs: Views, lane0s: list[ir.Value], gy: list[ir.Value], du: list[ir.Value],
                    dt: list[ir.Value], gdu: list[ir.Value], gdt: list[ir.Value], bounded: ir.Value) -> None:
    """The adjoint over n at one position; arrays 0-9: g, gA, decay, prev, cur, ak (N, block), B, C, gB, gC (N,).

    gdu, gdt: stack slots accumulated here; gB[n], gC[n] are written (sums over the block's channels).
    """
    b = lanes.b
    gb_row, gc_row = arrs.row(8), arrs.row(9)

    def step(n: ir.Value, clamp_high: bool) -> None:
        g, ga, dec, prev, cur, ak = (arrs.row(i, n) for i in range(6))
        bn, cn = lanes.splat(arrs.item(6, n)), lanes.splat(arrs.item(7, n))
        sum_b = sum_c = None
        for v, e in enumerate(lane0s):
            a = lanes.load(dec, e)
            gn = lanes.fma(cn, gy[v], lanes.load(g, e))
            part_c = lanes.mul(lanes.load(cur, e), gy[v])
            part_b = lanes.mul(gn, du[v])
            sum_c = part_c if sum_c is None else lanes.add(sum_c, part_c)
            sum_b = part_b if sum_b is None else lanes.add(sum_b, part_b)
            b.store(lanes.fma(gn, bn, b.load(gdu[v])), gdu[v])
            decayed = lanes.mul(lanes.mul(gn, lanes.load(prev, e)), a)  # dL/da * a
            b.store(lanes.fma(decayed, lanes.load(ak, e), b.load(gdt[v])), gdt[v])
            lanes.store(lanes.fma(decayed, dt[v], lanes.load(ga, e)), ga, e)
            lanes.store(lanes.mul(a, gn), g, e)
        b.store(lanes.hsum(sum_b), b.gep(gb_row, [n]))
        b.store(lanes.hsum(sum_c), b.gep(gc_row, [n]))

    _state_loop(lanes, arrs.shape(0)[0], bounded, step)


def _adjoint(lanes: Lanes, arrs: Views, lane0s: list[ir.Value], scalars: list[ir.Value]) -> None:
    """One position of the backward's adjoint, over n (see numba_kernels.scan_backward, step 2).

    Arrays: g, gA, decay, prev, cur, ak (N, block); B, C, gB, gC (N,); gy, du, dt, gdu, gdt (block,).
    gdu and gdt are accumulated here (they come in zeroed); gB[n], gC[n] are written.
    """
    b = lanes.b
    gy = [lanes.load(arrs.row(10), e) for e in lane0s]
    du = [lanes.load(arrs.row(11), e) for e in lane0s]
    dt = [lanes.load(arrs.row(12), e) for e in lane0s]
    gdu = [cgutils.alloca_once_value(b, lanes.load(arrs.row(13), e)) for e in lane0s]
    gdt = [cgutils.alloca_once_value(b, lanes.load(arrs.row(14), e)) for e in lane0s]
    _adjoint_states(lanes, arrs, lane0s, gy, du, dt, gdu, gdt, scalars[0])
    for v, e in enumerate(lane0s):
        lanes.store(b.load(gdu[v]), arrs.row(13), e)
        lanes.store(b.load(gdt[v]), arrs.row(14), e)


def _adjoint_position(lanes: Lanes, arrs: Views, lane0s: list[ir.Value], scalars: list[ir.Value]) -> None:
    """A whole adjoint step with a low-rank delta (scan_backward, step 2, and the gradients it feeds).

    Arrays 0-9 as :func:`_adjoint_states`; then gy, u, dt, sig, D (block,); gu, gbias, gD (block,),
    accumulated; dts (R,); W (R, block); gW (R, block), accumulated; gdts (R,), written.  Scalar: bounded.
    """
    b = lanes.b
    gy, u, dt, sig, dk = ([lanes.load(arrs.row(i), e) for e in lane0s] for i in range(10, 15))
    du = [lanes.mul(d, x) for d, x in zip(dt, u, strict=True)]
    zero = lanes.const(0.0)
    gdu = [cgutils.alloca_once_value(b, zero) for _ in lane0s]
    gdt = [cgutils.alloca_once_value(b, zero) for _ in lane0s]
    _adjoint_states(lanes, arrs, lane0s, gy, du, dt, gdu, gdt, scalars[0])
    graw = []
    for v, e in enumerate(lane0s):
        g_du, g_dt = b.load(gdu[v]), b.load(gdt[v])
        gu, gbias, gd = arrs.row(15), arrs.row(16), arrs.row(17)
        lanes.store(lanes.add(lanes.load(gu, e), lanes.fma(g_du, dt[v], lanes.mul(dk[v], gy[v]))), gu, e)
        raw = lanes.mul(lanes.fma(g_du, u[v], g_dt), sig[v])
        graw.append(raw)
        lanes.store(lanes.add(lanes.load(gbias, e), raw), gbias, e)
        lanes.store(lanes.fma(gy[v], u[v], lanes.load(gd, e)), gd, e)
    gdts = arrs.row(21)
    with cgutils.for_range(b, arrs.shape(19)[0]) as loop:  # back through delta = dts @ W
        r = loop.index
        x = lanes.splat(arrs.item(18, r))
        w, gw = arrs.row(19, r), arrs.row(20, r)
        total = None
        for v, e in enumerate(lane0s):
            part = lanes.mul(graw[v], lanes.load(w, e))
            total = part if total is None else lanes.add(total, part)
            lanes.store(lanes.fma(graw[v], x, lanes.load(gw, e)), gw, e)
        b.store(lanes.hsum(total), b.gep(gdts, [r]))


def _backward_segment(lanes: Lanes, arrs: Views, lane0s: list[ir.Value], scalars: list[ir.Value]) -> None:
    """One segment of one walk of scan_backward (low-rank delta, softplus): the recompute forwards through it
    (:func:`_recompute_position` per position), then the adjoint backwards (:func:`_adjoint_position`).

    Arrays: 0 states (S + 1, N, block), states[0] loaded by the caller; 1 decays (S, N, block); 2 a2, 3 ak,
    4 g, 5 gA (N, block); 6 Bm, 7 Cm (b, Q, L, G, N); 8 u (b, Q, L, E); 9 delta (b, Q, L, J, R); 10 W
    (K, R, E); 11 bias, 12 D (block,); 13 dts, 14 sigs (S, block); 15 grad_y, 16 grad_u (b, Q, L, E);
    17 gbias, 18 gD (block,); 19 gW (R, block); 20 grad_B, 21 grad_C (blocks, b, Q, L, G, N); 22 grad_delta
    (slots, b, Q, L, J, R).  Scalars: batch index, order q, walk j, direction k, group, first channel e0,
    block index, grad_delta slot, t0, t1, bounded.  As in the forward walk, the positions' views are
    pointer arithmetic here, not numba slices.
    """
    b = lanes.b
    bi, q, j, k, group, e0, blk, slot, t0, t1, bounded = scalars
    length, width = arrs.shape(8)[2], arrs.shape(2)[1]
    intp = length.type
    one = ir.Constant(intp, 1)
    forwards = b.icmp_signed("==", j, ir.Constant(j.type, 0))
    last = b.sub(length, one)
    weight = arrs.view(10, [k], e0, width)
    count = b.sub(t1, t0)

    def at(i: ir.Value) -> tuple[ir.Value, ...]:
        """Step i of the segment: its row / column views of B, C, u and delta."""
        t = b.add(t0, i)
        p = b.select(forwards, t, b.sub(last, t))
        return (p, arrs.view(6, [bi, q, p, group]), arrs.view(7, [bi, q, p, group]),
                arrs.view(8, [bi, q, p], e0, width), arrs.view(9, [bi, q, p, j]))

    def recompute_views(i: ir.Value) -> Views:
        _, brow, _, urow, dts = at(i)
        return Views(b, [arrs.view(0, [i]), arrs.view(0, [b.add(i, one)]), arrs.view(1, [i]), arrs.entries[2],
                         brow, urow, dts, weight, arrs.entries[11], arrs.view(13, [i]), arrs.view(14, [i])])

    # Software-pipelined as the forward walk: the next step's softplus (and slope) before this step's states.
    carried = _Carried(b, _recompute_prelude(lanes, recompute_views(ir.Constant(intp, 0)), lane0s))
    with cgutils.for_range(b, count) as loop:
        i = loop.index
        values = carried.load()
        carried.store(_recompute_prelude(lanes, recompute_views(_following(b, i, count)), lane0s))
        _recompute_position(lanes, recompute_views(i), lane0s, values, bounded)

    with cgutils.for_range(b, count) as loop:
        i = b.sub(b.sub(count, one), loop.index)
        p, brow, crow, urow, dts = at(i)
        views = Views(b, [arrs.entries[4], arrs.entries[5], arrs.view(1, [i]), arrs.view(0, [i]),
                          arrs.view(0, [b.add(i, one)]), arrs.entries[3], brow, crow,
                          arrs.view(20, [blk, bi, q, p, group]), arrs.view(21, [blk, bi, q, p, group]),
                          arrs.view(15, [bi, q, p], e0, width), urow, arrs.view(13, [i]), arrs.view(14, [i]),
                          arrs.entries[12], arrs.view(16, [bi, q, p], e0, width), arrs.entries[17],
                          arrs.entries[18], dts, weight, arrs.entries[19], arrs.view(22, [slot, bi, q, p, j])])
        _adjoint_position(lanes, views, lane0s, [bounded])


# The kernels call these; each returns the channels it handled (the whole block, or 0: then the kernel's
# scalar loop runs, which is also the reference these are tested against).


@intrinsic
def forward_walk_simd(typingctx, h, a2, Bm, Cm, u, delta, weight, bias, D, y, saved,  # type: ignore[no-untyped-def]
                      batch_index, q, j, k, group, e0, softplus, bounded, save, segment):
    """One whole walk of scan_forward (low-rank delta, softplus): see :func:`_forward_walk`.

    Returns 0 (the kernel's own loop runs) unless softplus is on and the delta is low-rank (R > 0).
    """

    return _whole_block(_forward_walk, (h, a2, Bm, Cm, u, delta, weight, bias, D, y, saved),
                        (batch_index, q, j, k, group, e0, softplus, bounded, save, segment),
                        lambda arrs, scalars: _low_rank_softplus(arrs, 6, scalars[6]))


@intrinsic
def backward_segment_simd(typingctx, states, decays, a2, ak, g, gA, Bm, Cm, u, delta, weight, bias, D, dts, sigs,  # type: ignore[no-untyped-def]
                          grad_y, grad_u, gbias, gD, gW, grad_B, grad_C, grad_delta, batch_index, q, j, k, group, e0,
                          blk, slot, t0, t1, softplus, bounded):
    """One segment of one walk of scan_backward (low-rank delta, softplus): see :func:`_backward_segment`.

    Returns 0 (the kernel's own loops run) unless softplus is on and the delta is low-rank (R > 0).
    """
    arrays = (states, decays, a2, ak, g, gA, Bm, Cm, u, delta, weight, bias, D, dts, sigs, grad_y, grad_u, gbias,
              gD, gW, grad_B, grad_C, grad_delta)

    def body(lanes: Lanes, arrs: Views, lane0s: list[ir.Value], scalars: list[ir.Value]) -> None:
        _backward_segment(lanes, arrs, lane0s, [*scalars[:-2], scalars[-1]])

    return _whole_block(body, arrays, (batch_index, q, j, k, group, e0, blk, slot, t0, t1, softplus, bounded),
                        lambda arrs, scalars: _low_rank_softplus(arrs, 10, scalars[-2]))


@intrinsic
def forward_simd(typingctx, h, a2, brow, crow, dt, du, acc, bounded):  # type: ignore[no-untyped-def]
    """scan_forward's state loop at one position: see :func:`_forward`."""
    return _whole_block(_forward, (h, a2, brow, crow, dt, du, acc), (bounded,))


@intrinsic
def recompute_simd(typingctx, prev, nxt, decay, a2, brow, dt, du, bounded):  # type: ignore[no-untyped-def]
    """scan_backward's state recompute at one position: see :func:`_recompute`."""
    return _whole_block(_recompute, (prev, nxt, decay, a2, brow, dt, du), (bounded,))


@intrinsic
def adjoint_simd(typingctx, g, ga, decay, prev, cur, ak, brow, crow, gbrow, gcrow, gy, du, dt, gdu, gdt,  # type: ignore[no-untyped-def]
                 bounded):
    """scan_backward's adjoint at one position: see :func:`_adjoint`."""
    return _whole_block(_adjoint, (g, ga, decay, prev, cur, ak, brow, crow, gbrow, gcrow, gy, du, dt, gdu, gdt),
                        (bounded,))

