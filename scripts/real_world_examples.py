"""The README's second side-by-side: real-world-like degradations, serpent-l against serpent-l-blind.

    python scripts/real_world_examples.py [--data ../shared/data] [--out examples/real-world.jpg]

Three Kodak photos (256x256 centre crops), each under one degradation a phone or camera produces and
the benchmark does not: camera shake (a curved motion trail) with a little noise, a mild defocus disk,
and a slightly soft photo saved as a low-quality JPEG.  The degradations are fixed (no random draw),
built from the blind family's own kernels.  Columns: degraded, serpent-l, serpent-l-blind, clean,
each labelled with its PSNR against the clean crop; the numbers also go to --json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image
from side_by_side import compose_labelled

from serpent_cli.degradation.family import BLIND, BlindDraw, defocus_kernel, motion_kernel
from serpent_cli.evaluation.evaluate import load_eval_model, model_restorer
from serpent_cli.evaluation.metrics import psnr
from serpent_cli.io.imageio import read_rgb

CROP = 256
MODELS = ("serpent-l", "serpent-l-blind")


def scenes() -> list[tuple[str, str, BlindDraw]]:
    """(photo under the data root, caption, degradation)."""
    turns = torch.linspace(-0.6, 0.6, 64, dtype=torch.float64) ** 3 * 0.2  # a gently curving trail
    shake = BlindDraw("motion", {"length": 13.0, "angle": 0.5}, motion_kernel(13.0, 0.5, turns), None, 0.01, None)
    defocus = BlindDraw("defocus", {"radius": 2.5}, defocus_kernel(2.5), None, 0.005, None)
    soft_jpeg = BlindDraw("gaussian", {"sigma": 1.2}, None, 1.2, 0.0, 60)
    return [
        ("kodak24/kodim05.png", "camera shake 13 px, noise 0.01", shake),
        ("kodak24/kodim13.png", "defocus r 2.5 px, noise 0.005", defocus),
        ("kodak24/kodim19.png", "soft (sigma 1.2), JPEG q60", soft_jpeg),
    ]


def centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    _, h, w = image.shape
    top, left = (h - size) // 2, (w - size) // 2
    return image[:, top : top + size, left : left + size].contiguous()


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("examples/real-world.jpg"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/eval/real-world-examples.json"))
    args = parser.parse_args()
    restorers = {}
    for name in MODELS:
        net, _ = load_eval_model(name, None)
        restorers[name] = model_restorer(net.eval(), torch.device("cpu"), tile=0)
    rows, records = [], []
    for photo, caption, draw in scenes():
        clean = centre_crop(read_rgb(args.data / photo), CROP)
        g = torch.Generator().manual_seed(0)
        degraded = BLIND.finish(BLIND.blur(clean, draw), draw, g).clamp(0, 1)
        outputs = {"degraded": degraded} | {name: restore(degraded).clamp(0, 1) for name, restore in restorers.items()}
        scores = {name: float(psnr(image, clean)) for name, image in outputs.items()}
        records.append({"photo": photo, "degradation": caption, **draw.describe(), "psnr": scores})
        row = [(f"{caption}: {scores['degraded']:.1f} dB" if name == "degraded" else f"{name}: {scores[name]:.1f} dB",
                image) for name, image in outputs.items()]
        rows.append([*row, ("clean", clean)])
        print(f"{photo:22s} {caption:32s} " + "  ".join(f"{n} {s:.2f}" for n, s in scores.items()))
    compose_labelled([[(label, to_pil(image)) for label, image in row] for row in rows]).save(
        args.out, quality=90, optimize=True)
    args.json.write_text(json.dumps({"crop": CROP, "examples": records}, indent=1))
    gains = [rec["psnr"]["serpent-l-blind"] - rec["psnr"]["degraded"] for rec in records]
    print(f"{args.out}: serpent-l-blind gains {min(gains):.2f} .. {max(gains):.2f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
