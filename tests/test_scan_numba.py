"""The compiled CPU scan (numba backend): exact gradients, the in-place four directions, real models.

The oracle comparisons of forward and all seven gradients over many shapes live in
``test_scan.py`` (parametrised over backends); here: float64 gradcheck, each scan direction of the
in-place SS2D scan against unroll / scan / merge, awkward layouts, a bundled model on a real
photo, training steps, the thread count, and the per-user compile cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import simd_check
import torch
from numba_cache import NumbaCache

import serpent_cli.ops.scan_numba as scan_numba
from serpent_cli import create_model
from serpent_cli.io.imageio import read_rgb
from serpent_cli.models.serpent import merge_four_ways, unroll_four_ways
from serpent_cli.ops import directional_backend, selective_scan, ss2d_scan, ss2d_scan_orders
from serpent_cli.ops.scan_reference import selective_scan_reference

K = 4  # scan directions


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", ["fast_exp2", "exp2_decay"])
def test_fast_exp2_is_accurate_clamped_and_passes_nan(name: str) -> None:
    """The kernel's float32 2^x: within 2 ulp where float32 is normal, clamped outside, NaN stays NaN.

    ``exp2_decay`` (a decay's exponent, never above 127) has only the lower clamp.
    """
    import numba
    import numpy as np

    from serpent_cli.ops import numba_kernels
    from serpent_cli.ops.numba_kernels import FASTMATH

    exp2 = getattr(numba_kernels, name)
    high = 126.9 if name == "fast_exp2" else 0.0

    @numba.njit(fastmath=FASTMATH)  # the scan kernels' flags: the rounding trick must survive them
    def exp2_all(x):  # type: ignore[no-untyped-def]
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = exp2(x[i])
        return out

    x = np.concatenate([np.linspace(-125.9, high, 1_000_001), np.linspace(-1, 1, 100_001)]).astype(np.float32)
    exact = np.exp2(x.astype(np.float64))
    assert np.abs(exp2_all(x) / exact - 1).max() < 2.5e-7
    edges = exp2_all(np.array([-1e30, -200.0, -np.inf, np.nan, 126.5], np.float32))
    np.testing.assert_allclose(edges[[0, 1, 2]], 2.0**-126, rtol=2.5e-7)
    assert np.isnan(edges[3])
    np.testing.assert_allclose(edges[4], 2.0**126.5, rtol=2.5e-7)
    if name == "fast_exp2":
        np.testing.assert_allclose(exp2_all(np.array([200.0, 1e30, np.inf], np.float32)), 2.0**127, rtol=2.5e-7)


def test_simd_paths_match_the_scalar_loops() -> None:
    """float32 through the explicit SIMD loops (blocks of 1-4 vectors) against float64 through the scalar loops.

    Forward and every gradient, several segments and channel blocks; and the vector 2^x's accuracy.
    """
    simd_check.check_exp2()
    for channels, block in simd_check.BLOCKS:
        got = simd_check.kernel_outputs(channels, block, np.float32)
        want = simd_check.kernel_outputs(channels, block, np.float64)
        simd_check.compare(got, want, f"{channels} channels, block {block}")
    for shape in simd_check.GATE_SHAPES:
        simd_check.compare_gate(simd_check.gate_outputs(shape), shape, "this CPU")
        simd_check.compare_input(simd_check.input_outputs(shape), shape, "this CPU")


def test_simd_paths_compiled_for_a_cpu_without_avx512(tmp_path: Path) -> None:
    """The same checks compiled for a generic x86-64 CPU, in a fresh cache: the exponent-bit 2^x (no vscalefps)
    and vectors split to SSE width, as on a laptop without AVX-512."""
    env = {**os.environ, "NUMBA_CPU_NAME": "generic", "NUMBA_CPU_FEATURES": "",
           "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "outputs.npz"
    subprocess.run([sys.executable, str(Path(simd_check.__file__)), str(out)], env=env, check=True, timeout=900)
    got = np.load(out)
    for channels, block in simd_check.BLOCKS:
        outputs = [got[f"{channels}_{block}_{i}"] for i in range(9)]
        simd_check.compare(outputs, simd_check.kernel_outputs(channels, block, np.float64),
                           f"generic CPU, {channels} channels, block {block}")
    for shape in simd_check.GATE_SHAPES:
        simd_check.compare_gate(got["gate_" + "_".join(map(str, shape))], shape, "generic CPU")
        simd_check.compare_input(got["input_" + "_".join(map(str, shape))], shape, "generic CPU")


@pytest.mark.parametrize("softplus", [True, False])
def test_float64_gradcheck(monkeypatch: pytest.MonkeyPatch, softplus: bool) -> None:
    """fp64 in, fp64 inside: torch's numerical gradcheck passes, across several saved segments."""
    monkeypatch.setattr(scan_numba, "SEGMENT", 4)  # L = 11: three segments, the last one short
    g = _gen(3)
    b, d, n, length, groups = 2, 4, 3, 11, 2
    u, delta = torch.randn(b, d, length, generator=g, dtype=torch.float64), torch.rand(b, d, length, generator=g,
                                                                                       dtype=torch.float64)
    A = -torch.rand(d, n, generator=g, dtype=torch.float64) - 0.1
    B, C = (torch.randn(b, groups, n, length, generator=g, dtype=torch.float64) for _ in range(2))
    D, bias = torch.randn(d, generator=g, dtype=torch.float64), torch.rand(d, generator=g, dtype=torch.float64)
    ins = tuple(t.requires_grad_() for t in (u, delta, A, B, C, D, bias))

    def fn(*args: torch.Tensor) -> torch.Tensor:
        return selective_scan(*args, softplus, backend="numba")

    assert fn(*ins).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, ins, eps=1e-6, atol=1e-7, rtol=1e-6)


