"""`serpent bench`: Serpent and its peers side by side (params, FLOPs, latency, memory, throughput).

Method (why each choice):

* FLOPs and parameters are counted on ``meta`` tensors (:mod:`serpent_cli.bench.flops`), so they
  are exact and cost nothing, whatever the device.
* Latency: ``warmup`` untimed calls (allocator, kernel selection, Adam state), then the
  median of ``repeats`` timed calls; on CUDA each call is timed with CUDA events, elsewhere
  with ``time.perf_counter`` after a device synchronisation.
* Inference runs under ``torch.inference_mode`` (with autocast for ``--precision`` bf16 /
  fp16); a training step is always fp32, Adam, batch 1, L1 loss: forward, backward, step.
* Peak memory: on CUDA ``max_memory_allocated`` after a reset, in this process (CUDA start-up
  is too slow to pay per measurement).  On the CPU every measurement runs in its own child
  process, so one model's peak never pollutes another's, and the figure is the child's peak
  RSS minus its RSS just before the model is built (the peak is reset there on Linux, so
  the interpreter and torch import are not in it; weights, inputs and activations are); the
  child's address space is capped so a model that does not fit fails with an allocation
  error (an "OOM" cell) instead of pushing the machine into swap.
* Out of memory, a timeout or a crash is a cell ("OOM", "timeout", "error"), never an abort;
  after an OOM or timeout the larger resolutions of that model are not tried (same result).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from serpent_cli import __version__
from serpent_cli.bench.peers import MODELS, build_model, count_params
from serpent_cli.device import is_oom
from serpent_cli.errors import SerpentError, UsageError
from serpent_cli.io.tile_options import DEFAULT_OVERLAP

# Columns that get a ratio to the reference model (value / reference value).
RATIO_COLUMNS = ("params", "gflops", "infer_ms", "infer_mib", "train_ms", "train_mib", "mp_per_s")


@dataclass(frozen=True)
class MeasureSpec:
    """One timed measurement: a model, an input size, and what to do with it."""

    model: str
    resolution: int
    kind: str  # infer | train | tile
    device: str = "cpu"
    precision: str = "fp32"
    warmup: int = 1
    repeats: int = 3
    threads: int = 0  # 0 = torch's default
    tile: int = 0
    overlap: int = DEFAULT_OVERLAP
    memory_limit_mib: int = 0  # CPU child: cap on address-space growth; 0 = none
    budget_s: float = 0.0  # fewer repeats when one call takes long (0 = always ``repeats``)


@dataclass
class Measurement:
    """Result of one :class:`MeasureSpec`: status ok | oom | timeout | error | skipped."""

    status: str
    ms: float | None = None
    peak_mib: float | None = None
    times_ms: list[float] = field(default_factory=list)
    error: str = ""


# --------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_calls(
    fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, budget_s: float = 0.0
) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

    With ``budget_s`` > 0, a slow model gets fewer repeats (at least 1): when one timed call
    already takes most of the budget, more would only repeat the same number slowly.  The first
    timed call decides, not a warm-up call: warm-ups carry one-time costs (the numba kernels
    compile on a machine's first run, 7-16 s) that say nothing about the steady state.
    """
    for _ in range(warmup):
        fn()
        _sync(device)
    times = [_timed_call(fn, device)]
    if budget_s > 0:
        repeats = max(1, min(repeats, int(budget_s / max(times[0] / 1000.0, 1e-9))))
    while len(times) < repeats:
        times.append(_timed_call(fn, device))
    return times


