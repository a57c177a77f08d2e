"""Naive step-by-step selective scan: the test oracle, never used for real work.

It is the literal recurrence of DESIGN.md section 3, one time step at a time, so
that every faster backend can be checked against something obviously right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Same contract as :func:`serpent_cli.ops.selective_scan`; fp32 internally."""
    dtype = u.dtype
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    per_group = channels // groups
    u32, delta32 = u.float(), delta.float()
    if delta_bias is not None:
        delta32 = delta32 + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta32 = F.softplus(delta32)
    A32 = A.float()
    Bc = B.float().repeat_interleave(per_group, dim=1)  # (b, d, n, l)
    Cc = C.float().repeat_interleave(per_group, dim=1)
    h = u32.new_zeros(batch, channels, n_state)
    ys = []
    for t in range(length):
        dA = torch.exp(delta32[:, :, t, None] * A32)
        h = dA * h + (delta32[:, :, t] * u32[:, :, t])[..., None] * Bc[:, :, :, t]
        ys.append((h * Cc[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.float()[None, :, None] * u32
    return y.to(dtype)
