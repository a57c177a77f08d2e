"""Evaluate a model on a folder under a fixed, seeded degradation (DESIGN.md section 4).

Every clean image is degraded with :data:`serpent_cli.degradation.benchmark.BENCHMARK` (default) or the blind
family (:mod:`serpent_cli.degradation.family`); its randomness comes from a generator seeded by the
image's relative path and a global seed, so the inputs (and hence the numbers) are the same on every
run and machine.  Decisions where the issue is silent:

* The network gets the unclipped degraded image (as in training); the "degraded input" baseline row
  scores the degraded image clipped to [0, 1] (what a saved file would hold).  Restorations are
  clipped to [0, 1] before scoring.
* Metrics are computed per image in float64 on the CPU; means are plain means over images.
* ``crop`` takes a centered crop before degrading (used by training validation to stay cheap).
* Under the benchmark, a classical row sits beside the degraded input: Wiener deconvolution with the
  benchmark's known kernel (:mod:`serpent_cli.evaluation.wiener`), so every table shows what learning adds over
  the textbook answer.  Under the blind family there is no Wiener row: the kernel is unknown to a
  blind method, and an oracle fed each image's true kernel (with one K tuned for noise 0.05, on images
  that may be sharp, noiseless or JPEG-blocked) would be neither a fair peer nor a meaningful bound.
* Grid score (:func:`serpent_cli.evaluation.metrics.grid_score`) per model with a patch size P >= 2 (serpent-b 4,
  serpent-l 2).  For P = 1 (serpent-h) and models without patches (U-Net, the baselines) there is no
  patch boundary to see: the score is reported as n/a (``None`` in JSON), not as a vacuous 1.0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from serpent_cli.degradation.benchmark import BENCHMARK, EVAL_SEED, Degradation, RegionDegradation
from serpent_cli.degradation.family import degrade_keyed
from serpent_cli.errors import UsageError
from serpent_cli.evaluation.metrics import (
    LPIPS,
    SSIM_WINDOW,
    grid_score,
    lpips_unavailable_reason,
    mean_or_nan,
    psnr,
    ssim,
)
from serpent_cli.evaluation.wiener import WIENER_K, benchmark_kernel, wiener_deconvolve
from serpent_cli.io.folders import scan_image_folder
from serpent_cli.io.imageio import ImageReadError, read_rgb
from serpent_cli.io.tile_options import DEFAULT_OVERLAP
from serpent_cli.restore import Restorer

BASELINE_NAME = "degraded input"
WIENER_NAME = "wiener (known kernel)"


@dataclass
class EvalImage:
    """One clean image and its seeded degradation (``draw``: what the blind family did; empty for the benchmark)."""

    key: str
    clean: torch.Tensor
    degraded: torch.Tensor
    draw: dict[str, object] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Per-image rows and per-model means; ``lpips_reason`` says why LPIPS is missing (or None)."""

    folder: str
    seed: int
    rows: list[dict[str, object]] = field(default_factory=list)
    summary: list[dict[str, object]] = field(default_factory=list)
    lpips_reason: str | None = None
    skipped: list[str] = field(default_factory=list)


def load_eval_set(folder: Path, *, seed: int = EVAL_SEED, crop: int | None = None, limit: int | None = None,
                  degradation: RegionDegradation = BENCHMARK) -> tuple[list[EvalImage], list[Path]]:
    """Clean images of ``folder`` (recursive, sorted) with their deterministic degradations, and skipped files."""
    scan = scan_image_folder(Path(folder))
    skipped = list(scan.skipped)
    items = []
    for path, (w, h) in zip(scan.images, scan.sizes):
        if limit and len(items) >= limit:
            break
        if min(w, h) < SSIM_WINDOW:  # SSIM is undefined below its window size
            skipped.append(path)
            continue
        try:
            image = read_rgb(path)
        except (ImageReadError, OSError, ValueError, SyntaxError):  # header fine, pixel data truncated or corrupt
            skipped.append(path)
            continue
        key = relative_key(path, scan.root)
        clean = center_crop(image, crop).contiguous()
        degraded, draw = degrade_keyed(degradation, clean, key, seed)
        items.append(EvalImage(key, clean, degraded, draw))
    if not items:
        raise UsageError(f"no usable images in {folder} (all were unreadable or smaller than "
                         f"{SSIM_WINDOW}x{SSIM_WINDOW} pixels)")
    return items, skipped


