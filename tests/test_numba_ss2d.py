"""SS2D's fused stages (serpent_cli.ops.numba_ss2d) against the torch ops they replace, and when they step aside.

The float32 kernels against float64 references, on this CPU and compiled for a generic one, are in
``test_scan_numba.py`` (``simd_check``); here the torch-level entry points: same values as the torch
composition, the fallbacks (autograd, float64, widths that are not a multiple of 16, other convs),
and a whole serpent-l forward with and without them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import serpent_cli.ops.numba_ss2d as numba_ss2d
from serpent_cli import create_model
from serpent_cli.io.imageio import read_rgb
from serpent_cli.ops import conv_silu_to_scan_orders, from_scan_orders, gated_norm_from_scan_orders, to_scan_orders


def _case(batch: int, height: int, width: int, channels: int, dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(height * width + channels)
    y = (torch.randn(batch, 2, height * width, channels, generator=g) * 3 + 1).to(dtype)
    z = (torch.randn(batch, height, width, 2 * channels, generator=g) * 8).to(dtype)[..., channels:]  # SS2D's: a view
    norm = torch.nn.LayerNorm(channels).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(channels, generator=g))
        norm.bias.copy_(torch.randn(channels, generator=g))
    return y, z, norm


def _torch_gate(y, z, norm, height, width):  # type: ignore[no-untyped-def]
    return norm(from_scan_orders(y, height, width)) * F.silu(z)


@pytest.mark.parametrize("shape", [(1, 64, 64, 64), (2, 17, 33, 32), (1, 1, 1, 16), (1, 9, 4, 512)])
def test_fused_gate_matches_the_torch_ops(shape: tuple[int, int, int, int]) -> None:
    batch, height, width, channels = shape
    y, z, norm = _case(*shape)
    with torch.inference_mode():
        assert numba_ss2d.fused_gate_applies(y, z, norm)
        got = gated_norm_from_scan_orders(y, z, norm, height, width)
        want = _torch_gate(y, z, norm, height, width)
    assert got.shape == want.shape == (batch, height, width, channels)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_extreme_gate_values_stay_finite_and_nan_propagates() -> None:
    """silu of very negative z is (about) -0, of very positive z is z; a NaN in y
    makes that pixel NaN and only that pixel."""
    y, z, norm = _case(1, 4, 4, 16)
    z[0, 0, 0, :] = -1e4
    z[0, 0, 1, :] = 1e4
    y[0, 0, 5, 3] = float("nan")  # row-major position 5: pixel (1, 1)
    with torch.inference_mode():
        got = gated_norm_from_scan_orders(y, z, norm, 4, 4)
        want = _torch_gate(y, z, norm, 4, 4)
    assert got[0, 0, 0].abs().max() < 1e-30  # -0 with vscalefps, about -1e4 / 2^127 with the clamped 2^x
    assert got[0, 1, 1].isnan().all() and not got[0, 1, 0].isnan().any() and not got[0, 2, 1].isnan().any()
    finite = ~want.isnan()
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-3)


def test_training_float64_and_odd_widths_take_the_torch_ops() -> None:
    y, z, norm = _case(1, 6, 5, 32)
    y.requires_grad_()
    assert not numba_ss2d.fused_gate_applies(y, z, norm)  # autograd needs the torch ops
    out = gated_norm_from_scan_orders(y, z, norm, 6, 5)
    out.sum().backward()
    assert y.grad is not None and norm.weight.grad is not None
    with torch.no_grad():
        assert numba_ss2d.fused_gate_applies(y, z, norm)  # no autograd: fused, though y requires grad
    for case in (_case(1, 6, 5, 32, torch.float64), _case(1, 6, 5, 24)):
        y, z, norm = case
        with torch.inference_mode():
            assert not numba_ss2d.fused_gate_applies(y, z, norm)
            torch.testing.assert_close(gated_norm_from_scan_orders(y, z, norm, 6, 5), _torch_gate(y, z, norm, 6, 5),
                                       rtol=0, atol=0)


def _torch_input(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    act = F.silu(conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
    return to_scan_orders(act, act)


@pytest.mark.parametrize("shape", [(1, 64, 64, 64), (2, 17, 33, 32), (1, 1, 1, 16), (1, 5, 3, 512), (1, 7, 6, 80)])
@pytest.mark.parametrize("kernel", [3, 1, 5])
def test_fused_scan_input_matches_the_torch_ops(shape: tuple[int, int, int, int], kernel: int) -> None:
    batch, height, width, channels = shape
    g = torch.Generator().manual_seed(channels + kernel)
    x = (torch.randn(batch, height, width, 2 * channels, generator=g) * 2)[..., :channels]  # SS2D's: a view
    conv = torch.nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels)
    with torch.inference_mode():
        assert numba_ss2d.fused_input_applies(x, conv)
        got = conv_silu_to_scan_orders(x, conv)
        want = _torch_input(x, conv)
    assert got.shape == (batch, 2, height * width, channels)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_scan_input_falls_back_for_training_float64_odd_widths_and_other_convs() -> None:
    x = torch.randn(1, 6, 5, 32)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)
    assert not numba_ss2d.fused_input_applies(x, conv)  # the conv's weight records autograd
    conv_silu_to_scan_orders(x, conv).sum().backward()
    assert conv.weight.grad is not None
    others = [
        (x.double(), torch.nn.Conv2d(32, 32, 3, padding=1, groups=32).double()),
        (torch.randn(1, 6, 5, 24), torch.nn.Conv2d(24, 24, 3, padding=1, groups=24)),
        (x, torch.nn.Conv2d(32, 32, 3, padding=0, groups=32)),
        (x, torch.nn.Conv2d(32, 32, 3, padding=1, groups=32, padding_mode="reflect")),
        (x, torch.nn.Conv2d(32, 32, 3, padding=1)),
        (x, torch.nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=32)),
    ]
    with torch.inference_mode():
        for inp, other in others:
            assert not numba_ss2d.fused_input_applies(inp, other)
            if other.padding != (0, 0):
                torch.testing.assert_close(conv_silu_to_scan_orders(inp, other), _torch_input(inp, other), rtol=0,
                                           atol=0)


def test_serpent_l_on_a_real_photo_same_with_and_without_the_fused_stages(monkeypatch: pytest.MonkeyPatch,
                                                                        data_dir: Path) -> None:
    torch.manual_seed(0)
    model = create_model("serpent-l").eval()
    photo = read_rgb(data_dir / "kodak24" / "kodim05.png")[:, :96, :128].unsqueeze(0)
    with torch.inference_mode():
        fused = model(photo)
        monkeypatch.setattr(numba_ss2d, "fused_gate_applies", lambda *args: False)
        monkeypatch.setattr(numba_ss2d, "fused_input_applies", lambda *args: False)
        unfused = model(photo)
    torch.testing.assert_close(fused, unfused, rtol=0, atol=1e-5)
