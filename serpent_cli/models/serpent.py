"""The Serpent network (Sepehri, Fabian, Soltanolkotabi): a U-Net of VSS blocks.

Layout and every size decision are in DESIGN.md section 2.  Activations are kept
channels-last, (B, H, W, C), as in VMamba, because every layer except the patchifier
and the depthwise conv is a Linear or LayerNorm over the channel axis.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from serpent_cli.models.config import SerpentConfig
from serpent_cli.models.padding import pad_to_multiple
from serpent_cli.ops import (
    conv_silu_to_scan_orders,
    directional_backend,
    gated_norm_from_scan_orders,
    selective_scan,
    ss2d_scan_orders,
)
from serpent_cli.ops.workspace import Workspace, linear_into_scratch, matmul_into_scratch

NUM_DIRECTIONS = 4


def unroll_four_ways(x: torch.Tensor) -> torch.Tensor:
    """(B, E, H, W) -> (B, 4, E, H*W): row-major, column-major and both reversed."""
    row = x.flatten(2)
    col = x.transpose(2, 3).flatten(2)
    return torch.stack([row, col, row.flip(-1), col.flip(-1)], dim=1)


def merge_four_ways(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`unroll_four_ways`, summing the directions: (B, 4, E, L) -> (B, E, H, W)."""
    b, _, e, _ = y.shape
    row = y[:, 0] + y[:, 2].flip(-1)
    col = y[:, 1] + y[:, 3].flip(-1)
    col = col.view(b, e, width, height).transpose(2, 3)
    return row.view(b, e, height, width) + col