def _timed_call(fn: Callable[[], object], device: torch.device) -> float:
    """One call of ``fn`` in milliseconds (CUDA events on CUDA, the wall clock after a sync elsewhere)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    start_s = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start_s) * 1000.0


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision in dtypes:
        return torch.autocast(device_type=device.type, dtype=dtypes[precision])
    return contextlib.nullcontext()


def _run_spec(spec: MeasureSpec, device: torch.device) -> list[float]:
    """Build the model, run the measurement, return the per-call times (ms)."""
    torch.manual_seed(0)
    model = build_model(spec.model).to(device)
    image = torch.rand(1, 3, spec.resolution, spec.resolution, device=device)
    if spec.kind == "train":
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        target = torch.rand_like(image)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = F.l1_loss(model(image), target)
            loss.backward()
            optimizer.step()

        return time_calls(step, device, max(1, spec.warmup), spec.repeats, spec.budget_s)  # warm-up: Adam state
    model.eval()
    if spec.kind == "tile":
        from serpent_cli.io.tiling import tiled_forward

        def call() -> object:
            return tiled_forward(model, image, spec.tile, spec.overlap)
    else:

        def call() -> object:
            return model(image)

    with torch.inference_mode(), _autocast(device, spec.precision):
        return time_calls(call, device, spec.warmup, spec.repeats, spec.budget_s)


def failed_allocation_under_cap(exc: BaseException) -> bool:
    """A native call that returned NULL without setting an exception: under the address-space cap, how an
    allocation failing inside compiled code (numba / LLVM loading a cached kernel, a thread pool) surfaces.

    Seen in `serpent bench --memory-limit` children: "SystemError: error return without exception set", where
    torch's own allocator would have said "not enough memory"; both mean the model does not fit the cap.
    """
    text = str(exc)
    return isinstance(exc, SystemError) and ("without exception set" in text or "without setting an exception" in text)


def measure_here(spec: MeasureSpec) -> Measurement:
    """Run one measurement in this process (GPU path, and the CPU child's body)."""
    device = torch.device(spec.device)
    if spec.threads > 0:
        torch.set_num_threads(spec.threads)
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _reset_peak_rss_mib()
    try:
        times = _run_spec(spec, device)
    except Exception as exc:
        if is_oom(exc) or (spec.memory_limit_mib > 0 and failed_allocation_under_cap(exc)):
            return Measurement("oom")
        return Measurement("error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    finally:
        if device.type == "cuda":
            gc.collect()
    if device.type == "cuda":
        peak: float | None = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        torch.cuda.empty_cache()
    elif device.type == "cpu":
        peak = _peak_rss_mib() - base
    else:
        peak = None  # MPS has no peak counter
    return Measurement("ok", ms=statistics.median(times), peak_mib=peak, times_ms=[round(t, 3) for t in times])


def _reset_peak_rss_mib() -> float:
    """Reset this process's RSS high-water mark to its current RSS (Linux) and return that RSS.

    Importing torch briefly touches more memory than it keeps, so without the reset a small
    model's peak would hide under the import's.  Elsewhere the import peak stays the baseline.
    """
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (peak RSS) to the current RSS, Linux >= 4.0
        return _status_mib("VmRSS")
    return _peak_rss_mib()


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"{key} not in /proc/self/status")


def _peak_rss_mib() -> float:
    """This process's peak resident set size so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    with contextlib.suppress(OSError):
        return _status_mib("VmHWM")  # honours the clear_refs reset, unlike ru_maxrss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _limit_address_space(extra_mib: int) -> None:
    """Cap this process's address space at its current size plus ``extra_mib`` (Linux)."""
    if extra_mib <= 0 or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/statm") as fh:
            vm_pages = int(fh.read().split()[0])
        current = vm_pages * os.sysconf("SC_PAGE_SIZE")
        limit = current + extra_mib * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))


