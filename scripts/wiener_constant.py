"""Choose the Wiener baseline's regularisation constant K on natural-val under the benchmark degradation.

    python scripts/wiener_constant.py --data ../shared/data [--set natural-val] [--crop 0]

Degrades every image exactly as `serpent eval` does (seed 0, keyed by relative path), deconvolves it
with the benchmark's known kernel for each K of a log-spaced sweep (1-2-5 steps, 1e-4 .. 1e-1), and
prints the mean PSNR / SSIM of the clipped result; the best K goes into ``serpent_cli.evaluation.wiener.WIENER_K``
together with the table.  Never run on a test set: K is a choice, and choices are made on validation data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serpent_cli.degradation.benchmark import BENCHMARK
from serpent_cli.evaluation.evaluate import load_eval_set, score
from serpent_cli.evaluation.metrics import mean_or_nan
from serpent_cli.evaluation.wiener import benchmark_kernel, wiener_deconvolve

SWEEP = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--set", default="natural-val")
    parser.add_argument("--crop", type=int, default=0, help="centre crop in pixels (0 = whole image)")
    args = parser.parse_args()
    items, _ = load_eval_set(args.data / args.set, crop=args.crop or None, degradation=BENCHMARK)
    kernel = benchmark_kernel(BENCHMARK)
    base = [score(item.degraded, item.clean) for item in items]
    print(f"{args.set}: {len(items)} images; degraded input "
          f"{mean_or_nan([s['psnr'] for s in base]):.2f} dB / {mean_or_nan([s['ssim'] for s in base]):.4f}")
    print("| K | PSNR dB | SSIM |\n|---|---|---|")
    best = (float("-inf"), 0.0)
    for k in SWEEP:
        scores = [score(wiener_deconvolve(item.degraded, kernel, k), item.clean) for item in items]
        p, s = mean_or_nan([x["psnr"] for x in scores]), mean_or_nan([x["ssim"] for x in scores])
        best = max(best, (p, k))
        print(f"| {k:g} | {p:.2f} | {s:.4f} |")
    print(f"best K by PSNR: {best[1]:g} ({best[0]:.2f} dB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