def center_crop(img: torch.Tensor, size: int | None) -> torch.Tensor:
    """Center crop of (C, H, W) to at most size x size (None or 0: the whole image)."""
    if not size:
        return img
    _, h, w = img.shape
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[:, top : top + ch, left : left + cw]


def relative_key(path: Path, root: Path) -> str:
    """The relative path (POSIX form) used to seed an image's evaluation noise."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


Restore = Callable[[torch.Tensor], torch.Tensor]


def load_eval_model(model: str | None, weights: Path | None) -> tuple[nn.Module, str]:
    """The network `serpent eval` scores and the label of its row.

    Without ``--weights`` the model is chosen as `serpent deblur` chooses it
    (:func:`serpent_cli.restore.pretrained_weights`), so the two commands default alike.  With
    ``--weights FILE`` the variant comes from the file (``--model``, if given, must match) and the
    label names the file, e.g. ``serpent-b (runs/b/model.safetensors)``: rows of two runs of one
    variant stay apart.
    """
    from serpent_cli.hub.weights import load_model
    from serpent_cli.restore import pretrained_weights

    if weights is None:
        name, path = pretrained_weights(model)
        return load_model(path, expected_name=name), name
    net = load_model(weights, expected_name=model)
    config = getattr(net, "config", None)
    variant = model or (config.name if config is not None else f"unet-{getattr(net, 'channels', '')}")
    return net, f"{variant} ({weights})"


def model_restorer(model: nn.Module, device: torch.device, *, tile: int | None = 0, overlap: int = DEFAULT_OVERLAP,
                   autocast_dtype: torch.dtype | None = None) -> Restore:
    """A function (C, H, W) degraded -> (C, H, W) restored on the CPU: a :class:`~serpent_cli.restore.Restorer`."""
    restorer = Restorer(model, device, autocast_dtype or torch.float32, tile=tile, overlap=overlap)
    return lambda degraded: restorer.restore_tensor(degraded.unsqueeze(0))[0]


def patch_size_of(model: nn.Module) -> int | None:
    """The model's output patch size P (Serpent: ``config.patch_size``); None for models without patches."""
    return getattr(getattr(model, "config", None), "patch_size", None)


def baseline_restorers(degradation: RegionDegradation) -> dict[str, Restore]:
    """Classical rows beside the degraded input: Wiener with the known kernel, where the kernel is known."""
    if not isinstance(degradation, Degradation) or degradation.blur_sigma == 0:
        return {}
    kernel = benchmark_kernel(degradation)
    return {WIENER_NAME: lambda degraded: wiener_deconvolve(degraded, kernel, WIENER_K)}


def score(pred: torch.Tensor, clean: torch.Tensor, lpips_fn: LPIPS | None = None) -> dict[str, float]:
    """PSNR / SSIM (and LPIPS) of one clipped prediction against its clean image."""
    pred = pred.clamp(0, 1)
    out = {"psnr": float(psnr(pred, clean)), "ssim": float(ssim(pred, clean))}
    if lpips_fn is not None:
        out["lpips"] = float(lpips_fn(pred, clean))
    return out