def available_memory_mib() -> int:
    """Memory available for new allocations (MemAvailable on Linux; 0 = unknown)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as fh:
            line = next(ln for ln in fh if ln.startswith("MemAvailable:"))
        return int(line.split()[1]) // 1024
    return 0


def measure_in_child(spec: MeasureSpec, timeout: float | None) -> Measurement:
    """Run one measurement in a fresh Python process (CPU: clean peak RSS per measurement)."""
    cmd = [sys.executable, "-m", "serpent_cli.bench.runner", "--worker", json.dumps(asdict(spec))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Measurement("timeout")
    if proc.returncode in (-9, 137):  # killed by the kernel's OOM killer
        return Measurement("oom")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return Measurement("error", error=tail[:300])
    return Measurement(**json.loads(lines[-1]))


def _worker_main(argv: Sequence[str]) -> None:
    """Child-process entry: ``python -m serpent_cli.bench.runner --worker SPEC_JSON``."""
    spec = MeasureSpec(**json.loads(argv[1]))
    _limit_address_space(spec.memory_limit_mib)
    result = measure_here(spec)
    print(json.dumps(asdict(result)), flush=True)


# --------------------------------------------------------------------------- the run


@dataclass
class BenchOptions:
    """Everything `serpent bench` was asked to do (validated by :func:`validate_options`)."""

    models: list[str]
    resolutions: list[int]
    device: torch.device
    precision: str = "fp32"
    train: bool = True
    reference: str | None = None
    flops_only: bool = False
    warmup: int | None = None
    repeats: int | None = None
    timeout: float | None = 600.0
    tiles: list[int] | None = None  # --tiles: tile sizes to try (0 = untiled; [] = default sizes)
    overlap: int = DEFAULT_OVERLAP
    memory_limit_mib: int | None = None  # CPU: per-measurement allocation cap; None = 85% of available RAM
    budget_s: float = 30.0  # per measurement: slow models get fewer repeats (at least 1 after warm-up)


def default_tiles(resolution: int) -> list[int]:
    """Tile sizes worth comparing for one image size: untiled, then powers of two below it."""
    return [0] + [t for t in (128, 256, 512, 1024, 2048) if t < resolution]


def validate_options(options: BenchOptions) -> BenchOptions:
    """Check and complete the options; every problem is one UsageError line (exit 2)."""
    if not options.models:
        raise UsageError("--models: give at least one model")
    unknown = [m for m in options.models if m not in MODELS]
    if unknown:
        raise UsageError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    options.models = list(dict.fromkeys(options.models))
    if not options.resolutions:
        raise UsageError("--resolution: give at least one size")
    bad = [r for r in options.resolutions if r < 8 or r > 16384]
    if bad:
        raise UsageError(f"--resolution must be between 8 and 16384 pixels, got {bad[0]}")
    options.resolutions = sorted(set(options.resolutions))
    if options.reference is None:
        options.reference = "serpent-b" if "serpent-b" in options.models else options.models[0]
    elif options.reference not in options.models:
        raise UsageError(f"--reference {options.reference} must be one of the benchmarked models")
    if options.precision not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"--precision must be fp32, bf16 or fp16, got {options.precision!r}")
    for name, value in (("--warmup", options.warmup), ("--repeats", options.repeats)):
        if value is not None and value < (0 if name == "--warmup" else 1):
            raise UsageError(f"{name} must be at least {0 if name == '--warmup' else 1}, got {value}")
    if options.memory_limit_mib is not None and options.memory_limit_mib < 1:
        raise UsageError(f"--memory-limit must be at least 1 MiB, got {options.memory_limit_mib}")
    if options.budget_s < 0:
        raise UsageError(f"--budget must be >= 0 seconds, got {options.budget_s}")
    if options.timeout is not None and options.timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {options.timeout}")
    if options.tiles is not None:
        if options.flops_only:
            raise UsageError("--tiles measures time and memory; it cannot be combined with --flops-only")
        if len(options.resolutions) != 1:
            raise UsageError("--tiles needs exactly one --resolution (the image size the tiles cut)")
        if any(t < 0 for t in options.tiles):
            raise UsageError("tile sizes must be 0 (untiled) or positive")
        if options.overlap < 0:
            raise UsageError(f"--tile-overlap must be >= 0, got {options.overlap}")
        too_small = [t for t in options.tiles if 0 < t <= 2 * options.overlap]
        if too_small:
            raise UsageError(f"tile {too_small[0]} must be larger than twice the overlap ({options.overlap})")
        options.tiles = list(dict.fromkeys(options.tiles)) or default_tiles(options.resolutions[0])
    if options.warmup is None:
        options.warmup = 3 if options.device.type == "cuda" else 1
    if options.repeats is None:
        options.repeats = 10 if options.device.type == "cuda" else 3
    return options


def _cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo), else what platform knows."""
    with contextlib.suppress(OSError, StopIteration, IndexError):
        with open("/proc/cpuinfo") as fh:
            return next(ln for ln in fh if ln.startswith("model name")).split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: device, torch version, scan backend, threads."""
    from serpent_cli.ops import resolve_backend

    info: dict[str, Any] = {
        "serpent_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": _cpu_name(),
        "threads": torch.get_num_threads(),
        "scan_backend": resolve_backend("auto", device if device.type != "meta" else "cpu"),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["device_memory_mib"] = torch.cuda.get_device_properties(device).total_memory // 2**20
        info["cuda_version"] = torch.version.cuda
    info["memory_measure"] = {
        "cuda": "torch.cuda.max_memory_allocated (MiB)",
        "cpu": "peak RSS of a child process per measurement, minus its RSS just before the model is built (MiB)",
    }.get(device.type, "not measured on this device")
    return info


def _measure(spec: MeasureSpec, options: BenchOptions) -> Measurement:
    if options.device.type == "cpu":
        return measure_in_child(spec, options.timeout)
    return measure_here(spec)


def _cell(m: Measurement) -> dict[str, Any]:
    return asdict(m)


def run_bench(
    options: BenchOptions,
    progress: Callable[[str], None] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the whole benchmark; returns the JSON-ready result (rows, plus tiles with --tiles).

    ``on_update`` gets the partial result after every row, so a run cut short (a GPU lease
    ending, Ctrl-C) still leaves everything measured so far on disk.
    """
    from serpent_cli.bench.flops import count_flops

    say = progress or (lambda _msg: None)
    memory_limit = 0
    if options.device.type == "cpu":
        memory_limit = options.memory_limit_mib or int(available_memory_mib() * 0.85)
    result: dict[str, Any] = {
        "environment": environment(options.device),
        "settings": {
            "precision": options.precision,
            "train_precision": "fp32",
            "optimizer": "Adam",
            "batch": 1,
            "warmup": options.warmup,
            "repeats": options.repeats,
            "statistic": "median",
            "budget_s": options.budget_s,
            "reference": options.reference,
            "flops_only": options.flops_only,
            "cpu_memory_limit_mib": memory_limit or None,
            "flops_convention": "forward pass, 2 FLOPs per multiply-add, selective scan 9*b*d*l*n + b*d*l",
        },
        "rows": [],
    }
    stopped: dict[tuple[str, str], str] = {}  # (model, kind) -> status that makes larger sizes pointless
    for name in options.models:
        meta_model = build_model(name, meta=True)
        params = count_params(meta_model)
        for res in options.resolutions:
            row: dict[str, Any] = {
                "model": name,
                "resolution": res,
                "params": params,
                "gflops": count_flops(meta_model, res).total / 1e9,
            }
            timed = not options.flops_only and options.tiles is None
            kinds = (["infer", "train"] if options.train else ["infer"]) if timed else []
            for kind in kinds:
                if (name, kind) in stopped:
                    row[kind] = _cell(Measurement(stopped[(name, kind)], error="larger size not tried"))
                    continue
                say(f"{name} at {res}x{res}: {'inference' if kind == 'infer' else 'training step'}")
                spec = MeasureSpec(
                    model=name, resolution=res, kind=kind, device=str(options.device), precision=options.precision,
                    warmup=options.warmup or 0, repeats=options.repeats or 1, threads=torch.get_num_threads(),
                    memory_limit_mib=memory_limit, budget_s=options.budget_s,
                )
                m = _measure(spec, options)
                if m.status in ("oom", "timeout"):
                    stopped[(name, kind)] = m.status
                row[kind] = _cell(m)
            infer = row.get("infer")
            row["mp_per_s"] = res * res / 1e6 / (infer["ms"] / 1000) if infer and infer["status"] == "ok" else None
            result["rows"].append(row)
            if on_update is not None:
                add_ratios(result["rows"], options.reference or options.models[0])
                on_update(result)
    add_ratios(result["rows"], options.reference or options.models[0])
    if options.tiles is not None:
        result["tiles"] = run_tiles(options, say, memory_limit)
    return result


