"""The real-photo checks of a blind model against the benchmark model (issue: a model for real photos).

    python scripts/real_photo_checks.py --models serpent-l serpent-l-blind=runs/serpent-l-blind/model.safetensors \
        --data ../shared/data --json benchmarks/results/eval/real-photo-checks.json

For each model, on kodak24 (whole images): PSNR against the untouched photo when the input is the clean
photo itself ("no harm": a sharp photo must come back unchanged), and the gain over the input under a
mild soft-focus degradation (Gaussian blur sigma 1, noise 0.01), both seeded like ``serpent eval``.
The blind-family and benchmark scores come from ``serpent eval --degradation blind|benchmark``
(``scripts/results_table.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from serpent_cli.degradation.benchmark import Degradation
from serpent_cli.evaluation.evaluate import BASELINE_NAME, evaluate, load_eval_set, model_restorer
from serpent_cli.factory import create_model
from serpent_cli.hub.weights import load_model

CHECKS = {
    "clean input (no harm)": Degradation(kernel_size=1, blur_sigma=0.0, noise_sigma=0.0),
    "soft focus (sigma 1, noise 0.01)": Degradation(kernel_size=9, blur_sigma=1.0, noise_sigma=0.01),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="NAME (registered weights) or NAME=FILE")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--set", default="kodak24")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for check, degradation in CHECKS.items():
        items, _ = load_eval_set(args.data / args.set, limit=args.limit or None, degradation=degradation)
        for spec in args.models:
            name, _, path = spec.partition("=")
            model = load_model(Path(path)) if path else create_model(name, pretrained=True)
            report = evaluate(items, {name: model_restorer(model.eval(), torch.device("cpu"))}, use_lpips=False)
            rows = {r["model"]: r for r in report.summary}
            base, model_psnr = _psnr(rows[BASELINE_NAME], is_input=True), _psnr(rows[name], is_input=False)
            results.setdefault(check, {})[BASELINE_NAME] = {"psnr": None if math.isinf(base) else base}
            # The clean input is the photo itself (infinite PSNR): there the model's PSNR is the figure, no gain.
            results[check][name] = {"psnr": model_psnr} | ({} if math.isinf(base) else {"gain_db": model_psnr - base})
            print(f"{check:<34} {name:<18} {model_psnr:.2f} dB (input {base:.2f} dB)", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps({"set": args.set, "limit": args.limit, "results": results}, indent=1))
    print(json.dumps(results, indent=1))
    return 0


def _psnr(row: dict[str, object], *, is_input: bool) -> float:
    """A row's PSNR over the changed photos; when none changed, the input is exact (inf) and a model's
    figure is its PSNR to the untouched photos."""
    if row["images"]:
        return float(row["psnr"])  # type: ignore[arg-type]
    return math.inf if is_input else float(row["untouched_psnr"])  # type: ignore[arg-type]


if __name__ == "__main__":
    raise SystemExit(main())
