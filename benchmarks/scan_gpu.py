"""Selective-scan backends on one GPU: correctness at full size, speed, bandwidth, whole models.

One script for the GPU machine (issue 7).  In one run it

1. checks ``triton`` and ``mamba`` against the chunked PyTorch scan (``torch``) at every
   benchmark shape: output and every gradient, as max |error| / max |reference|;
2. times forward and forward+backward of every backend at (batch, channels, N, L) =
   (1, 256, 5, 262144), (1, 256, 5, 65536), (8, 512, 11, 16384), (1, 1024, 21, 4096), in fp32
   and bf16, and prints the achieved bandwidth next to the card's peak (H100 3.35 TB/s,
   H200 4.8 TB/s; detected from the device name);
3. optionally sweeps Triton tile configurations at the first shape;
4. times whole-model forward+backward of serpent-b/l/h at 256 and 512 with the triton and
   mamba backends;

and writes everything as JSON (after every stage, so a run cut short still leaves results).

Bandwidth is computed from the bytes a scan must move at least: forward reads u, delta, B, C
and writes y; backward reads u, delta, B, C, dy and writes du, ddelta, dB, dC.  Shapes use 4
groups (Serpent's four scan directions), delta_softplus with a delta_bias, and D, like the model.

    python benchmarks/scan_gpu.py                         # everything, JSON to benchmarks/results/
    python benchmarks/scan_gpu.py --stages check time --backends triton torch
    python benchmarks/scan_gpu.py --cpu-smoke             # same code paths, tiny sizes, Triton interpreter

``--cpu-smoke`` sets ``TRITON_INTERPRET=1`` before triton is imported and runs every stage at
tiny sizes on CPU tensors, so this script is tested on machines without a GPU.
"""

from __future__ import annotations

import sys

if "--cpu-smoke" in sys.argv:  # must happen before anything imports triton
    import os as _os

    _os.environ["TRITON_INTERPRET"] = "1"

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from serpent_cli.bench.runner import time_calls
from serpent_cli.ops import get_backend

FULL_SHAPES = [(1, 256, 5, 262144), (1, 256, 5, 65536), (8, 512, 11, 16384), (1, 1024, 21, 4096)]
SMOKE_SHAPES = [(1, 8, 2, 40), (2, 8, 3, 13)]
GROUPS = 4
PEAK_TBPS = {"H200": 4.8, "H100": 3.35, "A100": 2.0, "L40S": 0.864, "RTX 4090": 1.008}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODEL_VARIANTS = ["serpent-b", "serpent-l", "serpent-h"]


def peak_bandwidth(device: torch.device) -> tuple[str, float | None]:
    """(device name, peak HBM TB/s or None when the card is not in our table)."""
    if device.type != "cuda":
        return platform.processor() or "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, tbps in PEAK_TBPS.items():
        if key in name:
            return name, tbps
    return name, None


