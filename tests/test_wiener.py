"""The Wiener baseline on real photos: exact border model, a real gain over the degraded input, deterministic."""

from __future__ import annotations

from pathlib import Path

import torch

from serpent_cli.degradation.benchmark import BENCHMARK, Degradation
from serpent_cli.degradation.family import BLIND
from serpent_cli.evaluation.evaluate import WIENER_NAME, baseline_restorers, load_eval_set, score
from serpent_cli.evaluation.wiener import WIENER_K, _mirror, benchmark_kernel, wiener_deconvolve
from serpent_cli.io.imageio import read_rgb


def test_mirror_extension_makes_the_fft_blur_the_benchmark_blur(data_dir: Path) -> None:
    """The circular convolution of the mirrored image is exactly the reflect-padded benchmark blur."""
    photo = read_rgb(sorted((data_dir / "kodak24").iterdir())[0])[:, :150, :230].double()
    ext = _mirror(_mirror(photo, 1), 2)
    assert ext.shape == (3, 298, 458)
    kernel = benchmark_kernel(BENCHMARK)
    assert kernel.shape == (61, 61) and abs(float(kernel.sum()) - 1) < 1e-12
    # Deconvolving with a vanishing K undoes a noiseless blur (up to the kernel's tiny high frequencies).
    blurred = Degradation(kernel_size=9, blur_sigma=1.0, noise_sigma=0).blur(photo)
    sharp = wiener_deconvolve(blurred, benchmark_kernel(Degradation(kernel_size=9, blur_sigma=1.0)), 1e-10)
    assert float((sharp - photo).abs().max()) < 1e-4


def test_wiener_beats_the_degraded_input_on_kodak_and_is_deterministic(data_dir: Path) -> None:
    items, _ = load_eval_set(data_dir / "kodak24", limit=2)
    restore = baseline_restorers(BENCHMARK)[WIENER_NAME]
    for item in items:
        first, second = restore(item.degraded), restore(item.degraded)
        assert torch.equal(first, second)
        gain = score(first, item.clean)["psnr"] - score(item.degraded, item.clean)["psnr"]
        assert gain > 1.0, (item.key, gain)
        assert torch.equal(first, wiener_deconvolve(item.degraded, benchmark_kernel(BENCHMARK), WIENER_K))
    assert baseline_restorers(BLIND) == {}  # no known kernel under the blind family