def _directional_inputs(b: int, e: int, n: int, h: int, w: int, seed: int) -> list[torch.Tensor]:
    """Image-order, channels-last inputs of the in-place scan."""
    g = _gen(seed)
    length = h * w
    return [
        torch.randn(b, length, e, generator=g),
        torch.randn(b, length, K, e, generator=g),
        -torch.rand(K, e, n, generator=g) * 2 - 0.05,
        torch.randn(b, length, K, n, generator=g),
        torch.randn(b, length, K, n, generator=g),
        torch.randn(K, e, generator=g),
        torch.randn(K, e, generator=g) * 0.5,
    ]


def _unrolled_reference(ins: list[torch.Tensor], h: int, w: int) -> torch.Tensor:
    """unroll_four_ways -> oracle scan -> merge_four_ways, the path every other backend takes."""
    u, delta, A, B, C, D, bias = ins
    b, length, e = u.shape
    n = A.shape[-1]
    image = u.transpose(1, 2).reshape(b, e, h, w)
    xs = unroll_four_ways(image).reshape(b, K * e, length)
    # delta, B and C are per direction but computed in image order: unroll each direction's own copy.
    ds = torch.stack([unroll_four_ways(delta[:, :, k].transpose(1, 2).reshape(b, e, h, w))[:, k] for k in range(K)], 1)
    bs = torch.stack([unroll_four_ways(B[:, :, k].transpose(1, 2).reshape(b, n, h, w))[:, k] for k in range(K)], 1)
    cs = torch.stack([unroll_four_ways(C[:, :, k].transpose(1, 2).reshape(b, n, h, w))[:, k] for k in range(K)], 1)
    y = selective_scan_reference(xs, ds.reshape(b, K * e, length), A.reshape(K * e, n), bs, cs, D.reshape(-1),
                                 bias.reshape(-1), True)
    return merge_four_ways(y.view(b, K, e, length), h, w).flatten(2).transpose(1, 2)


