"""Wiener deconvolution with a known blur kernel: the classical baseline row of `serpent eval`.

X = conj(H) Y / (|H|^2 + K) in the Fourier domain, one regularisation constant K for every image
(the textbook filter: no learning, no per-image tuning), so a table shows what learning adds.

Borders: the FFT assumes the image repeats periodically, which a photo does not.  We extend the image
by mirroring it (reflect, without repeating the edge pixel, i.e. torch's ``reflect`` padding) to twice
its size less two pixels per axis, far more than the kernel radius for any image larger than the
kernel.  The periodic continuation of that mirrored image is exactly the reflect-padded image the
benchmark blurs, so the circular convolution the FFT inverts *is* the benchmark's blur: no ringing
from the borders, the only error left is the noise.  Then the result is cropped back.
Computed in float64 on the CPU: deterministic.
"""

from __future__ import annotations

import torch

from serpent_cli.degradation.benchmark import Degradation, gaussian_kernel_1d

# Chosen on natural-val (10 photos, 256x256, whole) under the benchmark degradation with
# `python scripts/wiener_constant.py` (mean PSNR / SSIM of the clipped result; degraded input 20.69 dB / 0.289):
#   K      1e-4   2e-4   5e-4   1e-3   2e-3   5e-3   1e-2   2e-2   5e-2   1e-1
#   dB     9.28  11.08  13.99  16.33  18.54  20.90  22.06  22.62  22.35  21.07
#   SSIM  0.047  0.073  0.129  0.189  0.262  0.367  0.439  0.492  0.524  0.522
# Best PSNR at 2e-2 (+1.93 dB over the degraded input).
WIENER_K = 2e-2


def benchmark_kernel(degradation: Degradation) -> torch.Tensor:
    """The 2-D blur kernel of a (Gaussian) benchmark-style degradation, float64, summing to 1."""
    k = gaussian_kernel_1d(degradation.kernel_size, degradation.blur_sigma, dtype=torch.float64)
    return torch.outer(k, k)


def _mirror(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x followed by its reflection without the two edge samples: one period of the reflect extension."""
    n = x.shape[dim]
    if n < 3:
        return torch.cat([x, x.flip(dim)], dim) if n == 2 else x
    return torch.cat([x, x.flip(dim).narrow(dim, 1, n - 2)], dim)


def wiener_deconvolve(degraded: torch.Tensor, kernel: torch.Tensor, k: float = WIENER_K) -> torch.Tensor:
    """Deconvolve (C, H, W) blurred by the centred ``kernel`` (odd size) with reflect borders; not clipped."""
    if kernel.dim() != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"kernel must be 2-D with odd sides, got {tuple(kernel.shape)}")
    if k <= 0:
        raise ValueError(f"the regularisation constant must be > 0, got {k}")
    y = degraded.detach().to("cpu", torch.float64)
    _, h, w = y.shape
    ext = _mirror(_mirror(y, 1), 2)
    hp, wp = ext.shape[1:]
    # The kernel's centre at (0, 0), wrapped around (it may be larger than a tiny image's period).
    kh, kw = kernel.shape
    rows = (torch.arange(kh) - kh // 2) % hp
    cols = (torch.arange(kw) - kw // 2) % wp
    psf = torch.zeros(hp, wp, dtype=torch.float64)
    psf.index_put_((rows[:, None].expand(kh, kw), cols[None, :].expand(kh, kw)), kernel.to(torch.float64),
                   accumulate=True)
    otf = torch.fft.rfft2(psf)
    spectrum = torch.fft.rfft2(ext) * otf.conj() / (otf.abs() ** 2 + k)
    out = torch.fft.irfft2(spectrum, s=(hp, wp))[:, :h, :w]
    return out.to(degraded.dtype).contiguous()
