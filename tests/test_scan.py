"""The chunked PyTorch scan against the step-by-step oracle, forward and gradients."""

from __future__ import annotations

import pytest
import torch

import serpent_cli.ops.scan_torch as scan_torch
from serpent_cli.ops import BackendUnavailable, resolve_backend, selective_scan
from serpent_cli.ops.scan_reference import selective_scan_reference

# (batch, channels, N, L, groups): L deliberately not a multiple of any chunk length.
SHAPES = [
    (1, 4, 1, 1, 1),
    (2, 8, 4, 37, 2),
    (1, 6, 16, 1000, 3),
    (2, 4, 64, 129, 4),
    (1, 12, 5, 777, 4),
]


def _inputs(b: int, d: int, n: int, length: int, g: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).requires_grad_()

    A = (-torch.rand(d, n, generator=gen) * 4 - 0.05).requires_grad_()
    return [r(b, d, length), r(b, d, length), A, r(b, g, n, length), r(b, g, n, length), r(d), r(d, scale=0.5)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("softplus", [True, False])
def test_chunked_matches_oracle(shape: tuple[int, ...], softplus: bool) -> None:
    ins = _inputs(*shape, seed=hash(shape) % 1000)
    if not softplus:  # raw delta must stay positive for a stable recurrence
        ins[1] = ins[1].detach().abs().requires_grad_()
    u, delta, A, B, C, D, bias = ins
    y = selective_scan(u, delta, A, B, C, D, bias, softplus, backend="torch")
    ref = selective_scan_reference(u, delta, A, B, C, D, bias, softplus)
    assert y.shape == u.shape and y.dtype == u.dtype
    torch.testing.assert_close(y, ref, rtol=1e-3, atol=1e-4)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, ins, gy)
    ref_grads = torch.autograd.grad(ref, ins, gy)
    for name, got, want in zip("u delta A B C D delta_bias".split(), grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3, msg=f"gradient of {name}")


def test_many_segments_match_oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny segment budget forces many segments: carried state and backward recompute."""
    monkeypatch.setattr(scan_torch, "SEGMENT_BUDGET", 64)
    ins = _inputs(2, 4, 3, 301, 2, seed=7)
    y = selective_scan(*ins, True, backend="torch")
    ref = selective_scan_reference(*ins, True)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    gy = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, ins, gy), torch.autograd.grad(ref, ins, gy)):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_optional_arguments_and_dtype() -> None:
    u, delta, A, B, C, _, _ = _inputs(1, 4, 2, 50, 1, seed=3)
    y = selective_scan(u.detach().bfloat16(), delta.detach().abs().bfloat16(), A.detach(), B.detach(), C.detach())
    assert y.dtype == torch.bfloat16
    ref = selective_scan_reference(u.detach(), delta.detach().abs(), A.detach(), B.detach(), C.detach())
    torch.testing.assert_close(y.float(), ref, rtol=5e-2, atol=5e-2)


def test_memory_is_bounded_by_segments() -> None:
    """Work tensors hold at most SEGMENT_BUDGET state elements whatever L is."""
    chunk, seg = scan_torch._plan(262144, 1, 256, 5)
    assert seg * 256 * 5 <= max(scan_torch.SEGMENT_BUDGET, chunk * 256 * 5)
    assert seg % chunk == 0


def test_shape_errors_are_clear() -> None:
    u, delta, A, B, C, _, _ = (t.detach() for t in _inputs(1, 4, 2, 10, 2, seed=1))
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:3], B, C)
    with pytest.raises(ValueError, match="divisible"):
        selective_scan(u, delta, A, torch.randn(1, 3, 2, 10), torch.randn(1, 3, 2, 10))


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_backend("auto", "cpu") == "torch"
    monkeypatch.setenv("SERPENT_SCAN_BACKEND", "torch")
    assert resolve_backend("auto", "cpu") == "torch"
    monkeypatch.setenv("SERPENT_SCAN_BACKEND", "mamba")
    with pytest.raises(BackendUnavailable):
        resolve_backend("auto", "cpu")
    monkeypatch.setenv("SERPENT_SCAN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown scan backend"):
        resolve_backend("auto", "cpu")
