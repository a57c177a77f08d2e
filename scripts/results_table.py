"""Evaluate trained weights on the test sets and print the README's results table (Markdown).

    python scripts/results_table.py --models serpent-b serpent-l --weights-dir weights \
        --data ../shared/data --limit 4 --json results-b-l.json
    python scripts/results_table.py --models unet-32 --unet runs/unet-32/model.safetensors --json results-unet.json
    python scripts/results_table.py --from results-*.json          # one table from several runs
    python scripts/results_table.py --models serpent-l=runs/serpent-l/model.safetensors --threads 1 --json l.json
    python scripts/results_table.py --models serpent-l serpent-l-blind --sets kodak24 cbsd68 --degradation blind

Runs ``serpent eval --json`` (a real subprocess per model and set, so the numbers are exactly what users
get), adds GFLOPs at 512x512 from ``serpent_cli.bench.flops``, and writes the raw results to ``--json``.
``--limit`` caps the images per set (first N by path; 0, the default, is the whole set).  A model is a
name (its weights from ``--weights-dir``) or ``NAME=FILE``.  Under the benchmark the table also has the
Wiener (known kernel) row, and every model's patch-grid score on kodak24 is printed below it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

SETS = ("faces-test-256", "faces-test-512", "cbsd68", "kodak24", "mcmaster18", "set14")


def evaluate(folder: Path, model: str, weights: Path, limit: int, degradation: str, threads: int) -> dict:
    serpent = shutil.which("serpent") or sys.executable
    cmd = [serpent] if serpent != sys.executable else [serpent, "-m", "serpent_cli"]
    cmd += ["eval", str(folder), "--model", model, "--weights", str(weights), "--json", "--no-lpips",
            "--degradation", degradation]
    if limit:
        cmd += ["--limit", str(limit)]
    if threads:
        cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:  # say why (a stale sha256 pin, a missing folder), not just that it failed
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
        raise SystemExit(f"serpent eval {folder} --model {model} failed: {reason}")
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"))
    parser.add_argument("--unet", type=Path, help="U-Net(32) baseline weights (not shipped)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--limit", type=int, default=0, help="images per set (0 = all)")
    parser.add_argument("--models", nargs="+", default=["unet-32", "serpent-b", "serpent-l", "serpent-h"],
                        help="NAME (weights from --weights-dir) or NAME=FILE")
    parser.add_argument("--degradation", default="benchmark", choices=["benchmark", "blind"])
    parser.add_argument("--threads", type=int, default=0, help="threads per eval (0: serpent's default)")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--from", dest="sources", nargs="+", type=Path, help="print one table from saved JSON files")
    args = parser.parse_args()
    if args.sources:
        merged: dict = {"results": {}, "gflops_512": {}}
        for source in args.sources:
            saved = json.loads(source.read_text())
            merged["gflops_512"].update(saved["gflops_512"])
            for name, per_set in saved["results"].items():
                merged["results"].setdefault(name, {}).update(per_set)
        print_table(merged["results"], merged["gflops_512"], args.sets)
        return 0

    from serpent_cli.bench.flops import model_flops

    models = []
    for spec in args.models:
        name, _, path = spec.partition("=")
        weights = Path(path) if path else (args.unet if name == "unet-32" else args.weights_dir / f"{name}.safetensors")
        if weights is None:
            parser.error("unet-32 needs --unet WEIGHTS or unet-32=FILE")
        models.append((name, weights))
    results: dict[str, dict[str, dict]] = {}
    for name, weights in models:
        for dataset in args.sets:
            print(f"eval {name} on {dataset}", file=sys.stderr, flush=True)
            report = evaluate(args.data / dataset, name, weights, args.limit, args.degradation, args.threads)
            *baselines, scored = report["summary"]  # the model's row (labelled "NAME (WEIGHTS)") comes last
            for row in baselines:
                results.setdefault(str(row["model"]), {})[dataset] = row
            results.setdefault(name, {})[dataset] = scored
    # serpent-l-blind is serpent-l's architecture: the same FLOPs.
    gflops = {name: model_flops(name.removesuffix("-blind"), 512)[1] / 1e9 for name, _ in models}
    if args.json:
        args.json.write_text(json.dumps({"limit": args.limit, "degradation": args.degradation,
                                         "weights": {n: str(w) for n, w in models}, "gflops_512": gflops,
                                         "results": results}, indent=1))
    print_table(results, gflops, args.sets)
    return 0


def print_table(results: dict[str, dict[str, dict]], gflops: dict[str, float], sets: list[str]) -> None:
    """PSNR / SSIM per model and set, degraded input first, then models in order of GFLOPs."""
    fixed = [n for n in ("degraded input", "wiener (known kernel)") if n in results]
    order = [*fixed, *sorted((n for n in results if n not in fixed), key=lambda n: gflops.get(n, 0.0))]
    print("| model | GFLOPs 512 | " + " | ".join(sets) + " |")
    print("|" + "---|" * (len(sets) + 2))
    for name in order:
        per_set = results[name]
        cells = [f"{per_set[s]['psnr']:.2f} / {per_set[s]['ssim']:.3f}" if s in per_set else "-" for s in sets]
        flops = f"{gflops[name]:.1f}" if name in gflops else "-"
        print(f"| {name} | {flops} | " + " | ".join(cells) + " |")
    count = {s: results["degraded input"][s]["images"] for s in sets if s in results["degraded input"]}
    print("\nimages per set: " + ", ".join(f"{s} {n}" for s, n in count.items()))
    kept = {s: results["degraded input"][s].get("untouched_images", 0) for s in count}
    for s, n in kept.items():
        if n:
            scores = ", ".join(f"{m} {results[m][s]['untouched_psnr']:.2f}" for m in order[1:] if s in results[m])
            print(f"{s}: {n} image(s) left untouched by the degradation, scored apart (PSNR to the photo): {scores}")
    grids = {n: r["kodak24"].get("grid") for n, r in results.items() if "kodak24" in r and r["kodak24"].get("grid")}
    if grids:
        print("patch-grid score on kodak24 (1.0 = no grid): " + ", ".join(f"{n} {g:.3f}" for n, g in grids.items()))


if __name__ == "__main__":
    raise SystemExit(main())
