"""SS2D's output gate on the CPU in one pass: LayerNorm(sum of the scan orders) * silu(z), inference only.

Why: after the numba scan, SS2D's output is four memory-bound torch ops over (b, H, W, E)
tensors (the two scan orders added back in image order, LayerNorm, silu(z), the product), each a
full pass over 16-32 MB at serpent-l's first scale: 20 ms per block at 512x512 on 2 cores, more
than a tenth of the whole forward.  Here one pass reads the two orders and z and writes the
gated result.  The per-pixel work is 16-lane vector code (:mod:`serpent_cli.ops.numba_simd`):
LLVM's own vectoriser cannot reduce over channels and exponentiate together, and numba's
``math.exp`` is a scalar libm call, which made an earlier plain-numba version of this gate
1.6-2.2x slower than torch.

Only float32 maps whose channel count is a multiple of 16 take this path, and only without
autograd (training keeps the torch ops, whose backward autograd provides);
:func:`serpent_cli.ops.gated_norm_from_scan_orders` decides and falls back to the torch ops.
"""

from __future__ import annotations

# isort: off
from serpent_cli import numba_setup  # noqa: F401  (first: numba's cache folder and CPU target)
# isort: on
import numba
import torch
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from serpent_cli.ops.numba_simd import F32, LANES, LOG2E, Lanes, Views, has_avx512

JIT = {"nogil": True, "cache": True, "error_model": "numpy"}
TILE_ROWS = 16  # image rows per work item: the column-major order is read 16 positions at a time


def _gate_tile(lanes: Lanes, arrs: Views, scalars: list[ir.Value]) -> None:
    """Every pixel of image rows r0..r1 of batch element b (see :func:`gate_rows_simd`).

    Arrays: y (b, 2, L, E) in the two scan orders; z (b, H, W, E), unit-stride channels; weight,
    bias (E,); out (b, H, W, E).  Scalars: b, r0, r1, eps.  Per pixel three passes over its
    channels (in L1): the sum of the orders (kept in ``out``) and its mean, the variance about
    that mean (two passes, as torch's LayerNorm, not E[x^2] - mean^2), then the normalised,
    gated value.
    """
    b = lanes.b
    bi, r0, r1, eps = scalars
    shape = arrs.shape(4)
    height, width, channels = shape[1], shape[2], shape[3]
    intp = channels.type
    vectors = b.sdiv(channels, ir.Constant(intp, LANES))
    inverse = b.fdiv(ir.Constant(F32, 1.0), b.sitofp(channels, F32))
    sqrt = cgutils.get_or_insert_function(b.module, ir.FunctionType(F32, [F32]), "llvm.sqrt.f32")
    zero, one = lanes.const(0.0), lanes.const(1.0)

    def over_channels(body) -> None:  # type: ignore[no-untyped-def]
        with cgutils.for_range(b, vectors) as loop:
            body(b.mul(loop.index, ir.Constant(intp, LANES)))

    with cgutils.for_range(b, width) as col:
        c = col.index
        with cgutils.for_range(b, r1, start=r0) as row:
            r = row.index
            y0 = arrs.view(0, [bi, ir.Constant(intp, 0), b.add(b.mul(r, width), c)])[0]
            y1 = arrs.view(0, [bi, ir.Constant(intp, 1), b.add(b.mul(c, height), r)])[0]
            zr = arrs.view(1, [bi, r, c])[0]
            out = arrs.view(4, [bi, r, c])[0]
            total = cgutils.alloca_once_value(b, zero)

            def add_orders(e: ir.Value) -> None:
                value = lanes.add(lanes.load(y0, e), lanes.load(y1, e))
                lanes.store(value, out, e)
                b.store(lanes.add(b.load(total), value), total)

            over_channels(add_orders)
            mean = b.fmul(lanes.hsum(b.load(total)), inverse)
            mean_v = lanes.splat(mean)
            squares = cgutils.alloca_once_value(b, zero)

            def square(e: ir.Value) -> None:
                d = lanes.sub(lanes.load(out, e), mean_v)
                b.store(lanes.fma(d, d, b.load(squares)), squares)

            over_channels(square)
            variance = b.fmul(lanes.hsum(b.load(squares)), inverse)
            rstd = b.fdiv(ir.Constant(F32, 1.0), b.call(sqrt, [b.fadd(variance, eps)]))
            rstd_v = lanes.splat(rstd)

            def gate(e: ir.Value) -> None:
                norm = lanes.mul(lanes.sub(lanes.load(out, e), mean_v), rstd_v)
                norm = lanes.fma(norm, lanes.load(arrs.row(2), e), lanes.load(arrs.row(3), e))
                zv = lanes.load(zr, e)
                # silu(z) = z / (1 + 2^(-z log2 e)); 2^x overflows to inf for very negative z: z / inf = -0.
                denominator = lanes.add(one, lanes.exp2(lanes.mul(zv, lanes.const(-LOG2E)), clamp_high=True))
                silu = b.fdiv(zv, denominator, flags=("contract",))
                lanes.store(lanes.mul(norm, silu), out, e)

            over_channels(gate)


