"""Ronneberger U-Net baseline (DESIGN.md section 5): two 3x3 convs per level, four poolings,
residual output.  U-Net(C) has C channels at the first level, doubling per level."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Image-to-image U-Net; any input size (padded to a multiple of 16, cropped back)."""

    def __init__(self, channels: int = 32, in_chans: int = 3, depth: int = 4) -> None:
        super().__init__()
        self.channels, self.depth = channels, depth
        widths = [channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_chans
        for w in widths:
            self.down.append(_double_conv(cin, w))
            cin = w
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth))
        self.dec = nn.ModuleList(_double_conv(2 * widths[i], widths[i]) for i in range(depth))
        self.out = nn.Conv2d(widths[0], in_chans, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _, _, h, w = image.shape
        m = 2**self.depth
        x = F.pad(image, (0, (-w) % m, 0, (-h) % m), mode="replicate")
        skips = []
        feats = x
        for i, block in enumerate(self.down):
            feats = block(feats)
            if i < self.depth:
                skips.append(feats)
                feats = F.max_pool2d(feats, 2)
        for i in reversed(range(self.depth)):
            feats = self.dec[i](torch.cat([self.up[i](feats), skips[i]], dim=1))
        return (x + self.out(feats))[:, :, :h, :w]
