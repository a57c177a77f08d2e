"""Checks of the scan kernels' explicit SIMD paths (serpent_cli.ops.numba_simd), for this process's CPU target.

Imported by ``test_scan_numba.py`` and also run as a script in a subprocess compiled for a generic
CPU (``NUMBA_CPU_NAME=generic``), so both 2^x methods are exercised on an AVX-512 machine: vscalefps
here, the exponent-bit trick there.  ``python tests/simd_check.py OUT.npz`` writes the float32
kernel outputs of :func:`kernel_outputs` for the parent test to compare.
"""

from __future__ import annotations

import sys

# isort: off
from serpent_cli import numba_setup  # noqa: F401  (numba's cache folder and CPU target first)
# isort: on
import numba
import numpy as np

from serpent_cli.ops import numba_kernels as kernels
from serpent_cli.ops.numba_simd import forward_simd
from serpent_cli.ops.numba_ss2d import gate_kernel, input_kernel

SEGMENT = 8
# (channels, block): every vector width the SIMD path has (1-4 vectors), two or more blocks where possible.
BLOCKS = ((96, 16), (96, 32), (96, 48), (64, 64))
# (batch, height, width, channels) of SS2D's fused stages: odd sizes, one and several row tiles, 1-32 vectors
# (whole chunks of 4 vectors, and 1-3 left over).
GATE_SHAPES = ((2, 19, 7, 16), (1, 40, 33, 64), (1, 3, 5, 512), (1, 6, 9, 112))


@numba.njit
def _vector_exp2(x, bounded):  # type: ignore[no-untyped-def]
    """2^x through the forward state update with h = 1, du = 0 (so h becomes the decay 2^(1 * x))."""
    out = np.empty_like(x)
    h = np.empty((1, 16), np.float32)
    a2 = np.empty((1, 16), np.float32)
    ones = np.ones(16, np.float32)
    zeros = np.zeros(16, np.float32)
    bc = np.zeros(1, np.float32)
    acc = np.zeros(16, np.float32)
    for i in range(0, x.size, 16):
        h[0, :] = 1.0
        a2[0, :] = x[i : i + 16]
        if forward_simd(h, a2, bc, bc, ones, zeros, acc, bounded) != 16:
            raise AssertionError("the SIMD path did not run")
        out[i : i + 16] = h[0]
    return out


def check_exp2() -> None:
    """Within 2.5e-7 relative where float32 is normal; tiny (<= 2^-126) far below; NaN stays NaN."""
    for bounded, high in ((True, 0.0), (False, 126.9)):
        x = np.concatenate([np.linspace(-125.9, high, 160_000), np.linspace(-1, 1, 16_000)]).astype(np.float32)
        got = _vector_exp2(x, bounded)
        err = np.abs(got / np.exp2(x.astype(np.float64)) - 1).max()
        assert err < 2.5e-7, f"2^x relative error {err:.2e} (bounded={bounded})"
        edges = _vector_exp2(np.array([-1e30, -200.0, -np.inf, np.nan] + [-1.0] * 12, np.float32), bounded)
        assert np.all((edges[:3] >= 0) & (edges[:3] <= 2.0**-126 * (1 + 1e-6))), edges[:3]
        assert np.isnan(edges[3])


def _inputs(channels: int, dtype: type) -> list[np.ndarray]:
    """Kernel-layout inputs (directional, low-rank delta): batch 2, 37 positions (5 segments), N = 5, R = 3."""
    rng = np.random.default_rng(channels)
    b, length, n, r = 2, 37, 5, 3
    arrays = [
        rng.standard_normal((b, 2, length, channels)),
        rng.standard_normal((b, 2, length, 2, r)) * 0.5,
        rng.standard_normal((4, r, channels)) * 0.5,
        -rng.random((4, channels, n)) * 2 - 0.05,
        rng.standard_normal((b, 2, length, 2, n)),
        rng.standard_normal((b, 2, length, 2, n)),
        rng.standard_normal((4, channels)),
        rng.standard_normal((4, channels)) * 0.5,
        rng.standard_normal((b, 2, length, channels)),  # grad of y
    ]
    return [a.astype(dtype) for a in arrays]