@intrinsic
def gate_rows_simd(typingctx, y, z, weight, bias, out, batch_index, r0, r1, eps):  # type: ignore[no-untyped-def]
    """out[b, r, c] = LayerNorm(y[b, 0, r W + c] + y[b, 1, c H + r]) * silu(z[b, r, c]) for r0 <= r < r1.

    Float32 with a channel count that is a multiple of 16 only (the caller checks).
    """
    arrays = (y, z, weight, bias, out)
    if not all(isinstance(a, types.Array) and a.dtype == types.float32 for a in arrays):
        return None

    def codegen(context, builder, signature, llargs):  # type: ignore[no-untyped-def]
        lanes = Lanes(builder, has_avx512(context))
        arrs = Views.of_arrays(context, builder, signature.args[:5], llargs[:5])
        *indices, eps = llargs[5:]
        if eps.type != F32:
            eps = builder.fptrunc(eps, F32)
        _gate_tile(lanes, arrs, [*indices, eps])
        return context.get_dummy_value()

    return types.void(*arrays, batch_index, r0, r1, eps), codegen


@numba.njit(parallel=True, **JIT)
def gate_kernel(y, z, weight, bias, eps, out):  # type: ignore[no-untyped-def]
    """The whole map, one parallel region over (batch element, block of TILE_ROWS image rows)."""
    batch, height = out.shape[0], out.shape[1]
    tiles = (height + TILE_ROWS - 1) // TILE_ROWS
    for item in prange(batch * tiles):
        b = item // tiles
        r0 = (item % tiles) * TILE_ROWS
        gate_rows_simd(y, z, weight, bias, out, b, r0, min(height, r0 + TILE_ROWS), eps)


def fused_gate_applies(y: torch.Tensor, z: torch.Tensor, norm: torch.nn.LayerNorm) -> bool:
    """Whether :func:`gated_norm_numba` can serve: CPU float32, channels a multiple of 16, no autograd."""
    tensors = (y, z, norm.weight, norm.bias)
    return (
        y.device.type == "cpu"
        and all(t is not None and t.dtype == torch.float32 for t in tensors)
        and y.shape[-1] % LANES == 0
        and z.stride(-1) == 1
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    )


def gated_norm_numba(y: torch.Tensor, z: torch.Tensor, norm: torch.nn.LayerNorm, height: int,
                     width: int) -> torch.Tensor:
    """LayerNorm(the two scan orders of ``y`` added in image order) * silu(z), as (b, H, W, E)."""
    from serpent_cli.ops.scan_numba import _threads

    _threads()
    batch, _, _, channels = y.shape
    out = torch.empty(batch, height, width, channels, dtype=torch.float32)
    gate_kernel(y.detach().contiguous().numpy(), z.detach().numpy(), norm.weight.detach().contiguous().numpy(),
                norm.bias.detach().contiguous().numpy(), float(norm.eps), out.numpy())
    return out