@pytest.mark.parametrize("direction", range(K))
@pytest.mark.parametrize("size", [(5, 7), (9, 4), (1, 1), (1, 6), (16, 16)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_each_direction_matches_unroll_scan_merge(direction: int, size: tuple[int, int]) -> None:
    """Only direction k contributes (C and D zero elsewhere): forward and every gradient agree."""
    h, w = size
    ins = _directional_inputs(2, 16, 5, h, w, seed=17 * h + w + direction)
    mask = torch.zeros(K)
    mask[direction] = 1
    ins[4] = ins[4] * mask[None, None, :, None]
    ins[5] = ins[5] * mask[:, None]
    leaves = [t.detach().requires_grad_() for t in ins]
    y = ss2d_scan(*leaves, h, w)
    ref = _unrolled_reference(leaves, h, w)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    gy = torch.randn(y.shape, generator=_gen(5))
    for name, got, want in zip("u delta A B C D bias".split(), torch.autograd.grad(y, leaves, gy),
                               torch.autograd.grad(ref, leaves, gy)):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3, msg=lambda m, n=name: f"d{n}: {m}")


def test_all_directions_together_and_wide_channels() -> None:
    """All four at once (the real use), channels spanning several work items, batch 2."""
    h, w = 6, 11
    leaves = [t.requires_grad_() for t in _directional_inputs(2, 128, 7, h, w, seed=23)]
    y = ss2d_scan(*leaves, h, w)
    ref = _unrolled_reference(leaves, h, w)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    gy = torch.randn(y.shape, generator=_gen(6))
    for got, want in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(ref, leaves, gy)):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_low_rank_delta_in_the_kernel_matches_the_full_delta(monkeypatch: pytest.MonkeyPatch,
                                                              dtype: torch.dtype) -> None:
    """dt_proj applied inside the kernel == the full delta made first: forward and every gradient.

    Several segments (SEGMENT = 8, L = 30), two channel blocks (E = 32, so block 16 on 2 work items
    per order), rank 3; fp64 also passes torch's numerical gradcheck.
    """
    monkeypatch.setattr(scan_numba, "SEGMENT", 8)
    g = _gen(31)
    b, e, n, r, length = 2, 32, 5, 3, 30
    u = torch.randn(b, 2, length, e, generator=g, dtype=dtype)
    dts = torch.randn(b, 2, length, 2, r, generator=g, dtype=dtype) * 0.5
    weight = torch.randn(K, e, r, generator=g, dtype=dtype) * 0.5
    A = -torch.rand(K, e, n, generator=g, dtype=dtype) - 0.1
    B, C = (torch.randn(b, 2, length, 2, n, generator=g, dtype=dtype) for _ in range(2))
    D, bias = torch.randn(K, e, generator=g, dtype=dtype), torch.randn(K, e, generator=g, dtype=dtype) * 0.5
    leaves = [t.requires_grad_() for t in (u, dts, weight, A, B, C, D, bias)]

    def low_rank(u, dts, weight, A, B, C, D, bias):  # type: ignore[no-untyped-def]
        return ss2d_scan_orders(u, dts, A, B, C, D, bias, dt_weight=weight)

    def full(u, dts, weight, A, B, C, D, bias):  # type: ignore[no-untyped-def]
        by_direction = weight.view(2, 2, e, r)  # direction k = 2 j + q -> [j, q]
        delta = torch.einsum("bqljr,jqer->bqlje", dts, by_direction)
        return ss2d_scan_orders(u, delta, A, B, C, D, bias)

    y, ref = low_rank(*leaves), full(*leaves)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(y, ref, **tol)
    gy = torch.randn(y.shape, generator=_gen(32), dtype=dtype)
    names = "u dts dt_weight A B C D bias".split()
    for name, got, want in zip(names, torch.autograd.grad(y, leaves, gy), torch.autograd.grad(ref, leaves, gy)):
        torch.testing.assert_close(got, want, **{k: v * 10 for k, v in tol.items()},
                                   msg=lambda m, nm=name: f"d{nm}: {m}")
    if dtype == torch.float64:
        # The first 4 positions (dim 2 of u, dts, B, C), across a segment boundary after SEGMENT = 2.
        monkeypatch.setattr(scan_numba, "SEGMENT", 2)
        small = [(t.detach()[:, :, :4] if t.dim() >= 4 else t.detach()).clone().requires_grad_() for t in leaves]
        assert torch.autograd.gradcheck(low_rank, tuple(small), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_non_contiguous_and_low_precision_inputs() -> None:
    """Strided views and bf16 go in; the result has u's dtype and matches the oracle."""
    g = _gen(8)
    b, d, n, length = 2, 6, 4, 33
    u = torch.randn(b, length, d, generator=g).transpose(1, 2)  # non-contiguous (b, d, L)
    delta = torch.randn(b, d, 2 * length, generator=g)[:, :, ::2]  # strided
    A = -torch.rand(n, d, generator=g).t()  # transposed
    B = torch.randn(b, 3, length, n, generator=g).transpose(2, 3)
    C = torch.randn(b, 3, n, length, generator=g)
    y = selective_scan(u, delta, A, B, C, None, None, True, backend="numba")
    torch.testing.assert_close(y, selective_scan_reference(u, delta, A, B, C, None, None, True), rtol=1e-4, atol=1e-4)
    low = selective_scan(u.bfloat16(), delta.bfloat16(), A, B, C, None, None, True, backend="numba")
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), y, rtol=5e-2, atol=5e-2)


