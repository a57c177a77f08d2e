"""The Serpent network: shapes, global receptive field, parameter counts, config round trip."""

from __future__ import annotations

import pytest
import torch

from serpent_cli import VARIANTS, SerpentConfig, create_model
from serpent_cli.models.serpent import merge_four_ways, unroll_four_ways

NAMES = list(VARIANTS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(67, 93), (8, 8), (1, 1), (5, 130)])
def test_any_size_returns_input_shape(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_large_input_shape() -> None:
    model = create_model("serpent-b").eval()
    x = torch.rand(1, 3, 300, 517)
    with torch.no_grad():
        assert model(x).shape == x.shape


def test_four_orders_are_row_col_and_reversed() -> None:
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    xs = unroll_four_ways(x)
    assert torch.equal(xs[0, 0, 0], torch.arange(12.0))
    assert xs[0, 1, 0].tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert torch.equal(xs[:, 2], xs[:, 0].flip(-1))
    assert torch.equal(xs[:, 3], xs[:, 1].flip(-1))
    assert torch.equal(merge_four_ways(xs, 3, 4), 4 * x)


@pytest.mark.parametrize("name", NAMES)
def test_receptive_field_is_global(name: str) -> None:
    """The gradient of one output pixel in the middle reaches all four corners."""
    torch.manual_seed(0)
    model = create_model(name)
    size = 32
    x = torch.rand(1, 3, size, size, requires_grad=True)
    y = model(x)
    y[0, :, size // 2, size // 2].sum().backward()
    g = x.grad[0].abs().sum(0)
    for corner in [(0, 0), (0, size - 1), (size - 1, 0), (size - 1, size - 1)]:
        assert g[corner] > 0, f"{name}: corner {corner} does not influence the centre"


def test_parameter_counts_differ_only_in_patch_layers() -> None:
    counts = {}
    for name in NAMES:
        model = create_model(name)
        body = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("patchify.", "head.")))
        counts[name] = body
        cfg = model.config
        p, d = cfg.patch_size, cfg.embed_dim
        patch = sum(p_.numel() for n, p_ in model.named_parameters() if n.startswith(("patchify.", "head.")))
        assert patch == (3 * p * p * d + d) + (d * 3 * p * p + 3 * p * p)
    assert len(set(counts.values())) == 1, counts


def test_state_size_reading() -> None:
    """N = E / 6 with E = 2c the SS2D inner width (DESIGN.md section 2); c / 6 stays an option."""
    cfg = SerpentConfig()
    assert [cfg.state_size(cfg.channels(s)) for s in range(4)] == [11, 21, 43, 85]
    block_reading = SerpentConfig(state_divisor=6.0)
    assert [block_reading.state_size(block_reading.channels(s)) for s in range(4)] == [5, 11, 21, 43]
    assert [cfg.dt_rank(cfg.channels(s)) for s in range(4)] == [2, 4, 8, 16]


def test_config_round_trip_and_overrides() -> None:
    cfg = VARIANTS["serpent-l"]
    assert SerpentConfig.from_json(cfg.to_json()) == cfg
    model = create_model("serpent-b", state_divisor=4.0)
    assert model.config.state_divisor == 4.0
    with pytest.raises(ValueError, match="unknown config fields"):
        SerpentConfig.from_dict({"nope": 1})
    with pytest.raises(KeyError, match="unknown model"):
        create_model("serpent-x")
