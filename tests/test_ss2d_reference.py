"""SS2D and a whole Serpent forward against an independent reference written from DESIGN.md section 2.

The reference below shares no code with :mod:`serpent_cli.models.serpent` but the parameters: it lists the
four scan orders as explicit position lists (row-major, column-major, both reversed), runs each direction
through the step-by-step oracle scan (:func:`selective_scan_reference`, DESIGN section 3), puts every output
back at its pixel and sums, then LayerNorm, the SiLU gate and the output projection.  Both production
paths (numba's in-place directional scan and the torch backend's unroll / scan / merge) must match it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from serpent_cli.models.config import SerpentConfig
from serpent_cli.models.serpent import SS2D
from serpent_cli.ops import ENV_VAR
from serpent_cli.ops.scan_reference import selective_scan_reference


def scan_orders(height: int, width: int) -> list[list[int]]:
    """Flat (row-major) pixel indices in the order each direction visits them."""
    row = [r * width + c for r in range(height) for c in range(width)]
    col = [r * width + c for c in range(width) for r in range(height)]
    return [row, col, row[::-1], col[::-1]]


def reference_ss2d(m: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D of DESIGN.md section 2 on (B, H, W, c), from ``m``'s parameters only."""
    b, h, w, _ = x.shape
    e, n, r = m.inner, m.n_state, m.dt_rank
    xz = x @ m.in_proj.weight.T
    u, z = xz[..., :e], xz[..., e:]
    u = F.silu(F.conv2d(u.permute(0, 3, 1, 2), m.conv.weight, m.conv.bias, padding=m.conv.padding, groups=e))
    flat = u.reshape(b, e, h * w)
    out = torch.zeros_like(flat)
    for k, order in enumerate(scan_orders(h, w)):
        seq = flat[:, :, order]  # (B, E, L) in this direction's order
        proj = torch.einsum("ce,bel->bcl", m.x_proj_weight[k], seq)  # (B, R + 2N, L)
        dt_raw, B, C = proj[:, :r], proj[:, r : r + n], proj[:, r + n :]
        delta = torch.einsum("er,brl->bel", m.dt_proj_weight[k], dt_raw)
        y = selective_scan_reference(
            seq, delta, -torch.exp(m.A_log[k * e : (k + 1) * e]), B[:, None], C[:, None], m.D[k * e : (k + 1) * e],
            delta_bias=m.dt_proj_bias[k], delta_softplus=True)
        out[:, :, order] += y  # back to image order; the four directions are summed
    y = F.layer_norm(out.permute(0, 2, 1), (e,), m.out_norm.weight, m.out_norm.bias, m.out_norm.eps)
    y = y.reshape(b, h, w, e) * F.silu(z)
    return y @ m.out_proj.weight.T


def _module(channels: int, seed: int) -> SS2D:
    torch.manual_seed(seed)
    m = SS2D(channels, SerpentConfig())
    with torch.no_grad():  # trained-looking parameters, not the init's symmetric values (D = 1, equal A rows)
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize(("channels", "height", "width"), [(32, 1, 1), (32, 3, 5), (64, 8, 8), (32, 7, 12)])
def test_ss2d_matches_the_reference(monkeypatch: pytest.MonkeyPatch, backend: str, channels: int, height: int,
                                    width: int) -> None:
    monkeypatch.setenv(ENV_VAR, backend)
    m = _module(channels, seed=height * 100 + width)
    x = torch.randn(2, height, width, channels)
    with torch.no_grad():
        got, want = m(x), reference_ss2d(m, x)
    assert want.abs().max() > 1e-2  # a real signal, not two zeros agreeing
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_scan_orders_are_the_four_of_design() -> None:
    """3 x 2 image: positions numbered row-major 0..5."""
    assert scan_orders(3, 2) == [[0, 1, 2, 3, 4, 5], [0, 2, 4, 1, 3, 5], [5, 4, 3, 2, 1, 0], [5, 3, 1, 4, 2, 0]]


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_serpent_forward_with_the_reference_ss2d(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    """The whole network (bundled serpent-b weights) with every SS2D swapped for the reference: same output."""
    from serpent_cli.factory import create_model

    monkeypatch.setenv(ENV_VAR, backend)
    model = create_model("serpent-b", pretrained=True)
    image = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        got = model(image)
        for module in model.modules():
            if isinstance(module, SS2D):
                module.forward = (  # type: ignore[method-assign]
                    lambda mod: lambda x, residual: residual + reference_ss2d(mod, x))(module)
        want = model(image)
    assert (want - image).abs().mean() > 1e-3  # the network changes the image
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
