"""Start-up cost of the `serpent` command: wall time and peak RSS against `python -c pass`.

Every command that answers before doing any work (``--help``, ``--version``, a usage error, a missing
file) should cost little more than the interpreter itself: nothing heavy (torch, Pillow, numpy,
safetensors) is imported on those paths.  The tests assert the imports; the times live here, because
a timed assertion flakes on a loaded machine.

    python benchmarks/startup.py            # median of 7 runs each
    python benchmarks/startup.py --runs 15 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _serpent() -> list[str]:
    exe = Path(sys.executable).with_name("serpent")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("serpent")
    return [found] if found else [sys.executable, "-m", "serpent_cli"]


def _case(argv: list[str], runs: int) -> dict[str, float]:
    """Median wall seconds and the largest child peak RSS (MiB) over ``runs`` runs."""
    times, rss = [], []
    env = {**os.environ, "NO_COLOR": "1"}
    for _ in range(runs):
        start = time.perf_counter()
        # wait4 gives this child's own peak RSS (getrusage(RUSAGE_CHILDREN) is a maximum over all children).
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        _, _, usage = os.wait4(proc.pid, 0)
        times.append(time.perf_counter() - start)
        proc.returncode = 0  # reaped by wait4 above; tells Popen not to wait again
        rss.append(usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20)
    return {"seconds": round(statistics.median(times), 4), "peak_rss_mib": round(max(rss), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    serpent = _serpent()
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "serpent --help": [*serpent, "--help"],
        "serpent --version": [*serpent, "--version"],
        "serpent deblur --tile x a.png (usage error)": [*serpent, "deblur", "--tile", "x", "a.png"],
        "serpent deblur missing.png (no such file)": [*serpent, "deblur", "missing.png", "-o", "out.png"],
        "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
    }
    _case(cases["serpent --help"], 1)  # warm the file cache
    results = {name: _case(argv, args.runs) for name, argv in cases.items()}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    base = results["python -c pass"]["seconds"]
    print(f"{'command':<48} {'median s':>9} {'- python':>9} {'peak RSS MiB':>13}")
    for name, row in results.items():
        print(f"{name:<48} {row['seconds']:>9.3f} {row['seconds'] - base:>9.3f} {row['peak_rss_mib']:>13.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
