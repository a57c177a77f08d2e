"""The inference workspace: buffers reused between passes never change a result or leak into autograd."""

from __future__ import annotations

import contextlib

import pytest
import torch

from serpent_cli.models.registry import build_model
from serpent_cli.ops.workspace import Workspace, matmul_into_scratch, scratch


def _model(name: str = "serpent-b") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name).eval()


def _images(*sizes: tuple[int, int]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.rand(1, 3, h, w, generator=gen) for h, w in sizes]


def _without_workspace(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    active = model.workspace.active
    model.workspace.active = contextlib.nullcontext
    try:
        return model(image)
    finally:
        model.workspace.active = active


@pytest.mark.parametrize("name", ["serpent-b", "serpent-l"])
def test_reused_buffers_give_the_same_output(name: str) -> None:
    model = _model(name)
    first, second = _images((64, 96), (64, 96))
    with torch.inference_mode():
        want = [_without_workspace(model, x) for x in (first, second)]
        got = [model(x) for x in (first, second)]
        again = model(first)
    assert model.workspace.held_bytes() > 0
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    assert torch.equal(again, want[0])
    # The first pass's output is its own tensor: later passes wrote into the buffers, not into it.
    assert torch.equal(got[0], want[0])


def test_buffers_follow_the_input_shape() -> None:
    model = _model()
    small, large = _images((64, 64), (128, 96))
    with torch.no_grad():
        first_pass = _allocations(model, small)
        held_small = model.workspace.held_bytes()
        second_pass = _allocations(model, small)
        assert model.workspace.held_bytes() == held_small
        model(large)
        held_large = model.workspace.held_bytes()
        out = model(small)
    # Five roles, one buffer each, a new one at each change of scale (finest, 1/2, 1/4, 1/8, 1/4, 1/2, finest);
    # a pass after one of the same size starts with the finest scale's buffers already there.
    assert (first_pass, second_pass) == (35, 30)
    assert held_large > held_small
    assert model.workspace.held_bytes() == held_small  # one buffer per role: the larger ones were replaced
    assert len(model.workspace._buffers) == 5  # in_proj, scan input, x_proj, scan output, gated map
    model.workspace.release()
    assert model.workspace.held_bytes() == 0
    with torch.no_grad():
        assert torch.equal(out, model(small))


def _allocations(model: torch.nn.Module, image: torch.Tensor) -> int:
    """How many buffers one forward pass of ``model`` allocated (rather than reused)."""
    workspace = model.workspace
    count = 0
    get = workspace.get

    def counting(role: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        nonlocal count
        before = workspace._buffers.get(role)
        buffer = get(role, shape, like)
        count += buffer is not before
        return buffer

    workspace.get = counting  # type: ignore[method-assign]
    try:
        model(image)
    finally:
        del workspace.get
    return count


def test_training_never_uses_the_workspace() -> None:
    model = _model()
    (image,) = _images((64, 64))
    model.train()
    out = model(image.requires_grad_())
    out.square().mean().backward()
    assert model.workspace.held_bytes() == 0
    assert image.grad is not None and torch.isfinite(image.grad).all()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


def test_scratch_outside_a_pass_is_fresh() -> None:
    like = torch.zeros(1)
    a, b = scratch("role", (4, 4), like), scratch("role", (4, 4), like)
    assert a.data_ptr() != b.data_ptr()
    left, right = torch.randn(3, 5, requires_grad=True), torch.randn(5, 2)
    product = matmul_into_scratch("role", left, right)  # autograd still works outside a pass
    product.sum().backward()
    assert left.grad is not None


def test_passes_do_not_nest_and_copies_start_empty() -> None:
    import copy

    outer, inner = Workspace(), Workspace()
    like = torch.zeros(1)
    with torch.no_grad(), outer.active(), inner.active():
        buffer = scratch("role", (8,), like)
        assert scratch("role", (8,), like).data_ptr() == buffer.data_ptr()
        assert scratch("role", (4,), like).shape == (4,)  # another shape replaces the role's buffer
    assert outer.held_bytes() == 16 and inner.held_bytes() == 0
    assert copy.deepcopy(outer).held_bytes() == 0


def test_inference_mode_and_no_grad_passes_alternate() -> None:
    """Buffers made under inference_mode are replaced, not written, by a no_grad pass (and back)."""
    model = _model()
    (image,) = _images((64, 64))
    with torch.inference_mode():
        first = model(image).clone()
    with torch.no_grad():
        second = model(image)
    with torch.inference_mode():
        third = model(image)
    assert torch.equal(first, second) and torch.equal(first, third)
