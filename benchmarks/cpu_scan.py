"""The selective scan alone on the CPU: numba (in place, four directions) against the torch backend.

Shapes are SS2D's at each scale of serpent-b and serpent-l on a 512x512 image (L = H*W at that scale,
E = 2c inner channels, N = the state size of the current config), batch 1. Each backend runs the
path it runs in the model: torch the unrolled (1, 4E, L) sequences with four B/C groups; numba the
four directions over SS2D's two position orders (row- and column-major, ``ss2d_scan_orders``).
Layout copies are made once, outside the timing, for both. Both do the same state updates (4*E*L*N).

    python benchmarks/cpu_scan.py --threads 2 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

# isort: off
import serpent_cli  # noqa: F401  (before torch: the allocator settings `serpent` runs with)
# isort: on
import torch

from serpent_cli.models.registry import VARIANTS
from serpent_cli.ops import image_order_to_scan_orders, selective_scan, ss2d_scan_orders

K = 4


def shapes(variant: str, size: int) -> list[tuple[str, int, int, int]]:
    """(label, side, E, N) of the four scales of ``variant`` on a size x size image."""
    cfg = VARIANTS[variant]
    out = []
    for s in range(cfg.num_scales):
        c = cfg.channels(s)
        side = size // cfg.patch_size // 2**s
        out.append((f"{variant} s{s}", side, cfg.expand * c, cfg.state_size(c)))
    return out


def _time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up (and the one-time compile / cache load)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(side: int, e: int, n: int, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    length = side * side
    u = torch.randn(1, length, e, generator=g)
    delta = torch.randn(1, length, K, e, generator=g) * 0.5
    A = -torch.rand(K, e, n, generator=g) - 0.1
    B, C = torch.randn(1, length, K, n, generator=g), torch.randn(1, length, K, n, generator=g)
    D, bias = torch.randn(K, e, generator=g), torch.randn(K, e, generator=g) * 0.5
    # The same problem in the unrolled layout the other backends use (copies made once, outside the timing).
    u4 = u.transpose(1, 2).repeat(1, K, 1).contiguous()
    d4 = delta.permute(0, 2, 3, 1).reshape(1, K * e, length).contiguous()
    B4, C4 = B.permute(0, 2, 3, 1).contiguous(), C.permute(0, 2, 3, 1).contiguous()
    A4, D4, bias4 = A.reshape(K * e, n), D.reshape(-1), bias.reshape(-1)

    uq, dq, Bq, Cq = (image_order_to_scan_orders(t, side, side) for t in (u, delta, B, C))

    def numba_fwd() -> None:
        with torch.no_grad():
            ss2d_scan_orders(uq, dq, A, Bq, Cq, D, bias)

    def torch_fwd() -> None:
        with torch.no_grad():
            selective_scan(u4, d4, A4, B4, C4, D4, bias4, True, backend="torch")

    leaves = [t.clone().requires_grad_() for t in (uq, dq, A, Bq, Cq, D, bias)]
    leaves4 = [t.clone().requires_grad_() for t in (u4, d4, A4, B4, C4, D4, bias4)]

    def numba_train() -> None:
        ss2d_scan_orders(*leaves).sum().backward()

    def torch_train() -> None:
        selective_scan(*leaves4, True, backend="torch").sum().backward()

    updates = K * e * length * n
    row = {"side": side, "E": e, "N": n, "updates_G": updates / 1e9}
    for name, fn in (("numba_fwd", numba_fwd), ("torch_fwd", torch_fwd), ("numba_train", numba_train),
                     ("torch_train", torch_train)):
        row[f"{name}_s"] = _time(fn, repeats)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["serpent-b", "serpent-l"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'shape':<14} {'L':>7} {'E':>4} {'N':>3} {'numba fwd':>10} {'torch fwd':>10} {'x':>5} "
          f"{'numba f+b':>10} {'torch f+b':>10} {'x':>5} {'G upd/s fwd':>11}")
    for variant in args.variants:
        for label, side, e, n in shapes(variant, args.size):
            row = {"shape": label, **measure(side, e, n, args.repeats)}
            rows.append(row)
            print(f"{label:<14} {side * side:>7} {e:>4} {n:>3} {row['numba_fwd_s'] * 1e3:>8.1f}ms "
                  f"{row['torch_fwd_s'] * 1e3:>8.1f}ms {row['torch_fwd_s'] / row['numba_fwd_s']:>5.1f} "
                  f"{row['numba_train_s'] * 1e3:>8.1f}ms {row['torch_train_s'] * 1e3:>8.1f}ms "
                  f"{row['torch_train_s'] / row['numba_train_s']:>5.1f} {row['updates_G'] / row['numba_fwd_s']:>11.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": platform.processor() or platform.machine(), "threads": args.threads,
                       "size": args.size, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
