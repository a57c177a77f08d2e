"""CPU training-step time of each Serpent variant (forward + backward + Adam), the scan's training cost.

``cpu s`` is the process CPU time of one step (median): with one thread and other jobs
sharing the cores it is steadier than the wall-clock ``median s``.

Each variant runs in its own subprocess so that thread settings and peak RSS are its own.

    OMP_NUM_THREADS=1 python benchmarks/cpu_train_step.py                 # b/l/h, batch 2, 48x48, 1 thread
    python benchmarks/cpu_train_step.py --variants serpent-b --size 64 --batch 4 --steps 5 --json out.json
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


def measure(variant: str, size: int, batch: int, threads: int, steps: int,
            state_divisor: float | None = None) -> dict[str, float | str | int]:
    # isort: off
    import serpent_cli  # noqa: F401  (before torch: the allocator settings `serpent` runs with)
    # isort: on
    import torch
    import torch.nn.functional as F

    from serpent_cli import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    overrides = {"state_divisor": state_divisor} if state_divisor and variant.startswith("serpent") else {}
    model = create_model(variant, **overrides).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(batch, 3, size, size, generator=gen)
    noisy = (target + 0.1 * torch.randn(batch, 3, size, size, generator=gen)).clamp(0, 1)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = F.l1_loss(model(noisy), target)
        loss.backward()
        optimizer.step()
        return float(loss)

    step()  # warm-up (allocator, Adam state)
    times, cpu_times = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {
        "variant": variant,
        "size": size,
        "batch": batch,
        "threads": threads,
        "median_s": sorted(times)[len(times) // 2],
        "min_s": min(times),
        "median_cpu_s": sorted(cpu_times)[len(cpu_times) // 2],  # robust to other processes on the cores
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["serpent-b", "serpent-l", "serpent-h"])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--backend", default="auto", help="scan backend: auto (numba on CPU), numba or torch")
    parser.add_argument("--state-divisor", type=float, help="override the Serpent state size reading (6: N = c/6)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one variant in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.size, args.batch, args.threads, args.steps, args.state_divisor)))
        return
    rows = []
    print(f"{'variant':<10} {'size':>5} {'batch':>5} {'median s':>9} {'min s':>7} {'cpu s':>7} {'peak RSS MiB':>13}")
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--one", variant, "--size", str(args.size), "--batch", str(args.batch),
               "--threads", str(args.threads), "--steps", str(args.steps)]
        if args.state_divisor:
            cmd += ["--state-divisor", str(args.state_divisor)]
        env = {**os.environ, "SERPENT_SCAN_BACKEND": "" if args.backend == "auto" else args.backend}
        row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
        rows.append(row)
        print(f"{variant:<10} {args.size:>5} {args.batch:>5} {row['median_s']:>9.3f} {row['min_s']:>7.3f} "
              f"{row['median_cpu_s']:>7.3f} {row['peak_rss_mib']:>13.0f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": platform.processor() or platform.machine(), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
