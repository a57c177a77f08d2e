"""Evaluate trained weights on the test sets and print the README's results table (Markdown).

    python scripts/results_table.py --models serpent-b serpent-l --weights-dir weights \
        --data ../shared/data --limit 4 --json results-b-l.json
    python scripts/results_table.py --models unet-32 --unet runs/unet-32/model.safetensors --json results-unet.json
    python scripts/results_table.py --from results-*.json          # one table from several runs

Runs ``serpent eval --json`` (a real subprocess per model and set, so the numbers are exactly what users
get), adds GFLOPs at 512x512 from ``serpent_cli.flops``, and writes the raw results to ``--json``.
``--limit`` caps the images per set (first N by path): the full sets take hours on a CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

SETS = ("faces-test-256", "faces-test-512", "cbsd68", "kodak24", "mcmaster18", "set14")


def evaluate(folder: Path, model: str, weights: Path, limit: int) -> dict:
    serpent = shutil.which("serpent") or sys.executable
    cmd = [serpent] if serpent != sys.executable else [serpent, "-m", "serpent_cli"]
    cmd += ["eval", str(folder), "--model", model, "--weights", str(weights), "--json", "--no-lpips"]
    if limit:
        cmd += ["--limit", str(limit)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"))
    parser.add_argument("--unet", type=Path, help="U-Net(32) baseline weights (not shipped)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--limit", type=int, default=0, help="images per set (0 = all)")
    parser.add_argument("--models", nargs="+", default=["unet-32", "serpent-b", "serpent-l", "serpent-h"])
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

    from serpent_cli.flops import model_flops

    models = [(m, args.unet if m == "unet-32" else args.weights_dir / f"{m}.safetensors") for m in args.models]
    if any(weights is None for _, weights in models):
        parser.error("unet-32 needs --unet WEIGHTS")
    results: dict[str, dict[str, dict]] = {}
    for name, weights in models:
        for dataset in args.sets:
            print(f"eval {name} on {dataset}", file=sys.stderr, flush=True)
            report = evaluate(args.data / dataset, name, weights, args.limit)
            baseline, scored = report["summary"]  # the model's row is labelled "NAME (WEIGHTS)"
            results.setdefault("degraded input", {})[dataset] = baseline
            results.setdefault(name, {})[dataset] = scored
    gflops = {name: model_flops(name, 512)[1] / 1e9 for name, _ in models}
    if args.json:
        args.json.write_text(json.dumps({"limit": args.limit, "gflops_512": gflops, "results": results}, indent=1))
    print_table(results, gflops, args.sets)
    return 0


def print_table(results: dict[str, dict[str, dict]], gflops: dict[str, float], sets: list[str]) -> None:
    """PSNR / SSIM per model and set, degraded input first, then models in order of GFLOPs."""
    order = ["degraded input", *sorted((n for n in results if n != "degraded input"), key=lambda n: gflops[n])]
    print("| model | GFLOPs 512 | " + " | ".join(sets) + " |")
    print("|" + "---|" * (len(sets) + 2))
    for name in order:
        per_set = results[name]
        cells = [f"{per_set[s]['psnr']:.2f} / {per_set[s]['ssim']:.3f}" if s in per_set else "-" for s in sets]
        flops = f"{gflops[name]:.1f}" if name in gflops else "-"
        print(f"| {name} | {flops} | " + " | ".join(cells) + " |")
    count = {s: results["degraded input"][s]["images"] for s in sets if s in results["degraded input"]}
    print("\nimages per set: " + ", ".join(f"{s} {n}" for s, n in count.items()))


if __name__ == "__main__":
    raise SystemExit(main())
