"""SS2D's memory-bound stages around the scan, fused on the CPU (inference only).

Why: around the numba scan, SS2D runs a chain of elementwise torch ops over (b, H, W, E) maps,
each a full pass over 16-32 MB at serpent-l's first scale on a 512x512 image:

* before the scan, the depthwise conv, silu, and the copies into the two position orders the
  scan walks (row-major and column-major, :func:`serpent_cli.ops.to_scan_orders`): 15.6 ms per
  block on 2 cores;
* after it, the two orders added back in image order, LayerNorm, silu(z) and the product: 20 ms.

Here each chain is one pass (:func:`input_kernel`, :func:`gate_kernel`), the per-pixel work 16-lane
vector code (:mod:`serpent_cli.ops.numba_simd`): LLVM's own vectoriser does not reduce over
channels and exponentiate together, and numba's ``math.exp`` is a scalar libm call, which made
an earlier plain-numba version of the gate 1.6-2.2x slower than torch.  Both passes work on
blocks of TILE_ROWS image rows, column by column, so the column-major order is read or written
TILE_ROWS positions at a time, never one position per 64 KB.

Only float32 maps whose channel count is a multiple of 16 take these paths, and only without
autograd (training keeps the torch ops, whose backward autograd provides);
:func:`serpent_cli.ops.conv_silu_to_scan_orders` and :func:`serpent_cli.ops.gated_norm_from_scan_orders`
decide, and fall back to the torch ops, which are also the reference the tests hold these to.
"""

from __future__ import annotations

from collections.abc import Callable

# isort: off
from serpent_cli.numba_setup import follow_torch_threads  # first: numba's cache folder and CPU target
# isort: on
import numba
import torch
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from serpent_cli.ops.numba_simd import F32, LANES, WIDE, Lanes, Views, has_avx512
from serpent_cli.ops.workspace import scratch

JIT = {"nogil": True, "cache": True, "error_model": "numpy"}
TILE_ROWS = 16  # image rows per work item


def _pixels(b: ir.IRBuilder, r0: ir.Value, r1: ir.Value, width: ir.Value,
            pixel: Callable[[ir.Value, ir.Value], None]) -> None:
    """``pixel(r, c)`` for every pixel of rows r0..r1, column by column."""
    with cgutils.for_range(b, width) as col, cgutils.for_range(b, r1, start=r0) as row:
        pixel(row.index, col.index)


def _orders(b: ir.IRBuilder, r: ir.Value, c: ir.Value, height: ir.Value, width: ir.Value) -> list[ir.Value]:
    """Pixel (r, c)'s positions in the row-major and the column-major order."""
    return [b.add(b.mul(r, width), c), b.add(b.mul(c, height), r)]


def _input_rows(lanes: Lanes, arrs: Views, scalars: list[ir.Value]) -> None:
    """silu(depthwise conv(x) + bias) at every pixel of rows r0..r1 of batch element bi, into both orders.

    Arrays: x (b, H, W, E), unit-stride channels; taps (k, k, E), the conv's weight per tap; bias (E,);
    out (b, 2, L, E).  Scalars: bi, r0, r1.  Zero padding of k // 2 (taps outside the image skipped).
    """
    b = lanes.b
    bi, r0, r1 = scalars
    _, height, width, channels = arrs.shape(0)
    intp = channels.type
    size = arrs.shape(1)[0]
    half = b.sdiv(size, ir.Constant(intp, 2))
    zero = ir.Constant(intp, 0)

    def inside(index: ir.Value, limit: ir.Value) -> ir.Value:
        return b.and_(b.icmp_signed(">=", index, zero), b.icmp_signed("<", index, limit))

    def chunk(r: ir.Value, c: ir.Value, outs: list[ir.Value], e0: ir.Value, count: int) -> None:
        """``count`` vectors of channels from e0, their sums in registers over every tap."""
        lane0s = [b.add(e0, ir.Constant(intp, LANES * v)) for v in range(count)]
        accs = [cgutils.alloca_once_value(b, lanes.load(arrs.row(2), e)) for e in lane0s]
        with cgutils.for_range(b, size) as dy_loop:
            rr = b.add(r, b.sub(dy_loop.index, half))
            with b.if_then(inside(rr, height)), cgutils.for_range(b, size) as dx_loop:
                cc = b.add(c, b.sub(dx_loop.index, half))
                with b.if_then(inside(cc, width)):
                    x = arrs.view(0, [bi, rr, cc])[0]
                    tap = arrs.view(1, [dy_loop.index, dx_loop.index])[0]
                    for acc, e in zip(accs, lane0s, strict=True):
                        b.store(lanes.fma(lanes.load(x, e), lanes.load(tap, e), b.load(acc)), acc)
        for acc, e in zip(accs, lane0s, strict=True):
            value = lanes.silu(b.load(acc))
            for out in outs:
                lanes.store(value, out, e)

    vectors = b.sdiv(channels, ir.Constant(intp, LANES))
    wide = ir.Constant(intp, WIDE)
    full, tail = b.sdiv(vectors, wide), b.srem(vectors, wide)

    def pixel(r: ir.Value, c: ir.Value) -> None:
        outs = [arrs.view(3, [bi, ir.Constant(intp, q), p])[0] for q, p in enumerate(_orders(b, r, c, height, width))]
        with cgutils.for_range(b, full) as loop:
            chunk(r, c, outs, b.mul(loop.index, ir.Constant(intp, LANES * WIDE)), WIDE)
        for count in range(1, WIDE):
            with b.if_then(b.icmp_signed("==", tail, ir.Constant(intp, count))):
                chunk(r, c, outs, b.mul(full, ir.Constant(intp, LANES * WIDE)), count)

    _pixels(b, r0, r1, width, pixel)