def make_inputs(shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device, seed: int = 0) -> list:
    """Inputs distributed like Serpent's: softplus(delta + bias) log-uniform in [1e-3, 1e-1], A = -(1..N)."""
    b, d, n, length = shape
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*s: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*s, generator=gen) * scale).to(device)

    dt_init = torch.exp(torch.rand(d, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    bias = (dt_init + torch.log(-torch.expm1(-dt_init))).to(device)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1).to(device)
    return [
        randn(b, d, length).to(dtype),
        randn(b, d, length, scale=0.5).to(dtype),
        A,
        randn(b, GROUPS, n, length).to(dtype),
        randn(b, GROUPS, n, length).to(dtype),
        torch.ones(d, device=device),
        bias,
    ]


def min_bytes(shape: tuple[int, int, int, int], esize: int, backward: bool) -> int:
    b, d, n, length = shape
    channel, state = b * d * length, b * GROUPS * n * length
    fwd = (3 * channel + 2 * state) * esize
    return fwd + ((5 * channel + 4 * state) * esize if backward else 0)


def scan_fn(backend: str) -> Callable[..., torch.Tensor]:
    fn = get_backend(backend)
    if backend == "mamba":
        return lambda u, dl, A, B, C, D, bias: fn(u, dl, A, B, C, D=D, delta_bias=bias, delta_softplus=True)
    return lambda u, dl, A, B, C, D, bias: fn(u, dl, A, B, C, D, bias, True)


WARMUP = 1  # calls before timing (compiles the kernels); 0 in --cpu-smoke
DEADLINE = math.inf  # time.monotonic() after which remaining measurements are skipped (--time-limit-s)


def out_of_time() -> bool:
    return time.monotonic() > DEADLINE


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median milliseconds of fn() (CUDA events on GPU, the wall clock after a sync elsewhere)."""
    return statistics.median(time_calls(fn, device, WARMUP, repeats))


def rel_errors(got: list[torch.Tensor], want: list[torch.Tensor]) -> dict[str, float]:
    names = ["y", "u", "delta", "A", "B", "C", "D", "delta_bias"]
    return {
        name: ((g.float() - w.float()).abs().max() / w.float().abs().max().clamp_min(1e-30)).item()
        for name, g, w in zip(names, got, want)
    }


def forward_backward(fn: Callable, ins: list[torch.Tensor], gy: torch.Tensor) -> list[torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_() for t in ins]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, leaves, gy.to(y.dtype))
    return [y.detach(), *grads]


def _scan_steps(fn: Callable, ins: list, leaves: list, gy: torch.Tensor) -> tuple[Callable, Callable]:
    """(forward without autograd, forward+backward) closures for timing."""

    def fwd() -> None:
        with torch.no_grad():
            fn(*ins)

    def fwd_bwd() -> None:
        for t in leaves:
            t.grad = None
        fn(*leaves).backward(gy)

    return fwd, fwd_bwd


def _model_step(model: torch.nn.Module, image: torch.Tensor, bf16: bool) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(image)
        out.float().square().mean().backward()

    return step


# ------------------------------------------------------------------------------------ stages


def stage_check(args: argparse.Namespace, device: torch.device, shapes: list, backends: list[str]) -> list[dict]:
    """Every backend against the chunked PyTorch scan (fp32, and bf16 against fp32 on the same inputs)."""
    rows = []
    for shape in shapes:
        for dname in args.dtypes:
            ins = make_inputs(shape, DTYPES[dname], device)
            gy = torch.randn(shape[0], shape[1], shape[3], generator=torch.Generator().manual_seed(1)).to(device)
            reference = forward_backward(scan_fn("torch"), [t.float() for t in ins], gy)
            for backend in backends:
                if backend == "torch":
                    continue
                row: dict[str, Any] = {"shape": list(shape), "dtype": dname, "backend": backend}
                if out_of_time():
                    row["error"] = "skipped: time limit"
                    rows.append(row)
                    continue
                try:
                    got = forward_backward(scan_fn(backend), ins, gy)
                    row["rel_error"] = rel_errors(got, reference)
                    row["max_rel_error"] = max(row["rel_error"].values())
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                rows.append(row)
                print(f"check {backend:6s} {dname} {shape}: " + (
                    f"max rel error {row['max_rel_error']:.2e}" if "max_rel_error" in row else row["error"]),
                    flush=True)
            del reference
    return rows


def stage_time(args: argparse.Namespace, device: torch.device, shapes: list, backends: list[str]) -> list[dict]:
    _, peak = peak_bandwidth(device)
    rows = []
    for shape in shapes:
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            ins = make_inputs(shape, dtype, device)
            gy = torch.randn(shape[0], shape[1], shape[3], device=device, dtype=dtype)
            leaves = [t.detach().clone().requires_grad_() for t in ins]
            for backend in backends:
                repeats = args.torch_repeats if backend == "torch" else args.repeats
                row: dict[str, Any] = {"shape": list(shape), "dtype": dname, "backend": backend}
                if out_of_time():
                    row["error"] = "skipped: time limit"
                    rows.append(row)
                    continue
                try:
                    fwd, fwd_bwd = _scan_steps(scan_fn(backend), ins, leaves, gy)
                    row["fwd_ms"] = timed(fwd, device, repeats)
                    row["fwd_bwd_ms"] = timed(fwd_bwd, device, repeats)
                    esize = torch.finfo(dtype).bits // 8
                    for key, backward in (("fwd", False), ("fwd_bwd", True)):
                        gbps = min_bytes(shape, esize, backward) / (row[f"{key}_ms"] * 1e-3) / 1e9
                        row[f"{key}_GBps"] = gbps
                        row[f"{key}_pct_peak"] = 100 * gbps / (peak * 1e3) if peak else None
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                rows.append(row)
                print(_time_line(row, peak), flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    _speedups(rows)
    return rows


def _time_line(row: dict, peak: float | None) -> str:
    head = f"time  {row['backend']:6s} {row['dtype']} {tuple(row['shape'])}:"
    if "error" in row:
        return f"{head} {row['error']}"
    peak_s = f" of {peak * 1e3:.0f} GB/s peak" if peak else ""
    return (f"{head} fwd {row['fwd_ms']:9.3f} ms ({row['fwd_GBps']:7.1f} GB/s{peak_s}), "
            f"fwd+bwd {row['fwd_bwd_ms']:9.3f} ms ({row['fwd_bwd_GBps']:7.1f} GB/s)")


def _speedups(rows: list[dict]) -> None:
    """Add triton-vs-mamba ratios to the triton rows (the issue's targets)."""
    index = {(tuple(r["shape"]), r["dtype"], r["backend"]): r for r in rows if "error" not in r}
    for (shape, dname, backend), row in index.items():
        if backend != "triton":
            continue
        for other in ("mamba", "torch"):
            ref = index.get((shape, dname, other))
            if ref:
                row[f"fwd_speedup_vs_{other}"] = ref["fwd_ms"] / row["fwd_ms"]
                row[f"fwd_bwd_speedup_vs_{other}"] = ref["fwd_bwd_ms"] / row["fwd_bwd_ms"]


def stage_sweep(args: argparse.Namespace, device: torch.device, shapes: list) -> list[dict]:
    """Triton tile configurations at the first shape, fp32, to pick the library defaults.

    Forward: chunk length x (channel tile, warps) of the output kernel, timing the forward.
    Backward: (channel tile, warps) of the main backward kernel at each chunk, timing forward+backward.
    """
    import serpent_cli.ops.scan_triton as st

    saved = (st.CHUNK, st.FWD_STATE, st.FWD_OUT, st.BWD_STATE, st.BWD_MAIN)
    saved_via = st.REVERSE_VIA
    shape = shapes[0]
    ins = make_inputs(shape, torch.float32, device)
    gy = torch.randn(shape[0], shape[1], shape[3], device=device)
    leaves = [t.detach().clone().requires_grad_() for t in ins]
    chunks = [16] if args.cpu_smoke else [128, 256, 512]
    fwd_tiles = [(2, 4)] if args.cpu_smoke else [(2, 4), (4, 4), (8, 4), (8, 8)]
    bwd_tiles = [(1, 4)] if args.cpu_smoke else [(2, 4), (4, 4), (4, 8), (8, 8)]
    rows = []

    def measure(row: dict[str, Any], backward: bool) -> None:
        if out_of_time():
            row["error"] = "skipped: time limit"
        else:
            try:
                fwd, fwd_bwd = _scan_steps(scan_fn("triton"), ins, leaves, gy)
                row["fwd_bwd_ms" if backward else "fwd_ms"] = timed(fwd_bwd if backward else fwd, device, args.repeats)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        rows.append(row)
        print(f"sweep {row}", flush=True)

    try:
        for chunk in chunks:
            st.CHUNK = chunk
            for block_d, warps in fwd_tiles:
                st.FWD_OUT = st.KernelConfig(block_d=block_d, num_warps=warps)
                measure({"kind": "fwd", "chunk": chunk, "block_d": block_d, "num_warps": warps}, backward=False)
            st.FWD_OUT = saved[2]
            for block_d, warps in bwd_tiles:
                st.BWD_MAIN = st.KernelConfig(block_d=block_d, num_warps=warps)
                measure({"kind": "fwd_bwd", "chunk": chunk, "block_d": block_d, "num_warps": warps}, backward=True)
            st.BWD_MAIN = saved[4]
        st.CHUNK = saved[0]
        for via in ("flip", "gather"):
            st.REVERSE_VIA = via
            measure({"kind": "fwd_bwd", "chunk": st.CHUNK, "block_d": st.BWD_MAIN.block_d,
                     "num_warps": st.BWD_MAIN.num_warps, "reverse_via": via}, backward=True)
    finally:
        st.CHUNK, st.FWD_STATE, st.FWD_OUT, st.BWD_STATE, st.BWD_MAIN = saved
        st.REVERSE_VIA = saved_via
    return rows


def stage_models(args: argparse.Namespace, device: torch.device, backends: list[str]) -> list[dict]:
    """Whole-network forward+backward (batch 1, Adam-free: loss.backward only) per scan backend."""
    from serpent_cli.factory import create_model

    rows = []
    sizes = [16] if args.cpu_smoke else args.model_sizes
    variants = MODEL_VARIANTS[:1] if args.cpu_smoke else MODEL_VARIANTS
    for variant in variants:
        overrides = {"embed_dim": 8, "num_scales": 1, "blocks_per_stage": 1} if args.cpu_smoke else {}
        model = create_model(variant, **overrides).to(device)
        for size in sizes:
            image = torch.rand(1, 3, size, size, device=device)
            for amp in args.model_precisions:
                for backend in backends:
                    if backend == "torch" and not args.cpu_smoke:
                        continue  # the issue compares triton with mamba here
                    row: dict[str, Any] = {"model": variant, "size": size, "precision": amp, "backend": backend}
                    if out_of_time():
                        row["error"] = "skipped: time limit"
                        rows.append(row)
                        continue
                    os.environ["SERPENT_SCAN_BACKEND"] = backend
                    try:
                        step = _model_step(model, image, amp == "bf16")
                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(device)
                        row["fwd_bwd_ms"] = timed(step, device, args.model_repeats)
                        if device.type == "cuda":
                            row["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
                    except Exception as exc:
                        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                    finally:
                        os.environ.pop("SERPENT_SCAN_BACKEND", None)
                    rows.append(row)
                    print(f"model {variant} {size} {amp} {backend}: " + (
                        f"{row['fwd_bwd_ms']:.2f} ms" if "fwd_bwd_ms" in row else row["error"]), flush=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
        del model
    index = {(r["model"], r["size"], r["precision"], r["backend"]): r for r in rows if "error" not in r}
    for (variant, size, amp, backend), row in index.items():
        ref = index.get((variant, size, amp, "mamba"))
        if backend == "triton" and ref:
            row["speedup_vs_mamba"] = ref["fwd_bwd_ms"] / row["fwd_bwd_ms"]
    return rows


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, evaluated on this run (None where a backend or stage is missing)."""
    rows = {(tuple(r["shape"]), r["dtype"], r["backend"]): r for r in report.get("time", []) if "error" not in r}
    main = rows.get((tuple(report["shapes"][0]), "fp32", "triton"), {})
    out: dict[str, Any] = {
        "fwd_speedup_vs_mamba_main_fp32": main.get("fwd_speedup_vs_mamba"),
        "fwd_pct_peak_main_fp32": main.get("fwd_pct_peak"),
        "fwd_bwd_speedups_vs_mamba": {
            f"{list(s)} {d}": r.get("fwd_bwd_speedup_vs_mamba") for (s, d, b), r in rows.items() if b == "triton"
        },
    }
    fb = [v for v in out["fwd_bwd_speedups_vs_mamba"].values() if v is not None]
    out["targets_met"] = {
        "fwd_2x_mamba": _at_least(out["fwd_speedup_vs_mamba_main_fp32"], 2.0),
        "fwd_60pct_hbm": _at_least(out["fwd_pct_peak_main_fp32"], 60.0),
        "fwd_bwd_1.5x_mamba_everywhere": (min(fb) >= 1.5) if fb else None,
    }
    checks = [r for r in report.get("check", []) if "max_rel_error" in r]
    out["checks_passed"] = all(
        r["max_rel_error"] <= (1e-3 if r["dtype"] == "fp32" else 5e-2) for r in checks
    ) if checks else None
    return out


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=["check", "time", "models"],
                        choices=["check", "sweep", "time", "models"])
    parser.add_argument("--backends", nargs="+", default=["triton", "mamba", "torch"])
    parser.add_argument("--check-backends", nargs="+", default=["triton", "mamba"],
                        help="backends the check stage compares with the PyTorch scan")
    parser.add_argument("--time-limit-s", type=float, default=None,
                        help="skip the remaining measurements after this many seconds (results so far are kept)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="merge the JSON files of earlier runs (stage lists concatenated) into --out and exit")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--torch-repeats", type=int, default=2, help="the chunked PyTorch scan is slow")
    parser.add_argument("--model-sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--model-precisions", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--model-repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU under TRITON_INTERPRET=1")
    args = parser.parse_args()
    if args.merge:
        merge_reports(args.merge, args.out or Path("scan_gpu.json"))
        return
    if args.time_limit_s:
        global DEADLINE
        DEADLINE = time.monotonic() + args.time_limit_s

    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("scan_gpu.py: no CUDA device; use --cpu-smoke to exercise the script on CPU")
    if args.cpu_smoke:
        args.repeats = args.torch_repeats = args.model_repeats = 1
        args.model_precisions = ["fp32"]
        global WARMUP
        WARMUP = 0
    shapes = SMOKE_SHAPES if args.cpu_smoke else FULL_SHAPES
    backends = []
    for backend in args.backends:
        try:
            get_backend(backend)
            backends.append(backend)
        except Exception as exc:
            print(f"backend {backend} skipped: {exc}", flush=True)
    name, peak = peak_bandwidth(device)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path(__file__).parent / "results" / (
        f"scan_gpu-{'cpu-smoke' if args.cpu_smoke else name.replace(' ', '_')}-{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    import triton

    report: dict[str, Any] = {
        "device": name, "peak_TBps": peak, "torch": torch.__version__, "triton": triton.__version__,
        "mamba_ssm": _mamba_version(), "backends": backends,
        "skipped_backends": sorted(set(args.backends) - set(backends)),
        "shapes": [list(s) for s in shapes], "groups": GROUPS, "cpu_smoke": args.cpu_smoke, "started": stamp,
        "argv": sys.argv[1:],
    }
    print(f"device {name}; peak {peak} TB/s; backends {backends}; torch {torch.__version__}", flush=True)
    stages: dict[str, Callable[[], list]] = {
        "check": lambda: stage_check(args, device, shapes, [b for b in backends if b in args.check_backends]),
        "sweep": lambda: stage_sweep(args, device, shapes) if "triton" in backends else [],
        "time": lambda: stage_time(args, device, shapes, backends),
        "models": lambda: stage_models(args, device, backends),
    }
    for stage in args.stages:
        t0 = time.perf_counter()
        try:
            report[stage] = stages[stage]()
        except Exception:
            report[f"{stage}_failure"] = traceback.format_exc()[-2000:]
            print(report[f"{stage}_failure"], flush=True)
        report[f"{stage}_seconds"] = round(time.perf_counter() - t0, 1)
        report["summary"] = summarise(report)
        out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["summary"], indent=1))
    print(f"wrote {out}")


def merge_reports(paths: list[Path], out: Path) -> None:
    """One report from several runs of this script (e.g. before and after mamba-ssm was built)."""
    merged: dict[str, Any] = {"parts": []}
    for path in paths:
        if not path.exists():
            merged["parts"].append({"file": path.name, "missing": True})
            continue
        part = json.loads(path.read_text())
        merged["parts"].append({"file": path.name, **{k: v for k, v in part.items() if not isinstance(v, list)}})
        for key, value in part.items():
            if isinstance(value, list) and key in ("check", "sweep", "time", "models"):
                merged.setdefault(key, []).extend(value)
            elif key not in merged and not isinstance(value, dict):
                merged[key] = value
    merged["shapes"] = [list(s) for s in FULL_SHAPES] if "shapes" not in merged else merged["shapes"]
    merged["summary"] = summarise(merged)
    out.write_text(json.dumps(merged, indent=1))
    print(json.dumps(merged["summary"], indent=1))
    print(f"wrote {out}")


def _mamba_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("mamba_ssm")
    except Exception:
        return None


if __name__ == "__main__":
    main()