def run_tiles(options: BenchOptions, say: Callable[[str], None], memory_limit: int) -> list[dict[str, Any]]:
    """Time and peak memory of a tiled forward pass per tile size, for one image size."""
    from serpent_cli.io.tiling import tile_starts

    res = options.resolutions[0]
    rows = []
    for name in options.models:
        for tile in options.tiles or default_tiles(res):
            tiled = 0 < tile < res
            say(f"{name} at {res}x{res}: tile {tile if tiled else 'none'}")
            spec = MeasureSpec(
                model=name, resolution=res, kind="tile", device=str(options.device), precision=options.precision,
                warmup=options.warmup or 0, repeats=options.repeats or 1, threads=torch.get_num_threads(),
                tile=tile if tiled else 0, overlap=options.overlap, memory_limit_mib=memory_limit,
                budget_s=options.budget_s,
            )
            m = _measure(spec, options)
            count = len(tile_starts(res, tile, options.overlap)) ** 2 if tiled else 1
            rows.append({
                "model": name, "resolution": res, "tile": tile if tiled else 0, "overlap": options.overlap,
                "tiles": count, **_cell(m),
                "mp_per_s": res * res / 1e6 / (m.ms / 1000) if m.status == "ok" and m.ms else None,
            })
    return rows


def _value(row: dict[str, Any], column: str) -> float | None:
    if column in ("params", "gflops", "mp_per_s"):
        return row.get(column)
    kind, what = column.split("_")
    cell = row.get(kind)
    if not cell or cell.get("status") != "ok":
        return None
    return cell["ms"] if what == "ms" else cell["peak_mib"]


def add_ratios(rows: list[dict[str, Any]], reference: str) -> None:
    """Give each row ``ratios[column] = value / reference's value`` at the same resolution."""
    refs = {row["resolution"]: row for row in rows if row["model"] == reference}
    for row in rows:
        ref = refs.get(row["resolution"])
        ratios: dict[str, float | None] = {}
        for column in RATIO_COLUMNS:
            value, base = _value(row, column), (_value(ref, column) if ref else None)
            ratios[column] = value / base if value is not None and base else None
        row["ratios"] = ratios


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _main(argv: Sequence[str]) -> None:
    if len(argv) == 2 and argv[0] == "--worker":
        with _quiet_warnings():
            _worker_main(argv)
        return
    raise SerpentError("this module is run by `serpent bench`; use that command")


if __name__ == "__main__":
    _main(sys.argv[1:])