def evaluate(items: list[EvalImage], models: dict[str, Restore], *, folder: str = "", seed: int = EVAL_SEED,
             use_lpips: bool = True, progress: Callable[[int, int], None] | None = None,
             patches: dict[str, int | None] | None = None) -> EvalReport:
    """Score the degraded baseline and every named model on ``items``.

    With ``patches`` (model name -> patch size), every row gets a ``grid`` score: a number for models
    with P >= 2, None for the rest (including the baselines).
    """
    reason = lpips_unavailable_reason() if use_lpips else "LPIPS not requested"
    lpips_fn = LPIPS() if reason is None else None
    report = EvalReport(folder=folder, seed=seed, lpips_reason=reason)
    per_model: dict[str, list[dict[str, float | None]]] = {BASELINE_NAME: []} | {name: [] for name in models}
    untouched: list[bool] = []
    for i, item in enumerate(items):
        scores: dict[str, dict[str, float | None]] = {BASELINE_NAME: score(item.degraded, item.clean, lpips_fn)}
        for name, restore in models.items():
            restored = restore(item.degraded)
            scores[name] = score(restored, item.clean, lpips_fn)
            if patches is not None:
                p = patches.get(name)
                scores[name]["grid"] = grid_score(restored, item.clean, p) if p and p >= 2 else None
        if patches is not None:
            scores[BASELINE_NAME]["grid"] = None
        untouched.append(torch.equal(item.degraded, item.clean))
        for name, s in scores.items():
            per_model[name].append(s)
            report.rows.append({"image": item.key, "model": name, **s, "untouched": untouched[-1]})
        if progress is not None:
            progress(i + 1, len(items))
    for name, scores_list in per_model.items():
        report.summary.append(_summarise(name, scores_list, untouched))
    return report


def _summarise(name: str, scores_list: list[dict[str, float | None]], untouched: list[bool]) -> dict[str, object]:
    """Means over the images the degradation changed; images it left untouched are scored apart.

    The blind family leaves some photos exactly as they were (no blur, no noise, no JPEG): there the
    input's PSNR is infinite (capped at 200 dB), which would swamp a mean, and what matters is
    whether a model leaves the photo alone.  So ``psnr`` / ``ssim`` / ... average the changed
    images, and ``untouched_images`` / ``untouched_psnr`` report the others (None when there are none).
    """
    changed = [s for s, same in zip(scores_list, untouched) if not same]
    kept = [s for s, same in zip(scores_list, untouched) if same]
    entry: dict[str, object] = {"model": name, "images": len(changed)}
    for metric in ("psnr", "ssim", "lpips", "grid"):
        if changed and metric in changed[0]:
            values = [s[metric] for s in changed]
            entry[metric] = None if None in values else mean_or_nan(values)
    entry["untouched_images"] = len(kept)
    entry["untouched_psnr"] = mean_or_nan([float(s["psnr"]) for s in kept]) if kept else None  # type: ignore[arg-type]
    return entry


REFERENCE_PHOTOS = ("kodak24/kodim03.png", "kodak24/kodim23.png")
"""Two real photos (paths under the shared data root) that pin what each shipped weights file does."""
REFERENCE_CROP = 256


def reference_check(model: nn.Module, data_root: Path) -> dict[str, dict[str, float | None]]:
    """Gain in PSNR (dB) over the degraded input and grid score, per reference photo (centre crops).

    Recorded in the registry when weights ship (``scripts/ship_weights.py``) and checked by a test:
    a changed kernel, loader or config that silently degrades a shipped model shows up as a changed
    gain.  The benchmark degradation, seeded by the photo's path, like ``serpent eval``.
    """
    items = []
    for key in REFERENCE_PHOTOS:
        clean = center_crop(read_rgb(Path(data_root) / key), REFERENCE_CROP).contiguous()
        degraded, draw = degrade_keyed(BENCHMARK, clean, key, EVAL_SEED)
        items.append(EvalImage(key, clean, degraded, draw))
    name = "model"
    report = evaluate(items, {name: model_restorer(model, torch.device("cpu"))}, use_lpips=False,
                      patches={name: patch_size_of(model)})
    rows = {(r["image"], r["model"]): r for r in report.rows}
    return {
        key: {"gain_db": round(float(rows[key, name]["psnr"]) - float(rows[key, BASELINE_NAME]["psnr"]), 3),
              "grid": None if rows[key, name]["grid"] is None else round(float(rows[key, name]["grid"]), 3)}
        for key in REFERENCE_PHOTOS
    }
