"""Image-quality metrics (DESIGN.md section 4): PSNR, SSIM, and LPIPS when it can run offline.

PSNR and SSIM follow the common definitions exactly (they are checked against scikit-image's
``peak_signal_noise_ratio`` / ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`` in the tests): SSIM uses an 11x11 Gaussian window
with sigma 1.5 per channel, averaged over the channels, over the "valid" region (borders of 5 px
excluded, as scikit-image does).  Both are computed in float64 on the CPU, so the numbers do not
depend on the device or thread count.

The grid score (:func:`grid_score`) measures a visible P x P patch grid in a restoration: how much
larger the jumps across patch boundaries are than the jumps inside patches, relative to the same
ratio of the clean image (so a photo's own texture does not count).

LPIPS (AlexNet) needs the ``lpips`` package and the AlexNet backbone weights already in the
local torch hub cache: this module never downloads anything, and says why LPIPS is missing.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from serpent_cli.degradation.benchmark import gaussian_kernel_1d

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def _as_batch(x: torch.Tensor, on_device: bool = False) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")
    return x.detach() if on_device else x.detach().to("cpu", torch.float64)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, *,
         on_device: bool = False) -> torch.Tensor:
    """PSNR in dB per image of a batch ((N,) tensor; a scalar tensor for one (C, H, W) image).

    Scores are float64 on the CPU; ``on_device`` keeps the tensors' own device and dtype instead (the
    training loop's running PSNR: no copy to the host, so no sync per step).
    """
    single = pred.dim() == 3
    p, t = _as_batch(pred, on_device), _as_batch(target, on_device)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: {tuple(p.shape)} vs {tuple(t.shape)}")
    mse = (p - t).pow(2).flatten(1).mean(1)
    out = 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-20))
    return out[0] if single else out


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per image (Gaussian window 11 / 1.5, per channel, averaged); (N,) or a scalar."""
    single = pred.dim() == 3
    p, t = _as_batch(pred), _as_batch(target)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: {tuple(p.shape)} vs {tuple(t.shape)}")
    _, c, h, w = p.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    k = gaussian_kernel_1d(SSIM_WINDOW, SSIM_SIGMA, dtype=torch.float64)  # the blur's kernel, SSIM's window
    kx = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)

    def filt(x: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid region only
        return F.conv2d(F.conv2d(x, kx, groups=c), ky, groups=c)

    mu_p, mu_t = filt(p), filt(t)
    var_p = filt(p * p) - mu_p**2
    var_t = filt(t * t) - mu_t**2
    cov = filt(p * t) - mu_p * mu_t
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    out = s.mean(dim=(2, 3)).mean(1)
    return out[0] if single else out


def _boundary_ratio(x: torch.Tensor, patch: int) -> float:
    """Mean |step| across patch-boundary columns and rows over the mean |step| inside patches."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs()  # step j: between columns j and j + 1
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs()
    on_x = (torch.arange(1, x.shape[-1]) % patch) == 0  # column j + 1 starts a patch
    on_y = (torch.arange(1, x.shape[-2]) % patch) == 0
    boundary = torch.cat([dx[..., on_x].flatten(), dy[..., on_y, :].flatten()])
    inside = torch.cat([dx[..., ~on_x].flatten(), dy[..., ~on_y, :].flatten()])
    if boundary.numel() == 0 or inside.numel() == 0:
        return float("nan")
    return float(boundary.mean() / inside.mean())


def grid_score(restored: torch.Tensor, clean: torch.Tensor, patch: int) -> float:
    """Patch-grid visibility of ``restored`` at patch size ``patch`` (>= 2), relative to ``clean``: 1.0 = none.

    (boundary / inside step ratio of the restoration) / (the same of the clean image), patches aligned
    at the top-left pixel (Serpent pads bottom / right).  The restoration is clipped to [0, 1] first, as
    every score is.  Restored == clean gives exactly 1.0.  Patch 1 has no inside steps: the score is
    undefined there (the caller reports n/a), as for a flat image (NaN).
    """
    if patch < 2:
        raise ValueError(f"the grid score needs a patch size >= 2, got {patch}")
    r, c = _as_batch(restored).clamp(0, 1), _as_batch(clean)
    if r.shape != c.shape:
        raise ValueError(f"shape mismatch: {tuple(r.shape)} vs {tuple(c.shape)}")
    reference = _boundary_ratio(c, patch)
    if not math.isfinite(reference) or reference == 0:
        return float("nan")
    return _boundary_ratio(r, patch) / reference


def _torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def lpips_unavailable_reason() -> str | None:
    """None when LPIPS can run offline here, else one line saying why not (and how to fix it)."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return "LPIPS not computed: the 'lpips' package is not installed (pip install lpips)"
    weights = _torch_hub_checkpoints() / ALEXNET_FILE
    if not weights.is_file():
        return f"LPIPS not computed: AlexNet weights {ALEXNET_FILE} are not in the local torch cache ({weights.parent})"
    return None


class LPIPS:
    """LPIPS (AlexNet) on images in [0, 1]; build only after :func:`lpips_unavailable_reason` is None."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        import lpips

        reason = lpips_unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        self.device = torch.device(device)
        self.net = lpips.LPIPS(net="alex", verbose=False).to(self.device).eval()

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        single = pred.dim() == 3
        p = (pred.unsqueeze(0) if single else pred).to(self.device, torch.float32) * 2 - 1
        t = (target.unsqueeze(0) if single else target).to(self.device, torch.float32) * 2 - 1
        out = self.net(p, t).flatten().double().cpu()
        return out[0] if single else out


def mean_or_nan(values: list[float]) -> float:
    """Mean of per-image scores (exact sum); NaN for none, so an empty set never reads as a score."""
    return math.fsum(values) / len(values) if values else float("nan")
