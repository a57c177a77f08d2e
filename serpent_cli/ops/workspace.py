"""Scratch buffers a model keeps for SS2D's large intermediates during inference.

Why: at serpent-l's first scale on a 512x512 image, each SS2D block makes five 17-34 MB
intermediates (in_proj's output, the scan input in its two orders, x_proj's output, the scan's
output, the gated map).  The allocator maps tensors that large fresh from the OS every time, and
the first write to each page faults; with transparent huge pages on, a fault may also wait for the
kernel to free and compact memory into a 2 MB page, slower still when the page cache fills memory
(as on any machine that has been up a while).  Allocating and filling 67 MB took 14 ms on one core
of the reference machine, filling it again 7.8 ms.  Reusing the buffers made serpent-l's 512x512
forward 5-20% faster there (paired runs against the same model without them).

One buffer per role, kept while the shape stays: the two blocks of a stage share them, and the
last stage's (the finest scale, the largest) serve the next pass's first stage, so every tile of
a tiled image after the first faults in little.  When the shape changes the old buffer is freed
before the new one is allocated, so a model holds one stage's set (at most the finest scale's:
544 MiB for serpent-l at 1024x1024, whose peak RSS rose from 1437 to 1533 MiB).

Only while a :class:`Workspace` is :meth:`~Workspace.active` (``Serpent.forward`` without autograd)
does :func:`scratch` hand out a buffer it already holds; everywhere else, training included, it is
``torch.empty``, so autograd never sees two tensors sharing storage.  A buffer is reused only once
its previous contents are dead: each ``role`` names one intermediate inside one SS2D call, and no
SS2D output is a buffer.  :meth:`Workspace.release` frees them all.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

_current = threading.local()


class Workspace:
    """The buffers of one model, one per role, reused while the model is :meth:`active`."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    @contextmanager
    def active(self) -> Iterator[None]:
        """Within the block :func:`scratch` reuses this workspace's buffers (not with autograd on, not nested)."""
        if torch.is_grad_enabled() or getattr(_current, "workspace", None) is not None:
            yield
            return
        _current.workspace = self
        try:
            yield
        finally:
            _current.workspace = None

    def get(self, role: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """The role's buffer when it has this shape, dtype and device; else a new one that replaces it.

        A buffer made under ``torch.inference_mode`` cannot be written outside it (nor the reverse be
        reused inside it without becoming one), so a change of mode also replaces it.
        """
        buffer = self._buffers.get(role)
        if (buffer is None or buffer.shape != shape or buffer.dtype != like.dtype or buffer.device != like.device
                or buffer.is_inference() != torch.is_inference_mode_enabled()):
            self._buffers.pop(role, None)  # freed before the new one is allocated: never two per role
            buffer = self._buffers[role] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buffer

    def release(self) -> None:
        """Free every held buffer (the next pass allocates afresh)."""
        self._buffers.clear()

    def held_bytes(self) -> int:
        return sum(buf.numel() * buf.element_size() for buf in self._buffers.values())

    def __deepcopy__(self, memo: dict[int, Any]) -> Workspace:
        return Workspace()  # a copied model starts with no buffers

    def __getstate__(self) -> dict[str, Any]:
        return {"_buffers": {}}


def scratch(role: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` with ``like``'s dtype and device: the active workspace's, else new."""
    workspace: Workspace | None = getattr(_current, "workspace", None)
    if workspace is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return workspace.get(role, shape, like)


def matmul_into_scratch(role: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.matmul(a, b)``, into a :func:`scratch` buffer while a workspace is active (autograd needs fresh ones)."""
    if getattr(_current, "workspace", None) is None:
        return torch.matmul(a, b)
    shape = (*torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1])
    return torch.matmul(a, b, out=scratch(role, shape, a))


def linear_into_scratch(role: str, x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)`` of a bias-free layer, as :func:`matmul_into_scratch`."""
    if layer.bias is not None:
        raise ValueError("linear_into_scratch serves bias-free layers")
    return matmul_into_scratch(role, x, layer.weight.t())
