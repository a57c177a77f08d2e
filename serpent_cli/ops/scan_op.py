"""The selective scan as a registered PyTorch operator, ``serpent::selective_scan``.

Why: ``torch.utils.flop_counter`` only sees dispatcher operators.  The scan backends are
plain Python (or Triton / CUDA kernels) and would be invisible to it, so a FLOP count of
a Serpent network would miss its most characteristic layer.  Registering the scan as a
custom op gives it (1) a name the counter can attach a formula to and (2) a fake/meta
implementation, so whole models can be counted on ``meta`` tensors on any machine in
seconds, without allocating or computing anything.

The op is used only while counting (see :func:`counting_scan` and
``serpent_cli.ops.selective_scan``); normal inference and training call the backends
directly, so nothing changes for them.

FLOP formula (:func:`scan_flops`): ``9*b*d*l*n + b*d*l`` for batch b, channels d, length l,
state size n.  Derivation, per (b, d, l, n), counting a multiply and an add as one FLOP each
(the convention the flop counter uses for matmuls and convolutions: 2 per multiply-add)::

    dA  = exp(delta_t * A)         2   (multiply, exp counted as one op)
    dBu = delta_t * B_t * u_t      2   (two multiplies)
    h   = dA * h + dBu             2   (multiply, add)
    y  += C_t * h  (sum over n)    2   (multiply, add)
                                   -
                                   8

That is our own elementary tally.  The established count for this op, mamba-ssm's
``flops_selective_scan_ref`` and VMamba's fvcore hook (both built from einsum-path costs),
is ``9*B*L*D*N`` plus ``B*D*L`` for the D skip; the ninth FLOP per state element is that
convention's charge for forming the three-operand product delta*B*u as a (b, d, l, n)
tensor.  We use the established formula so our numbers compare with the VMamba/Mamba
family (the Serpent paper counts that way); it is 12.5% above the bare tally.  The scan is
about a third of serpent-b's forward FLOPs (2.8 of 8.2 GFLOPs at 512x512), so the choice
moves a Serpent total by about 4%.
The per-(b, d, l) softplus and bias on delta are ignored, as in that convention.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

_COUNTING: contextvars.ContextVar[bool] = contextvars.ContextVar("serpent_scan_counting", default=False)


def scan_flops(batch: int, channels: int, length: int, n_state: int, with_d: bool = True) -> int:
    """FLOPs of one selective scan: ``9*b*d*l*n`` (+ ``b*d*l`` for the D skip)."""
    flops = 9 * batch * channels * length * n_state
    if with_d:
        flops += batch * channels * length
    return flops


@torch.library.custom_op("serpent::selective_scan", mutates_args=())
def selective_scan_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> torch.Tensor:
    """Real tensors: run the portable backend (the op exists for counting, not for speed)."""
    from serpent_cli.ops.scan_torch import selective_scan_torch

    return selective_scan_torch(u, delta, A, B, C, D, delta_bias, delta_softplus)


@selective_scan_op.register_fake
def _selective_scan_fake(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> torch.Tensor:
    """Shape-only implementation: meta and fake tensors (y has u's shape and dtype)."""
    return torch.empty_like(u)


def _register_formula() -> None:
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.serpent.selective_scan)
    def _scan_flop(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape=None, *args, out_shape=None, **kwargs):  # type: ignore[no-untyped-def]
        batch, channels, length = u_shape
        return scan_flops(batch, channels, length, A_shape[1], with_d=D_shape is not None)


_register_formula()


def is_counting() -> bool:
    """True inside :func:`counting_scan`: ``selective_scan`` then routes through the op."""
    return _COUNTING.get()


@contextlib.contextmanager
def counting_scan() -> Iterator[None]:
    """Route ``serpent_cli.ops.selective_scan`` through the registered op in this block."""
    token = _COUNTING.set(True)
    try:
        yield
    finally:
        _COUNTING.reset(token)


__all__ = ["counting_scan", "is_counting", "scan_flops", "selective_scan_op"]
