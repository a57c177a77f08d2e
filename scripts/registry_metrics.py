"""Write the registry's METRICS (what `serpent models` and the Hub model cards show) from the committed eval JSON.

    python scripts/registry_metrics.py           # rewrite METRICS in serpent_cli/hub/registry.py
    python scripts/registry_metrics.py --check   # exit 1 when it differs from the JSON (a test runs this)

For each shipped model it reads ``benchmarks/results/eval/NAME.json`` or ``benchmark-NAME.json`` (benchmark
degradation: plain set names) and ``blind-NAME.json`` (the blind family: ``blind/SET``), the files
``scripts/results_table.py --json`` writes.  So the figures a user sees are the measured ones, never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from serpent_cli.models.registry import shipped_models

ROOT = Path(__file__).resolve().parents[1]
EVAL_DIR = ROOT / "benchmarks" / "results" / "eval"
REGISTRY = ROOT / "serpent_cli" / "hub" / "registry.py"
BLOCK = re.compile(r"^METRICS: dict\[.*?\n}\n", re.S | re.M)


def _sets(path: Path, name: str) -> dict[str, dict[str, float]]:
    """PSNR / SSIM per set of ``name`` in one results JSON (sets in the order the file has them)."""
    results = json.loads(path.read_text(encoding="utf-8"))["results"]
    return {dataset: {"psnr": round(row["psnr"], 2), "ssim": round(row["ssim"], 3)}
            for dataset, row in results.get(name, {}).items() if row.get("psnr") is not None}


def measured_metrics(folder: Path = EVAL_DIR) -> dict[str, dict[str, dict[str, float]]]:
    """METRICS as the committed eval JSON says: benchmark sets by name, blind-family sets as ``blind/SET``."""
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    for info in shipped_models():
        found: dict[str, dict[str, float]] = {}
        for stem in (info.name, f"benchmark-{info.name}"):
            if (folder / f"{stem}.json").is_file():
                found.update(_sets(folder / f"{stem}.json", info.name))
        blind = folder / f"blind-{info.name}.json"
        if blind.is_file():
            found.update({f"blind/{dataset}": values for dataset, values in _sets(blind, info.name).items()})
        if found:
            metrics[info.name] = found
    return metrics


def render(metrics: dict[str, dict[str, dict[str, float]]]) -> str:
    """The METRICS block as Python source."""
    lines = ["METRICS: dict[str, dict[str, dict[str, float]]] = {"]
    for name, sets in metrics.items():
        lines.append(f'    "{name}": {{')
        lines += [f'        "{dataset}": {{"psnr": {v["psnr"]:.2f}, "ssim": {v["ssim"]:.3f}}},'
                  for dataset, v in sets.items()]
        lines.append("    },")
    return "\n".join(lines) + "\n}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when METRICS differ")
    args = parser.parse_args()
    source = REGISTRY.read_text(encoding="utf-8")
    current = BLOCK.search(source)
    if current is None:
        print(f"no METRICS block in {REGISTRY}", file=sys.stderr)
        return 1
    wanted = render(measured_metrics())
    if current.group(0) == wanted:
        print("METRICS match the eval JSON")
        return 0
    if args.check:
        print("METRICS differ from benchmarks/results/eval; run python scripts/registry_metrics.py", file=sys.stderr)
        return 1
    REGISTRY.write_text(source[: current.start()] + wanted + source[current.end():], encoding="utf-8")
    print(f"METRICS rewritten in {REGISTRY.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