def _gate_rows(lanes: Lanes, arrs: Views, scalars: list[ir.Value]) -> None:
    """LayerNorm(the two orders added) * silu(z) at every pixel of rows r0..r1 of batch element bi.

    Arrays: y (b, 2, L, E) in the two scan orders; z (b, H, W, E), unit-stride channels; weight,
    bias (E,); out (b, H, W, E).  Scalars: bi, r0, r1, eps.  Per pixel three passes over its
    channels (in L1): the sum of the orders (kept in ``out``) and its mean, the variance about
    that mean (two passes, as torch's LayerNorm, not E[x^2] - mean^2), then the normalised,
    gated value.
    """
    b = lanes.b
    bi, r0, r1, eps = scalars
    _, height, width, channels = arrs.shape(4)
    intp = channels.type
    inverse = b.fdiv(ir.Constant(F32, 1.0), b.sitofp(channels, F32))
    sqrt = cgutils.get_or_insert_function(b.module, ir.FunctionType(F32, [F32]), "llvm.sqrt.f32")
    zero = lanes.const(0.0)
    vectors = b.sdiv(channels, ir.Constant(intp, LANES))

    def over_channels(body: Callable[[ir.Value], None]) -> None:
        """``body(e)`` for e = 0, 16, 32, ... < channels (one vector each)."""
        with cgutils.for_range(b, vectors) as loop:
            body(b.mul(loop.index, ir.Constant(intp, LANES)))

    def pixel(r: ir.Value, c: ir.Value) -> None:
        y0, y1 = (arrs.view(0, [bi, ir.Constant(intp, q), p])[0] for q, p in enumerate(_orders(b, r, c, height, width)))
        zr = arrs.view(1, [bi, r, c])[0]
        out = arrs.view(4, [bi, r, c])[0]
        total = cgutils.alloca_once_value(b, zero)

        def add_orders(e: ir.Value) -> None:
            value = lanes.add(lanes.load(y0, e), lanes.load(y1, e))
            lanes.store(value, out, e)
            b.store(lanes.add(b.load(total), value), total)

        over_channels(add_orders)
        mean = lanes.splat(b.fmul(lanes.hsum(b.load(total)), inverse))
        squares = cgutils.alloca_once_value(b, zero)

        def square(e: ir.Value) -> None:
            d = lanes.sub(lanes.load(out, e), mean)
            b.store(lanes.fma(d, d, b.load(squares)), squares)

        over_channels(square)
        variance = b.fmul(lanes.hsum(b.load(squares)), inverse)
        rstd = lanes.splat(b.fdiv(ir.Constant(F32, 1.0), b.call(sqrt, [b.fadd(variance, eps)])))

        def gate(e: ir.Value) -> None:
            norm = lanes.mul(lanes.sub(lanes.load(out, e), mean), rstd)
            norm = lanes.fma(norm, lanes.load(arrs.row(2), e), lanes.load(arrs.row(3), e))
            lanes.store(lanes.mul(norm, lanes.silu(lanes.load(zr, e))), out, e)

        over_channels(gate)

    _pixels(b, r0, r1, width, pixel)


def _rows_intrinsic(body: Callable, arrays: tuple, scalars: tuple):  # type: ignore[type-arg,no-untyped-def]
    """Typing and code generation of ``f(*arrays, *scalars)`` running ``body`` (float32 arrays only).

    Floating-point scalars are passed to ``body`` as float32, integers as they are.
    """
    if not all(isinstance(a, types.Array) and a.dtype == types.float32 for a in arrays):
        return None
    n_arrays = len(arrays)

    def codegen(context, builder, signature, llargs):  # type: ignore[no-untyped-def]
        lanes = Lanes(builder, has_avx512(context))
        arrs = Views.of_arrays(context, builder, signature.args[:n_arrays], llargs[:n_arrays])
        values = [builder.fptrunc(v, F32) if isinstance(v.type, ir.DoubleType) else v for v in llargs[n_arrays:]]
        body(lanes, arrs, values)
        return context.get_dummy_value()

    return types.void(*arrays, *scalars), codegen


