"""Reflect padding of any width: the network's pad to a multiple, the blur's border, the training crop's fill.

``F.pad(mode="reflect")`` refuses a pad as wide as the side it reflects, which tiny images (a 5-pixel
thumbnail, a 1-pixel strip) hit.  :func:`reflect_pad` pads in rounds instead, each as wide as that side
allows, and replicates only from a side of one pixel, where nothing is left to reflect.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reflect_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """``x`` (…, H, W) reflect-padded by the given widths, in rounds where a side is narrower than its pad."""
    if not (left or right or top or bottom):
        return x
    squeeze = x.dim() == 3  # F.pad's reflect mode wants a batch dimension for 2-D padding
    if squeeze:
        x = x.unsqueeze(0)
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        if not any(step):  # one-pixel sides: nothing left to reflect
            x = F.pad(x, (left, right, top, bottom), mode="replicate")
            break
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = (a - b for a, b in zip((left, right, top, bottom), step))
    return x.squeeze(0) if squeeze else x


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad bottom / right so both sides are multiples of ``multiple`` (cropped back by the caller)."""
    height, width = image.shape[-2:]
    return reflect_pad(image, 0, (-width) % multiple, 0, (-height) % multiple)


def pad_to_size(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Reflect-pad bottom / right up to at least ``height`` x ``width`` (a photo smaller than a training crop)."""
    h, w = image.shape[-2:]
    return reflect_pad(image, 0, max(0, width - w), 0, max(0, height - h))
