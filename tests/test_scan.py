"""The chunked PyTorch scan against the step-by-step oracle, forward and (analytic) gradients.

Every random tensor, including the upstream gradient, comes from a seeded generator, and
delta + bias stays positive when softplus is off, so no test depends on luck.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import serpent_cli.ops.scan_torch as scan_torch
from serpent_cli.ops import BackendUnavailable, resolve_backend, selective_scan
from serpent_cli.ops.scan_reference import selective_scan_reference

NAMES = "u delta A B C D delta_bias".split()

# (batch, channels, N, L, groups): L deliberately not a multiple of any chunk length; N from 1 to 64.
SHAPES = [
    (1, 4, 1, 1, 1),
    (2, 8, 4, 37, 2),
    (1, 6, 16, 301, 3),
    (2, 4, 64, 129, 4),
    (1, 12, 5, 203, 4),
    (2, 3, 1, 250, 1),
    (1, 8, 33, 91, 8),
]


def _inputs(
    b: int, d: int, n: int, length: int, g: int, seed: int, softplus: bool = True, dtype: torch.dtype = torch.float32
) -> list[torch.Tensor]:
    """u, delta, A, B, C, D, delta_bias as leaves; delta + bias > 0 when softplus is off."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype) * scale

    u, delta = r(b, d, length), r(b, d, length)
    A = -torch.rand(d, n, generator=gen, dtype=dtype) * 4 - 0.05
    B, C, D, bias = r(b, g, n, length), r(b, g, n, length), r(d), r(d, scale=0.5)
    if not softplus:  # raw delta must stay positive for a stable (decaying) recurrence
        delta, bias = delta.abs() * 0.5, bias.abs()
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, bias)]


def _upstream(y: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 12345)
    return torch.randn(y.shape, generator=gen, dtype=y.dtype)


def _check_against_oracle(
    ins: list[torch.Tensor], softplus: bool, seed: int, tol: float = 1e-3, backend: str = "torch"
) -> None:
    y = selective_scan(*ins, softplus, backend=backend)
    ref = selective_scan_reference(*ins, softplus)
    assert y.shape == ins[0].shape and y.dtype == ins[0].dtype
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    gy = _upstream(y, seed)
    grads = torch.autograd.grad(y, ins, gy)
    ref_grads = torch.autograd.grad(ref, ins, gy)
    for name, got, want in zip(NAMES, grads, ref_grads):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=lambda m, n=name: f"gradient of {n}: {m}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_backend_matches_oracle(shape: tuple[int, ...], softplus: bool, backend: str) -> None:
    """The chunked torch scan and the compiled numba scan: forward and all seven gradients."""
    seed = sum(v * 31**i for i, v in enumerate(shape)) % 10007
    _check_against_oracle(_inputs(*shape, seed=seed, softplus=softplus), softplus, seed, backend=backend)


def test_numba_growing_states_take_the_clamped_exp() -> None:
    """A >= 0 somewhere (a growing state, legal in mamba-ssm's contract): the kernel picks its exp per channel
    block from the signs of A (the cheaper one assumes delta * A <= 0); such a block still matches the oracle."""
    ins = _inputs(1, 8, 4, 40, 2, seed=5)
    with torch.no_grad():
        ins[2][3, 1] = 0.02  # one small growth rate: stays finite over 40 steps
        ins[2][5, 0] = 0.0
    _check_against_oracle(ins, True, seed=5, backend="numba")


@pytest.mark.parametrize("softplus", [True, False])
def test_many_segments_match_oracle(monkeypatch: pytest.MonkeyPatch, softplus: bool) -> None:
    """A tiny segment budget forces many segments: carried state forwards, carried adjoint backwards."""
    monkeypatch.setattr(scan_torch, "SEGMENT_BUDGET", 64)
    _, seg = scan_torch._plan(301, 2, 4, 3)
    assert seg < 301 and 301 % seg != 0  # several segments, the last one padded
    _check_against_oracle(_inputs(2, 4, 3, 301, 2, seed=7, softplus=softplus), softplus, seed=7)