@intrinsic
def input_rows_simd(typingctx, x, taps, bias, out, batch_index, r0, r1):  # type: ignore[no-untyped-def]
    """out[b, q, position of (r, c) in order q] = silu(conv(x)[b, r, c]) for r0 <= r < r1: see :func:`_input_rows`."""
    return _rows_intrinsic(_input_rows, (x, taps, bias, out), (batch_index, r0, r1))


@intrinsic
def gate_rows_simd(typingctx, y, z, weight, bias, out, batch_index, r0, r1, eps):  # type: ignore[no-untyped-def]
    """out[b, r, c] = LayerNorm(y[b, 0, r W + c] + y[b, 1, c H + r]) * silu(z[b, r, c]) for r0 <= r < r1."""
    return _rows_intrinsic(_gate_rows, (y, z, weight, bias, out), (batch_index, r0, r1, eps))


@numba.njit(parallel=True, **JIT)
def input_kernel(x, taps, bias, out):  # type: ignore[no-untyped-def]
    """The scan's input in both orders, one parallel region over (batch element, block of TILE_ROWS rows)."""
    batch, height = x.shape[0], x.shape[1]
    tiles = (height + TILE_ROWS - 1) // TILE_ROWS
    for item in prange(batch * tiles):
        b = item // tiles
        r0 = (item % tiles) * TILE_ROWS
        input_rows_simd(x, taps, bias, out, b, r0, min(height, r0 + TILE_ROWS))


@numba.njit(parallel=True, **JIT)
def gate_kernel(y, z, weight, bias, eps, out):  # type: ignore[no-untyped-def]
    """The gated output, one parallel region over (batch element, block of TILE_ROWS image rows)."""
    batch, height = out.shape[0], out.shape[1]
    tiles = (height + TILE_ROWS - 1) // TILE_ROWS
    for item in prange(batch * tiles):
        b = item // tiles
        r0 = (item % tiles) * TILE_ROWS
        gate_rows_simd(y, z, weight, bias, out, b, r0, min(height, r0 + TILE_ROWS), eps)


def _fusable(tensors: tuple[torch.Tensor | None, ...], channels: int) -> bool:
    """CPU float32, channels a multiple of 16, and no autograd recording through any of ``tensors``."""
    present = [t for t in tensors if t is not None]
    return (
        len(present) == len(tensors)
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in present)
        and channels % LANES == 0
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in present))
    )


def fused_input_applies(x: torch.Tensor, conv: torch.nn.Conv2d) -> bool:
    """Whether :func:`conv_silu_numba` can serve ``x`` (b, H, W, E) and SS2D's depthwise ``conv``."""
    k = conv.kernel_size
    return (
        _fusable((x, conv.weight, conv.bias), x.shape[-1])
        and x.stride(-1) == 1
        and conv.groups == conv.in_channels == conv.out_channels == x.shape[-1]
        and k[0] == k[1] and k[0] % 2 == 1
        and conv.stride == (1, 1) and conv.dilation == (1, 1)
        and conv.padding == (k[0] // 2, k[1] // 2) and conv.padding_mode == "zeros"
    )


def fused_gate_applies(y: torch.Tensor, z: torch.Tensor, norm: torch.nn.LayerNorm) -> bool:
    """Whether :func:`gated_norm_numba` can serve ``y`` (b, 2, L, E), ``z`` (b, H, W, E) and ``norm``."""
    return _fusable((y, z, norm.weight, norm.bias), y.shape[-1]) and z.stride(-1) == 1


def conv_silu_numba(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """silu(conv(x)) of a channels-last map x (b, H, W, E), in the two scan orders: (b, 2, H W, E)."""
    follow_torch_threads()
    batch, height, width, channels = x.shape
    taps = conv.weight.detach()[:, 0].permute(1, 2, 0).contiguous()  # (k, k, E)
    out = scratch("ss2d.scan_in", (batch, 2, height * width, channels), x)
    input_kernel(x.detach().numpy(), taps.numpy(), conv.bias.detach().contiguous().numpy(), out.numpy())
    return out


def gated_norm_numba(y: torch.Tensor, z: torch.Tensor, norm: torch.nn.LayerNorm, height: int,
                     width: int) -> torch.Tensor:
    """LayerNorm(the two scan orders of ``y`` added in image order) * silu(z), as (b, H, W, E)."""
    follow_torch_threads()
    batch, _, _, channels = y.shape
    out = scratch("ss2d.gated", (batch, height, width, channels), y)
    gate_kernel(y.detach().contiguous().numpy(), z.detach().numpy(), norm.weight.detach().contiguous().numpy(),
                norm.bias.detach().contiguous().numpy(), float(norm.eps), out.numpy())
    return out