def test_bundled_serpent_l_same_output_with_numba_and_torch(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    """The shipped serpent-l on a real photo: the in-place numba path and the torch path agree."""
    model = create_model("serpent-l", pretrained=True).eval()
    photo = read_rgb(sorted((data_dir / "kodak24").iterdir())[0])[:, :192, :160].unsqueeze(0)
    assert directional_backend("cpu")
    with torch.inference_mode():
        fast = model(photo)
        monkeypatch.setenv("SERPENT_SCAN_BACKEND", "torch")
        assert not directional_backend("cpu")
        slow = model(photo)
    assert (fast - slow).abs().max().item() < 1e-4


def test_training_steps_match_torch(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    """Three Adam steps of serpent-b on real crops: the same weights with either backend."""
    photo = read_rgb(sorted((data_dir / "natural-train").iterdir())[0])
    clean = torch.stack([photo[:, :48, :48], photo[:, 48:96, 48:96]])
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=_gen(0))

    def train(backend: str) -> dict[str, torch.Tensor]:
        monkeypatch.setenv("SERPENT_SCAN_BACKEND", backend)
        torch.manual_seed(0)
        model = create_model("serpent-b")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.l1_loss(model(noisy), clean).backward()
            opt.step()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    fast, slow = train("numba"), train("torch")
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-4, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_thread_count_follows_torch_and_is_left_alone() -> None:
    """numba uses torch's thread count; starting numba's pool does not reset torch's."""
    import numba

    before = torch.get_num_threads()
    ins = _directional_inputs(1, 16, 3, 4, 4, seed=1)
    try:
        torch.set_num_threads(1)
        ss2d_scan(*ins, 4, 4)
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_channel_blocks_divide_and_balance() -> None:
    for channels, batch, threads in [(64, 1, 2), (512, 2, 4), (6, 1, 2), (96, 3, 1), (7, 1, 8)]:
        block = scan_numba.channel_block(channels, batch, threads)
        assert channels % block == 0 and block <= scan_numba.MAX_BLOCK
        assert block >= min(channels, scan_numba.MIN_BLOCK) or channels % scan_numba.MIN_BLOCK
        wider = [d for d in range(block + 1, min(channels, scan_numba.MAX_BLOCK) + 1) if channels % d == 0]
        assert not wider or batch * (channels // wider[0]) < threads  # narrowed only for the threads


def test_compiled_code_is_cached_per_user(empty_numba_cache: NumbaCache) -> None:
    """A fresh process compiles into $XDG_CACHE_HOME/serpent/numba; the next one loads from there."""
    code = (
        "import torch\nfrom serpent_cli.ops import selective_scan\n"
        "x = torch.ones(1, 2, 5)\n"
        "y = selective_scan(x, x, -torch.ones(2, 3), torch.ones(1, 1, 3, 5), torch.ones(1, 1, 3, 5), backend='numba')\n"
        "print(float(y.sum()))\n"
    )
    env = empty_numba_cache.env
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    cached = list(empty_numba_cache.folder.rglob("*scan_forward*.nbc"))
    assert cached, "no compiled forward kernel in the per-user cache"
    stamp = {p: p.stat().st_mtime_ns for p in cached}
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and second.stdout == first.stdout
    assert {p: p.stat().st_mtime_ns for p in cached} == stamp  # loaded, not compiled again
