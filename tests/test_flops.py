"""FLOP counting: the scan's registered formula, sums of parts, and the peer figures of DESIGN.md section 10."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from serpent_cli import create_model
from serpent_cli.bench.flops import SCAN_OP, count_flops
from serpent_cli.bench.peers import build_model, count_params, spandrel_available
from serpent_cli.models.registry import VARIANTS
from serpent_cli.ops import selective_scan
from serpent_cli.ops.scan_op import counting_scan, scan_flops
from serpent_cli.ops.scan_torch import selective_scan_torch

needs_spandrel = pytest.mark.skipif(not spandrel_available(), reason="spandrel peers not importable here")


def _scan_inputs(device: str, batch: int = 2, channels: int = 8, length: int = 37, n_state: int = 5, groups: int = 4):
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device)

    return (
        rand(batch, channels, length),
        rand(batch, channels, length),
        -torch.rand(channels, n_state, generator=g).to(device) - 0.1,
        rand(batch, groups, n_state, length),
        rand(batch, groups, n_state, length),
        rand(channels),
        rand(channels),
    )


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("with_d", [True, False])
def test_scan_count_equals_formula(device: str, with_d: bool) -> None:
    u, delta, A, B, C, D, bias = _scan_inputs(device)
    counter = FlopCounterMode(display=False)
    with counting_scan(), counter:
        y = selective_scan(u, delta, A, B, C, D if with_d else None, bias, delta_softplus=True)
    assert y.shape == u.shape and y.device.type == device
    expected = 9 * 2 * 8 * 37 * 5 + (2 * 8 * 37 if with_d else 0)
    assert scan_flops(2, 8, 37, 5, with_d=with_d) == expected
    assert counter.get_total_flops() == expected
    if device == "cpu":  # counting routes through the op but must not change the result
        ref = selective_scan_torch(u, delta, A, B, C, D if with_d else None, bias, True)
        torch.testing.assert_close(y, ref)


def test_scan_invisible_outside_counting() -> None:
    """Normal runs call the backend directly: no op overhead, no count (that is why we route)."""
    u, delta, A, B, C, D, bias = _scan_inputs("cpu")
    counter = FlopCounterMode(display=False)
    with counter:
        selective_scan(u, delta, A, B, C, D, bias, delta_softplus=True)
    assert "serpent.selective_scan" not in {str(op) for op in counter.get_flop_counts().get("Global", {})}


def _expected_scan_flops(name: str, size: int) -> int:
    """Closed form: every SS2D layer of the network, from the config alone (DESIGN.md section 2)."""
    cfg = VARIANTS[name]
    total = 0
    for scale in range(cfg.num_scales):
        channels = cfg.channels(scale)
        side = size // cfg.patch_size // 2**scale
        layers = cfg.blocks_per_stage * (1 if scale == cfg.num_scales - 1 else 2)  # encoder + decoder
        d = 4 * cfg.expand * channels  # four directions
        total += layers * scan_flops(1, d, side * side, cfg.state_size(channels))
    return total


@pytest.mark.parametrize("name", ["serpent-b", "serpent-l", "serpent-h"])
def test_model_total_is_sum_of_parts(name: str) -> None:
    model = build_model(name, meta=True)
    report = count_flops(model, 128)
    assert report.total == report.by_module["Global"]
    # The top-level parts: called modules under the root whose own parents are not called modules
    # (ModuleLists are never called, so their elements are the parts).
    names = [k for k in report.by_module if k not in ("Global", "Serpent")]
    tops = {k: report.by_module[k] for k in names if not any(k.startswith(o + ".") for o in names)}
    expected_parts = {"Serpent.patchify", "Serpent.bottleneck", "Serpent.head", "Serpent.encoders.0"}
    assert expected_parts <= set(tops)
    assert sum(tops.values()) == report.total
    assert sum(report.by_op.values()) == report.total
    assert report.scan == _expected_scan_flops(name, 128)
    assert 0.2 < report.scan / report.total < 0.6  # the scan is a real share, not a rounding error


def test_meta_count_equals_real_count(data_dir) -> None:  # type: ignore[no-untyped-def]
    """Counting on meta tensors gives exactly what a real CPU forward pass gives (on a real photo)."""
    from PIL import Image

    path = sorted((data_dir / "natural-val").glob("*"))[0]
    crop = torch.from_numpy(__import__("numpy").asarray(Image.open(path).convert("RGB"))[:40, :56].copy())
    image = crop.permute(2, 0, 1)[None].float() / 255
    torch.manual_seed(0)
    real = build_model("serpent-b")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counting_scan(), counter:
        out = real(image)
    assert out.shape == image.shape and torch.isfinite(out).all()
    assert counter.get_total_flops() == count_flops(build_model("serpent-b", meta=True), 40, 56).total


def test_flops_scale_with_pixels_and_patch() -> None:
    b64, b128 = (count_flops(build_model("serpent-b", meta=True), s).total for s in (64, 128))
    assert b128 == 4 * b64  # linear in the pixel count
    l128 = count_flops(build_model("serpent-l", meta=True), 128).total
    assert 3.9 < l128 / b128 < 4.0  # patch 2 vs 4: 4x the tokens, same width (the head/patchify differ)


# DESIGN.md section 10 (H100, fp32, batch 1): params M, GFLOPs at 256.
PEERS_256 = {
    "swinir-b": (3.33, 483),
    "swinir-l": (11.50, 1601),
    "nafnet-32": (17.11, 32),
    "unet-32": (7.76, 24),
    "unet-128": (124.1, 385),
}


@pytest.mark.parametrize("name", sorted(PEERS_256))
def test_peer_figures_match_design(name: str) -> None:
    if name in ("swinir-b", "swinir-l", "nafnet-32") and not spandrel_available():
        pytest.skip("spandrel peers not importable here")
    params_m, gflops = PEERS_256[name]
    model = build_model(name, meta=True)
    assert count_params(model) / 1e6 == pytest.approx(params_m, rel=0.01)
    assert count_flops(model, 256).total / 1e9 == pytest.approx(gflops, rel=0.05)


@needs_spandrel
def test_ratio_sanity_against_design() -> None:
    """SwinIR-B / U-Net(32) and SwinIR-B / serpent-b at 512, the ratios the paper's claims are made of."""
    flops = {name: count_flops(build_model(name, meta=True), 512).total / 1e9 for name in ("swinir-b", "unet-32")}
    assert flops["swinir-b"] / flops["unet-32"] == pytest.approx(1931 / 97, rel=0.05)
    serpent_b = count_flops(build_model("serpent-b", meta=True), 512)
    # N = E/6 reproduces the paper's ~150x (156x); the N = c/6 reading gives ~236x.
    assert 150 < flops["swinir-b"] / (serpent_b.total / 1e9) < 162
    assert SCAN_OP in serpent_b.by_op
    serpent_l = count_flops(build_model("serpent-l", meta=True), 512).total / 1e9
    assert 37 < flops["swinir-b"] / serpent_l < 41  # the paper: about 40x
    with torch.device("meta"):
        old = create_model("serpent-b", state_divisor=6.0)
    block_reading = count_flops(old, 512).total / 1e9
    assert 200 < flops["swinir-b"] / block_reading < 260


def test_flops_do_not_depend_on_the_scan_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-place numba path is never taken while counting: every backend counts the same scan op."""
    counts = {}
    for backend in ("numba", "torch"):
        monkeypatch.setenv("SERPENT_SCAN_BACKEND", backend)
        result = count_flops(build_model("serpent-b", meta=True), 256)
        counts[backend] = (result.total, result.by_op.get(SCAN_OP))
    assert counts["numba"] == counts["torch"] and counts["numba"][1]