def kernel_outputs(channels: int, block: int, dtype: type) -> list[np.ndarray]:
    """y and the eight gradients of scan_forward / scan_backward, partials summed."""
    u, delta, weight, A, Bm, Cm, D, bias, grad_y = _inputs(channels, dtype)
    b, _, length, _ = u.shape
    n, r = A.shape[2], weight.shape[1]
    blocks = channels // block
    y = np.empty_like(u)
    saved = np.empty((b, 4, -(-length // SEGMENT), n, channels), dtype)
    kernels.scan_forward(u, delta, weight, A, Bm, Cm, D, bias, True, True, block, SEGMENT, y, saved)
    grads = [np.empty_like(u), np.empty((blocks, *delta.shape), dtype), np.empty((b, 4, r, channels), dtype),
             np.empty((b, 4, channels, n), dtype), np.empty((blocks, *Bm.shape), dtype),
             np.empty((blocks, *Cm.shape), dtype), np.empty((b, 4, channels), dtype), np.empty((b, 4, channels), dtype)]
    kernels.scan_backward(u, delta, weight, A, Bm, Cm, D, bias, True, True, block, SEGMENT, saved, grad_y, *grads)
    return [y, grads[0], *(g.sum(0) for g in grads[1:])]


def _gate_inputs(shape: tuple[int, int, int, int]) -> list[np.ndarray]:
    """y in the two scan orders (b, 2, L, E), z (a non-contiguous view, up to +-60), LayerNorm weight and bias."""
    b, h, w, e = shape
    rng = np.random.default_rng(e)
    y = rng.standard_normal((b, 2, h * w, e)) * 3 + 1
    z = (rng.standard_normal((b, h, w, 2 * e)) * 15)[..., e:]
    return [y, z, rng.standard_normal(e), rng.standard_normal(e)]


def gate_outputs(shape: tuple[int, int, int, int]) -> np.ndarray:
    """numba_ss2d.gate_kernel in float32."""
    y, z, weight, bias = (a.astype(np.float32) for a in _gate_inputs(shape))
    out = np.empty(shape, np.float32)
    gate_kernel(y, z, weight, bias, 1e-5, out)
    return out


def gate_reference(shape: tuple[int, int, int, int]) -> np.ndarray:
    """The same gate in float64 numpy: LayerNorm(y0 + y1 transposed) * silu(z)."""
    b, h, w, e = shape
    y, z, weight, bias = _gate_inputs(shape)
    total = y[:, 0].reshape(b, h, w, e) + y[:, 1].reshape(b, w, h, e).transpose(0, 2, 1, 3)
    mean = total.mean(-1, keepdims=True)
    norm = (total - mean) / np.sqrt(((total - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * weight + bias
    return norm * z / (1 + np.exp(-z))


def _input_inputs(shape: tuple[int, int, int, int]) -> list[np.ndarray]:
    """x (a non-contiguous view), a 3x3 depthwise conv's taps (3, 3, E) and bias."""
    b, h, w, e = shape
    rng = np.random.default_rng(e + 1)
    return [(rng.standard_normal((b, h, w, 2 * e)) * 2)[..., :e], rng.standard_normal((3, 3, e)) * 0.5,
            rng.standard_normal(e)]


def input_outputs(shape: tuple[int, int, int, int]) -> np.ndarray:
    """numba_ss2d.input_kernel in float32: (b, 2, L, E)."""
    x, taps, bias = (a.astype(np.float32) for a in _input_inputs(shape))
    b, h, w, e = shape
    out = np.empty((b, 2, h * w, e), np.float32)
    input_kernel(x, taps, bias, out)
    return out


def input_reference(shape: tuple[int, int, int, int]) -> np.ndarray:
    """silu(3x3 depthwise conv with zero padding + bias) in float64, in both orders."""
    b, h, w, e = shape
    x, taps, bias = _input_inputs(shape)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = bias + sum(padded[:, dy:dy + h, dx:dx + w] * taps[dy, dx] for dy in range(3) for dx in range(3))
    act = conv / (1 + np.exp(-conv))
    return np.stack([act.reshape(b, h * w, e), act.transpose(0, 2, 1, 3).reshape(b, h * w, e)], axis=1)


def compare_input(got: np.ndarray, shape: tuple[int, int, int, int], what: str) -> None:
    """Within 1e-6 of the largest magnitude."""
    want = input_reference(shape)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-6, f"{what}: scan input {shape} differs by {err:.1e} (relative to its largest value)"


def compare_gate(got: np.ndarray, shape: tuple[int, int, int, int], what: str) -> None:
    """Within 1e-6 of the largest magnitude (float32 rounding of a LayerNorm and a sigmoid)."""
    want = gate_reference(shape)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-6, f"{what}: output gate {shape} differs by {err:.1e} (relative to its largest value)"


def compare(got: list[np.ndarray], want: list[np.ndarray], what: str) -> None:
    """float32 against float64: each output within 2e-5 of its largest magnitude."""
    names = "y u delta dt_weight A B C D bias".split()
    for name, a, w in zip(names, got, want, strict=True):
        err = np.abs(a - w).max() / np.abs(w).max()
        assert err < 2e-5, f"{what}: {name} differs by {err:.1e} (relative to its largest value)"


if __name__ == "__main__":
    check_exp2()
    results = {f"{c}_{blk}_{i}": out for c, blk in BLOCKS
               for i, out in enumerate(kernel_outputs(c, blk, np.float32))}
    results.update({"gate_" + "_".join(map(str, shape)): gate_outputs(shape) for shape in GATE_SHAPES})
    results.update({"input_" + "_".join(map(str, shape)): input_outputs(shape) for shape in GATE_SHAPES})
    np.savez(sys.argv[1], **results)
