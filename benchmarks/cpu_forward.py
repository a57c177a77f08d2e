"""CPU forward speed of each Serpent variant on one image (issue: 512x512, fp32, 2 cores).

Each variant runs in its own subprocess so that peak RSS is that variant's alone.  On a machine
whose speed drifts from minute to minute (a shared VM), compare two models with ``--paired``: both
in one process, one forward of each in turn, and the median of the per-round time ratios.

    python benchmarks/cpu_forward.py                     # all variants, 512x512, 2 threads
    python benchmarks/cpu_forward.py --size 256 --threads 4 --variants serpent-b --json out.json
    python benchmarks/cpu_forward.py --paired --variants serpent-l unet-32 --repeats 15
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def measure(variant: str, size: int, threads: int, repeats: int,
            state_divisor: float | None = None) -> dict[str, float | str | int]:
    # isort: off
    import serpent_cli  # noqa: F401  (before torch: the allocator settings `serpent` runs with)
    # isort: on
    import torch

    from serpent_cli import create_model
    from serpent_cli.ops import resolve_backend

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    overrides = {"state_divisor": state_divisor} if state_divisor and variant.startswith("serpent") else {}
    model = create_model(variant, **overrides).eval()
    image = torch.rand(1, 3, size, size)
    times = []
    with torch.inference_mode():
        model(image)  # warm-up (allocator, kernel selection)
        for _ in range(repeats):
            start = time.perf_counter()
            model(image)
            times.append(time.perf_counter() - start)
    return {
        "variant": variant,
        "size": size,
        "threads": threads,
        "backend": resolve_backend("auto", "cpu") if variant.startswith("serpent") else "-",
        "state_divisor": getattr(getattr(model, "config", None), "state_divisor", None),
        "median_s": sorted(times)[len(times) // 2],
        "min_s": min(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure_paired(variants: list[str], size: int, threads: int, rounds: int,
                   state_divisor: float | None = None) -> list[dict[str, float | str | int]]:
    """All variants in this process, one forward each per round; ratios against the last variant."""
    # isort: off
    import serpent_cli  # noqa: F401  (before torch, as in measure)
    # isort: on
    import torch

    from serpent_cli import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    def overrides(variant: str) -> dict[str, float]:
        return {"state_divisor": state_divisor} if state_divisor and variant.startswith("serpent") else {}

    models = {variant: create_model(variant, **overrides(variant)).eval() for variant in variants}
    image = torch.rand(1, 3, size, size)
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    with torch.inference_mode():
        for model in models.values():
            model(image)  # warm-up
        for _ in range(rounds):
            for variant, model in models.items():
                start = time.perf_counter()
                model(image)
                times[variant].append(time.perf_counter() - start)
    reference = variants[-1]
    rows = []
    for variant in variants:
        ratios = sorted(t / r for t, r in zip(times[variant], times[reference], strict=True))
        rows.append({
            "variant": variant, "size": size, "threads": threads, "rounds": rounds,
            "median_s": sorted(times[variant])[rounds // 2], "min_s": min(times[variant]),
            "reference": reference, "ratio_median": ratios[rounds // 2],
            "ratio_min": ratios[0], "ratio_max": ratios[-1],
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["serpent-b", "serpent-l", "serpent-h", "unet-32"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="auto", help="scan backend: auto (numba on CPU), numba or torch")
    parser.add_argument("--state-divisor", type=float, help="override the Serpent state size reading (6: N = c/6)")
    parser.add_argument("--paired", action="store_true",
                        help="one process, variants in turn for --repeats rounds; time ratios to the last variant")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one variant in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.size, args.threads, args.repeats, args.state_divisor)))
        return
    if args.paired:
        if args.backend != "auto":
            os.environ["SERPENT_SCAN_BACKEND"] = args.backend
        rows = measure_paired(args.variants, args.size, args.threads, args.repeats, args.state_divisor)
        print(f"{'variant':<10} {'size':>5} {'median s':>9} {'min s':>7} {'ratio to ' + rows[-1]['reference']:>20}"
              f" {'(range)':>13}")
        for row in rows:
            print(f"{row['variant']:<10} {args.size:>5} {row['median_s']:>9.2f} {row['min_s']:>7.2f} "
                  f"{row['ratio_median']:>20.3f} {row['ratio_min']:>6.2f}-{row['ratio_max']:.2f}")
        _write(args.json, rows)
        return
    rows = []
    print(f"{'variant':<10} {'size':>5} {'median s':>9} {'min s':>7} {'peak RSS MiB':>13}")
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--one", variant, "--size", str(args.size),
               "--threads", str(args.threads), "--repeats", str(args.repeats)]
        if args.state_divisor:
            cmd += ["--state-divisor", str(args.state_divisor)]
        env = {**os.environ, "SERPENT_SCAN_BACKEND": "" if args.backend == "auto" else args.backend}
        row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
        rows.append(row)
        print(f"{variant:<10} {args.size:>5} {row['median_s']:>9.2f} {row['min_s']:>7.2f} {row['peak_rss_mib']:>13.0f}")
    _write(args.json, rows)


def _write(path: str | None, rows: list[dict[str, float | str | int]]) -> None:
    if path:
        with open(path, "w") as fh:
            json.dump({"machine": platform.processor() or platform.machine(), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