class SS2D(nn.Module):
    """Four-direction selective scan over a 2-D feature map (VMamba's SS2D)."""

    def __init__(self, channels: int, config: SerpentConfig) -> None:
        super().__init__()
        inner = config.expand * channels
        self.inner = inner
        self.n_state = config.state_size(channels)
        self.dt_rank = config.dt_rank(channels)
        self.in_proj = nn.Linear(channels, 2 * inner, bias=False)
        self.conv = nn.Conv2d(inner, inner, config.d_conv, padding=config.d_conv // 2, groups=inner)
        k = NUM_DIRECTIONS
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * self.n_state, inner))
        self.dt_proj_weight = nn.Parameter(torch.empty(k, inner, self.dt_rank))
        self.dt_proj_bias = nn.Parameter(torch.empty(k, inner))
        self.A_log = nn.Parameter(torch.empty(k * inner, self.n_state))
        self.D = nn.Parameter(torch.empty(k * inner))
        self.out_norm = nn.LayerNorm(inner, eps=config.norm_eps)
        self.out_proj = nn.Linear(inner, channels, bias=False)
        self._dt_range = (config.dt_min, config.dt_max)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's initialisation: S4D-real A, softplus(dt bias) log-uniform in [dt_min, dt_max].

        Skipped on the meta device, where a network is built only to count its parameters (a weights
        header is checked that way before anything is allocated): these ops there pull in torch's
        decomposition machinery, 2 s of imports on every `serpent deblur`.
        """
        if self.A_log.is_meta:
            return
        nn.init.uniform_(self.x_proj_weight, -self.inner**-0.5, self.inner**-0.5)
        nn.init.uniform_(self.dt_proj_weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        dt_min, dt_max = self._dt_range
        dt = torch.exp(torch.rand(self.dt_proj_bias.shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        self.dt_proj_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log.copy_(torch.log(torch.arange(1, self.n_state + 1, dtype=torch.float32)).expand_as(self.A_log))
        self.D.fill_(1.0)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """SS2D of x (B, H, W, C), plus ``residual`` (same shape) when given, added inside out_proj's matmul."""
        x, z = linear_into_scratch("ss2d.in_proj", x, self.in_proj).chunk(2, dim=-1)  # (B, H, W, E) each
        if directional_backend(x.device):
            _, h, w, _ = x.shape
            y = self._scan_in_place(conv_silu_to_scan_orders(x, self.conv))
            return self._project_out(gated_norm_from_scan_orders(y, z, self.out_norm, h, w), residual)
        x = F.silu(self.conv(x.permute(0, 3, 1, 2)))  # (B, E, H, W)
        return self._project_out(self.out_norm(self._scan_unrolled(x)) * F.silu(z), residual)

    def _project_out(self, gated: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """out_proj(gated) [+ residual]: one addmm rather than a matmul and a pass over both maps to add them."""
        if residual is None:
            return self.out_proj(gated)
        flat = torch.addmm(residual.reshape(-1, residual.shape[-1]), gated.reshape(-1, gated.shape[-1]),
                           self.out_proj.weight.t())
        return flat.view(residual.shape)

    def _ssm_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A = -exp(A_log), D and the delta bias in fp32 (the scan's parameters)."""
        return -torch.exp(self.A_log.float()), self.D.float(), self.dt_proj_bias.float()

    def _scan_in_place(self, xq: torch.Tensor) -> torch.Tensor:
        """The four directions on two position orders (numba): each direction projected once.

        xq (B, 2, L, E) holds the scan input row-major and column-major (:func:`to_scan_orders`);
        direction k = 2 j + q walks order q forwards or backwards, so x_proj / dt_proj of direction k
        run on order q.  Per order, one matmul gives both walks' [dt | B | C]; dt_proj runs inside the
        kernel (R-wide inputs), so neither a per-direction einsum nor the (B, 2, L, 2, E) delta exists.
        Returns (B, 2, L, E), each order's two walks summed, in that order.
        """
        e = xq.shape[-1]
        n, r = self.n_state, self.dt_rank
        weight = self.x_proj_weight.view(2, 2, r + 2 * n, e).transpose(0, 1)  # (order q, walk j, R + 2N, E)
        parts = torch.split(weight, [r, n, n], dim=2)
        proj = torch.cat([part.reshape(2, -1, e) for part in parts], dim=1).transpose(1, 2)  # (2, E, 2(R+2N))
        x_dbl = matmul_into_scratch("ss2d.x_proj", xq, proj)  # (B, 2, L, [dt_j0 dt_j1 | B_j0 B_j1 | C_j0 C_j1])
        dts, Bs, Cs = (t.unflatten(3, (2, -1)) for t in torch.split(x_dbl, [2 * r, 2 * n, 2 * n], dim=3))
        A, D, bias = self._ssm_tensors()
        return ss2d_scan_orders(xq, dts, A.view(NUM_DIRECTIONS, e, n), Bs, Cs, D.view(NUM_DIRECTIONS, e), bias,
                                dt_weight=self.dt_proj_weight)

    def _scan_unrolled(self, x: torch.Tensor) -> torch.Tensor:
        """Unroll to four sequences, scan them as one batch of channels, merge back (other backends)."""
        b, _, h, w = x.shape
        length = h * w
        xs = unroll_four_ways(x)  # (B, 4, E, L)
        x_dbl = torch.einsum("bkel,kce->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.n_state, self.n_state], dim=2)
        dts = torch.einsum("bkrl,ker->bkel", dts, self.dt_proj_weight)
        A, D, bias = self._ssm_tensors()
        y = selective_scan(
            xs.reshape(b, -1, length),
            dts.reshape(b, -1, length),
            A,
            Bs.contiguous(),
            Cs.contiguous(),
            D,
            delta_bias=bias.reshape(-1),
            delta_softplus=True,
        )
        return merge_four_ways(y.view(b, NUM_DIRECTIONS, self.inner, length), h, w).permute(0, 2, 3, 1)


class VSSBlock(nn.Module):
    """x + SS2D(LayerNorm(x))."""

    def __init__(self, channels: int, config: SerpentConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=config.norm_eps)
        self.ss2d = SS2D(channels, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ss2d(self.norm(x), residual=x)


class SBlock(nn.Module):
    """S-block B: a stack of n VSS blocks at one scale."""

    def __init__(self, channels: int, config: SerpentConfig) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(VSSBlock(channels, config) for _ in range(config.blocks_per_stage)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class PatchMerging(nn.Module):
    """2x2 space-to-channel, LayerNorm, Linear 4c -> 2c."""

    def __init__(self, channels: int, config: SerpentConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * channels, eps=config.norm_eps)
        self.reduction = nn.Linear(4 * channels, 2 * channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x, "b (h p1) (w p2) c -> b h w (p1 p2 c)", p1=2, p2=2)
        return self.reduction(self.norm(x))


class PatchExpanding(nn.Module):
    """Linear c -> 2c, then 2x2 channel-to-space giving c/2 channels at twice the size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.expand = nn.Linear(channels, 2 * channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.expand(x), "b h w (p1 p2 c) -> b (h p1) (w p2) c", p1=2, p2=2)


class DecoderStage(nn.Module):
    """S-block U: expand, fuse the skip (concat + Linear c -> c/2), then S-block B."""

    def __init__(self, channels: int, config: SerpentConfig) -> None:
        super().__init__()
        out = channels // 2
        self.expand = PatchExpanding(channels)
        self.fuse = nn.Linear(2 * out, out)
        self.block = SBlock(out, config)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.fuse(torch.cat([self.expand(x), skip], dim=-1))
        return self.block(x)


class Serpent(nn.Module):
    """Serpent restoration network; maps a degraded RGB image to its restoration."""

    def __init__(self, config: SerpentConfig) -> None:
        super().__init__()
        self.config = config
        p, dim = config.patch_size, config.embed_dim
        self.patchify = nn.Conv2d(config.in_chans, dim, kernel_size=p, stride=p)
        self.encoders = nn.ModuleList(SBlock(config.channels(s), config) for s in range(config.num_scales - 1))
        self.merges = nn.ModuleList(PatchMerging(config.channels(s), config) for s in range(config.num_scales - 1))
        self.bottleneck = SBlock(config.channels(config.num_scales - 1), config)
        self.decoders = nn.ModuleList(
            DecoderStage(config.channels(s), config) for s in reversed(range(1, config.num_scales))
        )
        self.out_norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.head = nn.Linear(dim, config.in_chans * p * p)
        self.apply(_init_linear)
        # The SS2D blocks' large intermediates, kept between inference passes of one input shape
        # (serpent_cli.ops.workspace: fresh 17-34 MB maps page-fault on every pass); not part of the state.
        self.workspace = Workspace()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) of any size -> same shape; reflect-padded internally to a multiple of P*8."""
        with self.workspace.active():  # inference only
            return self._forward(image)

    def _forward(self, image: torch.Tensor) -> torch.Tensor:
        _, _, height, width = image.shape
        x = pad_to_multiple(image, self.config.pad_multiple)
        feats = self.patchify(x).permute(0, 2, 3, 1)
        skips = []
        for block, merge in zip(self.encoders, self.merges):
            feats = block(feats)
            skips.append(feats)
            feats = merge(feats)
        feats = self.bottleneck(feats)
        for decoder, skip in zip(self.decoders, reversed(skips)):
            feats = decoder(feats, skip)
        out = self.head(self.out_norm(feats)).permute(0, 3, 1, 2)
        out = F.pixel_shuffle(out, self.config.patch_size)
        return (x + out)[:, :, :height, :width]


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)

