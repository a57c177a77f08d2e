"""`serpent eval`: PSNR / SSIM (/ LPIPS) of a model on a folder under a seeded degradation (benchmark or blind)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from serpent_cli.cli.common import (
    DeviceOption,
    ThreadsOption,
    check_compute_options,
    err_console,
    info,
    out_console,
    print_table,
    stderr_is_terminal,
    use_threads,
    verbosity,
    warn,
)
from serpent_cli.degradation.benchmark import EVAL_SEED, check_degradation_name
from serpent_cli.errors import UsageError, require_folder
from serpent_cli.io.tile_options import DEFAULT_OVERLAP, check_overlap, parse_tile
from serpent_cli.models import list_models


def _round(row: dict[str, object]) -> dict[str, object]:
    """Fixed decimals so the printed numbers are identical across runs (they are computed in float64)."""
    digits = {"psnr": 4, "ssim": 6, "lpips": 6, "grid": 4}
    return {k: round(v, digits[k]) if k in digits and isinstance(v, float) else v for k, v in row.items()}


def evaluate_command(
    folder: Annotated[Path, typer.Argument(help="Folder of clean images (read recursively).")],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model name (default: as deblur; with --weights, the file's model)."),
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights file (default: the model's registered weights).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout, with per-image rows.")] = False,
    limit: Annotated[int | None, typer.Option(help="Only the first N images (sorted by path).")] = None,
    crop: Annotated[int, typer.Option(help="Center-crop each image to N px before degrading (0 = whole).")] = 0,
    tile: Annotated[str, typer.Option(help="Tile size: 0 = whole image (default, deterministic), N, or auto.")]
    = "0",
    tile_overlap: Annotated[int, typer.Option(help="Tile overlap in pixels.")] = DEFAULT_OVERLAP,
    seed: Annotated[int, typer.Option(help="Global seed of the degradation noise (benchmark: 0).")] = EVAL_SEED,
    device: DeviceOption = "auto",
    lpips: Annotated[bool, typer.Option("--lpips/--no-lpips", help="Compute LPIPS when it can run offline.")]
    = True,
    degradation: Annotated[str, typer.Option(
        help="benchmark (the paper's fixed blur + noise) or blind (the seeded real-photo family).")]
    = "benchmark",
    threads: ThreadsOption = 0,
) -> None:
    """Score a model against the clean images, beside the degraded input (and Wiener, under the benchmark).

    The grid column is the patch-grid score (1.0 = no visible P x P grid; n/a for patch size 1 and U-Nets).
    """
    if model is not None and model not in list_models():
        raise UsageError(f"unknown model {model!r}; known models: {', '.join(list_models())}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    if crop < 0 or 0 < crop < 11:
        raise UsageError(f"--crop must be 0 (whole image) or at least 11 pixels, got {crop}")
    tile_size, tile_overlap = parse_tile(tile), check_overlap(tile_overlap)
    check_degradation_name(degradation)
    require_folder(folder)
    device = check_compute_options(device, threads)

    from serpent_cli.degradation.family import degradation_by_name
    from serpent_cli.device import resolve_device
    from serpent_cli.evaluation.evaluate import (
        WIENER_NAME,
        baseline_restorers,
        evaluate,
        load_eval_model,
        load_eval_set,
        model_restorer,
        patch_size_of,
    )
    from serpent_cli.evaluation.wiener import WIENER_K

    use_threads(threads)
    degrader = degradation_by_name(degradation)
    dev = resolve_device(device)
    net, label = load_eval_model(model, weights)
    net = net.to(dev).eval()
    items, skipped = load_eval_set(folder, seed=seed, crop=crop or None, limit=limit, degradation=degrader)
    if skipped:
        warn(f"skipped {len(skipped)} file(s) (not images, unreadable, or under 11x11 px): "
             + ", ".join(p.name for p in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    info(f"evaluating {label} on {len(items)} image(s) from {folder} on {dev}")
    show = stderr_is_terminal() and not verbosity.quiet

    def progress(done: int, total: int) -> None:
        if show:
            err_console.print(f"  {done}/{total}", end="\r")

    restorers = baseline_restorers(degrader) | {label: model_restorer(net, dev, tile=tile_size, overlap=tile_overlap)}
    report = evaluate(items, restorers, folder=str(folder), seed=seed, use_lpips=lpips, progress=progress,
                      patches={label: patch_size_of(net)})
    if as_json:
        payload = {
            "folder": str(folder), "seed": seed, "model": label,
            "weights": str(weights) if weights else "registered",
            "degradation": degrader.describe(),
            "wiener_k": WIENER_K if WIENER_NAME in restorers else None,
            "lpips": None if report.lpips_reason is None else report.lpips_reason,
            "summary": [_round(r) for r in report.summary],
            "images": [_round(r) for r in report.rows],
        }
        if any(item.draw for item in items):
            payload["draws"] = [{"image": item.key, **item.draw} for item in items]
        print(json.dumps(payload, indent=2))
        return
    table = Table(title=f"{folder} ({len(items)} images, seeded {degradation} degradation, seed {seed})")
    table.add_column("model")
    table.add_column("PSNR dB", justify="right")
    table.add_column("SSIM", justify="right")
    table.add_column("LPIPS", justify="right")
    table.add_column("grid", justify="right")
    kept = int(report.summary[0]["untouched_images"]) if report.summary else 0  # type: ignore[call-overload]
    if kept:
        table.add_column(f"untouched ({kept}) PSNR", justify="right")

    def cell(value: object, digits: int) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else "n/a"

    for row in report.summary:
        columns = (("psnr", 2), ("ssim", 4), ("lpips", 4), ("grid", 3))
        cells = [cell(row.get(metric), digits) for metric, digits in columns]
        if kept:
            cells.append(cell(row.get("untouched_psnr"), 2))
        table.add_row(str(row["model"]), *cells)
    print_table(table)
    if kept:
        out_console.print(f"{kept} image(s) the degradation left untouched are scored apart (the input is exact "
                          "there); the other columns average the changed images.")
    if report.lpips_reason and lpips:
        out_console.print(report.lpips_reason)