def test_backward_uses_the_forward_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backward cuts the segments the forward saved states for, whatever the budget is then."""
    ins = _inputs(1, 4, 3, 150, 2, seed=9)
    y = selective_scan(*ins, True, backend="torch")  # one segment
    monkeypatch.setattr(scan_torch, "SEGMENT_BUDGET", 48)  # would be many segments
    gy = _upstream(y, 9)
    ref = selective_scan_reference(*ins, True)
    for got, want in zip(torch.autograd.grad(y, ins, gy), torch.autograd.grad(ref, ins, gy)):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_half_precision_gradients_keep_their_dtype() -> None:
    """bf16 inputs: fp32 inside, gradients come back in each input's own dtype and close to fp32 ones."""
    ins = _inputs(2, 4, 3, 40, 2, seed=4)
    low = [t.detach().bfloat16().requires_grad_() for t in ins[:2]] + ins[2:]
    y = selective_scan(*low, True, backend="torch")
    gy = _upstream(y.float(), 4)
    grads = torch.autograd.grad(y, low, gy.bfloat16())
    ref_ins = [t.detach().float().requires_grad_() for t in low]
    ref = selective_scan_reference(*ref_ins, True)
    ref_grads = torch.autograd.grad(ref, ref_ins, gy)
    for t, got, want in zip(low, grads, ref_grads):
        assert got.dtype == t.dtype
        torch.testing.assert_close(got.float(), want, rtol=5e-2, atol=5e-2)


def test_fp64_is_scanned_in_fp64(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp64 inputs give fp64 results precise enough for torch's own numerical gradcheck."""
    monkeypatch.setattr(scan_torch, "SEGMENT_BUDGET", 24)  # several segments and chunks even at L=23
    for softplus in (True, False):
        ins = _inputs(1, 4, 2, 19, 2, seed=11, softplus=softplus, dtype=torch.float64)

        def fn(*args: torch.Tensor, sp: bool = softplus) -> torch.Tensor:
            return scan_torch.selective_scan_torch(*args, sp)

        assert fn(*ins).dtype == torch.float64
        assert torch.autograd.gradcheck(fn, tuple(ins), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_partial_and_missing_arguments() -> None:
    """Only some inputs need grads; D and delta_bias may be absent."""
    u, delta, A, B, C, D, bias = _inputs(2, 6, 4, 70, 3, seed=5)
    A_fixed = A.detach()
    for extra in ((None, None), (D, None), (None, bias)):
        y = selective_scan(u, delta, A_fixed, B, C, *extra, True, backend="torch")
        ref = selective_scan_reference(u, delta, A_fixed, B, C, *extra, True)
        gy = _upstream(y, 5)
        wanted = [u, delta, B, C] + [t for t in extra if t is not None]
        for got, want in zip(torch.autograd.grad(y, wanted, gy), torch.autograd.grad(ref, wanted, gy)):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    # Only the gradient of u, through a model-like call (inputs detached, weights leaves).
    (gu,) = torch.autograd.grad(selective_scan(u, delta.detach(), A_fixed, B.detach(), C.detach()).sum(), [u])
    (ru,) = torch.autograd.grad(selective_scan_reference(u, delta.detach(), A_fixed, B.detach(), C.detach()).sum(), [u])
    torch.testing.assert_close(gu, ru, rtol=1e-3, atol=1e-3)


def test_backward_memory_does_not_grow_with_length() -> None:
    """Autograd keeps the inputs plus one state per segment, never per-step states."""
    saved = {}
    for length in (4096, 16384):
        u, delta, A, B, C, D, bias = _inputs(1, 8, 4, length, 2, seed=2)
        y = selective_scan(u, delta, A, B, C, D, bias, True, backend="torch")
        tensors = y.grad_fn.saved_tensors
        inputs_numel = sum(t.numel() for t in (u, delta, A, B, C, D, bias))
        saved[length] = sum(t.numel() for t in tensors if t is not None) - inputs_numel
    _, seg = scan_torch._plan(16384, 1, 8, 4)
    assert saved[16384] <= (16384 // seg + 1) * 8 * 4  # one (b, g, n, dg) state per segment
    assert saved[16384] < 16384  # far below one value per step
    assert saved[16384] <= 4 * saved[4096]


def test_optional_arguments_and_dtype() -> None:
    u, delta, A, B, C, _, _ = (t.detach() for t in _inputs(1, 4, 2, 50, 1, seed=3, softplus=False))
    y = selective_scan(u.bfloat16(), delta.bfloat16(), A, B, C)
    assert y.dtype == torch.bfloat16
    ref = selective_scan_reference(u, delta, A, B, C)
    torch.testing.assert_close(y.float(), ref, rtol=5e-2, atol=5e-2)


_PEAK_SCRIPT = """
import sys, torch
from pathlib import Path
from serpent_cli.ops.scan_torch import selective_scan_torch

def status(key):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) * 1024

torch.set_num_threads(1)
length, d, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
g = torch.Generator().manual_seed(0)
u, delta = torch.randn(1, d, length, generator=g), torch.randn(1, d, length, generator=g)
A = -torch.rand(d, n, generator=g)
B, C = torch.randn(1, 1, n, length, generator=g), torch.randn(1, 1, n, length, generator=g)
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to what is resident now
base = status("VmRSS")
with torch.no_grad():
    y = selective_scan_torch(u, delta, A, B, C, torch.ones(d), torch.zeros(d), True)
print(status("VmHWM") - base)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS reset is Linux's /proc")
def test_memory_is_bounded_by_segments() -> None:
    """Measured: the torch backend's peak memory grows with L like a few (d, L) copies, never like the state.

    A chunked scan that kept every state would hold d * n * L floats (8 KiB a position here); segments of
    SEGMENT_BUDGET state elements keep the growth to the inputs' own order (measured about 1.3 KiB a
    position: softplus(delta), the output and other (d, L) temporaries).  Peak RSS (VmHWM, reset just
    before the scan) of a fresh process per length, so nothing cached by an earlier scan hides the growth.
    Transparent huge pages (which ``import serpent_cli`` turns on for torch) are off here: they make the
    resident size of each large allocation move in 2 MB steps, and when the kernel collapses pages, by as
    much as the algorithm's own growth (1.9-3.8 KiB a position measured with them, 1.4 without).
    """
    d, n = 64, 32

    def extra(length: int) -> int:
        run = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(length), str(d), str(n)],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "THP_MEM_ALLOC_ENABLE": "0"})
        return int(run.stdout.strip())

    short, long = 16384, 65536
    sizes = {length: extra(length) for length in (short, long)}
    growth = (sizes[long] - sizes[short]) / (long - short)  # bytes per added position
    state = d * n * 4  # bytes per position if every state were kept
    assert 0 < growth < state / 3, f"{growth:.0f} B/position against {state} of kept states ({sizes})"


def test_shape_errors_are_clear() -> None:
    u, delta, A, B, C, _, _ = (t.detach() for t in _inputs(1, 4, 2, 10, 2, seed=1))
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:3], B, C)
    with pytest.raises(ValueError, match="divisible"):
        selective_scan(u, delta, A, torch.zeros(1, 3, 2, 10), torch.zeros(1, 3, 2, 10))


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_backend("auto", "cpu") == "numba"  # the compiled CPU scan, when numba imports
    monkeypatch.setenv("SERPENT_SCAN_BACKEND", "torch")
    assert resolve_backend("auto", "cpu") == "torch"
    monkeypatch.setenv("SERPENT_SCAN_BACKEND", "mamba")
    with pytest.raises(BackendUnavailable):
        resolve_backend("auto", "cpu")
    monkeypatch.setenv("SERPENT_SCAN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown scan backend"):
        resolve_backend("auto", "cpu")
