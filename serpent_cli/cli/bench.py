"""`serpent bench`: parse options, run :mod:`serpent_cli.bench.runner`, print a table / JSON / plot."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from serpent_cli.atomic import write_json_atomic
from serpent_cli.cli.common import (
    DeviceOption,
    ThreadsOption,
    check_compute_options,
    info,
    print_table,
    use_threads,
    warn,
)
from serpent_cli.errors import UsageError
from serpent_cli.io.tile_options import DEFAULT_OVERLAP

if TYPE_CHECKING:
    from serpent_cli.bench.runner import BenchOptions

DEFAULT_RESOLUTIONS = [256, 512]


def _split(values: list[str] | None) -> list[str]:
    """Repeated options and comma lists both work: ``-r 256 -r 512`` == ``-r 256,512``."""
    return [part for value in values or [] for part in value.replace(",", " ").split() if part]


def _ints(values: list[str], option: str) -> list[int]:
    out = []
    for value in values:
        try:
            out.append(int(value))
        except ValueError:
            raise UsageError(f"{option} takes whole numbers (pixels), got {value!r}") from None
    return out


def _sort_extra(extra: list[str], resolutions: list[str], models: list[str]) -> None:
    """``--resolution 256 512 --models a b``: click leaves 512 and b over; put them where they belong."""
    from serpent_cli.bench.peers import MODELS

    for token in extra:
        if token.isdigit():
            resolutions.append(token)
        elif token in MODELS:
            models.append(token)
        else:
            raise UsageError(f"unexpected argument {token!r}; see 'serpent bench --help'")


def _check_writable(path: Path, option: str) -> None:
    """Refuse an output path we could not write at the end, before spending minutes measuring."""
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{option} {path}: folder {parent} is not writable")


@dataclass(frozen=True)
class _Request:
    """The command line of `serpent bench` as Typer parsed it: one object, so the command stays its signature."""

    extra: list[str] | None
    resolution: list[str] | None
    models: list[str] | None
    device: str
    precision: str
    train: bool
    reference: str | None
    as_json: bool
    output: Path | None
    plot: Path | None
    flops_only: bool
    tiles: bool
    tile_sizes: list[str] | None
    tile_overlap: int
    warmup: int | None
    repeats: int | None
    budget: float
    timeout: float
    load: Path | None
    memory_limit: int | None
    threads: int


def bench_command(
    extra: Annotated[
        list[str] | None,
        typer.Argument(help="More sizes / model names after -r / -m (as in: -r 256 512 -m serpent-b unet-32).",
                       show_default=False),
    ] = None,
    resolution: Annotated[
        list[str] | None,
        typer.Option(
            "--resolution", "-r", help="Square sizes in pixels, e.g. -r 256 512 (default: 256 512; 1024 with --tiles)."
        ),
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option("--models", "-m", help="Models to compare (default: all that import here)."),
    ] = None,
    device: DeviceOption = "auto",
    precision: Annotated[
        str, typer.Option(help="Inference precision: fp32, bf16 or fp16 (training steps are always fp32).")
    ] = "fp32",
    train: Annotated[bool, typer.Option("--train/--no-train", help="Also time a training step.")] = True,
    reference: Annotated[
        str | None, typer.Option(help="Model the ratios are relative to (default: serpent-b).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the JSON to this file.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of FLOPs, latency and memory against resolution.")
    ] = None,
    flops_only: Annotated[
        bool, typer.Option("--flops-only", help="Only parameters and FLOPs (no timing; any machine, seconds).")
    ] = False,
    tiles: Annotated[
        bool, typer.Option("--tiles", help="Tile-size table for one --resolution: time and peak memory per tile.")
    ] = False,
    tile_sizes: Annotated[
        list[str] | None, typer.Option("--tile-sizes", help="Tile sizes for --tiles (0 = untiled), e.g. 0,256,512.")
    ] = None,
    tile_overlap: Annotated[int, typer.Option(help="Overlap between tiles for --tiles, pixels.")] = DEFAULT_OVERLAP,
    warmup: Annotated[int | None, typer.Option(help="Untimed calls first (default: 1 on CPU, 3 on GPU).")] = None,
    repeats: Annotated[int | None, typer.Option(help="Timed calls; the median is reported (default: 3 / 10).")] = None,
    budget: Annotated[
        float, typer.Option(help="Seconds one measurement may take: slow models get fewer repeats (min 1).")
    ] = 30.0,
    timeout: Annotated[float, typer.Option(help="CPU: give up on one measurement after this many seconds.")] = 600.0,
    load: Annotated[
        Path | None, typer.Option(help="Measure nothing: show (and --plot) a JSON saved by an earlier --output.")
    ] = None,
    memory_limit: Annotated[
        int | None,
        typer.Option(help="CPU: MiB one measurement may allocate before it counts as OOM (default: 85% of free RAM)."),
    ] = None,
    threads: ThreadsOption = 0,
) -> None:
    """Serpent against its peers: params, GFLOPs, latency, peak memory, throughput, ratios."""
    _run(_Request(extra=extra, resolution=resolution, models=models, device=device, precision=precision, train=train,
                  reference=reference, as_json=as_json, output=output, plot=plot, flops_only=flops_only, tiles=tiles,
                  tile_sizes=tile_sizes, tile_overlap=tile_overlap, warmup=warmup, repeats=repeats, budget=budget,
                  timeout=timeout, load=load, memory_limit=memory_limit, threads=threads))


def _run(req: _Request) -> None:
    """Show a saved run (--load), or check the options, measure, write the files and show the result."""
    if req.load is not None:
        _show_saved(req.load, req.plot, req.as_json)
        return
    options = _bench_options(req)
    from serpent_cli.bench.runner import run_bench

    output = req.output
    result = run_bench(
        options, progress=info, on_update=(lambda partial: write_json_atomic(output, partial)) if output else None
    )
    if output is not None:
        write_json_atomic(output, result)
        info(f"wrote {output}")
    if req.plot is not None:
        _write_plot(result, req.plot)
    _show(result, req.as_json, tiles=options.tiles is not None)


def _bench_options(req: _Request) -> BenchOptions:
    """The validated options to measure with; every check runs before minutes of measuring (exit 2)."""
    res_tokens, model_tokens = _split(req.resolution), _split(req.models)
    _sort_extra(list(req.extra or []), res_tokens, model_tokens)
    resolutions = _ints(res_tokens, "--resolution") or ([1024] if req.tiles else list(DEFAULT_RESOLUTIONS))
    tile_list = _ints(_split(req.tile_sizes), "--tile-sizes") if req.tiles else None  # [] = default sizes
    if req.tile_sizes and not req.tiles:
        raise UsageError("--tile-sizes only applies with --tiles")
    device = _check_before_measuring(req)
    from serpent_cli.bench.peers import BENCH_EXTRA, choose_models

    chosen, left_out = choose_models(model_tokens)
    if left_out:
        warn(f"SwinIR and NAFNet peers left out (spandrel is not installed); to compare them: {BENCH_EXTRA}")
    from serpent_cli.bench import runner as bm
    from serpent_cli.device import resolve_device

    use_threads(req.threads)
    return bm.validate_options(
        bm.BenchOptions(
            models=chosen,
            resolutions=resolutions,
            device=resolve_device(device),
            precision=req.precision.strip().lower(),
            train=req.train,
            reference=req.reference,
            flops_only=req.flops_only,
            warmup=req.warmup,
            repeats=req.repeats,
            timeout=req.timeout,
            tiles=tile_list,
            overlap=req.tile_overlap,
            memory_limit_mib=req.memory_limit,
            budget_s=req.budget,
        )
    )


def _check_before_measuring(req: _Request) -> str:
    """Output paths writable, --device / --threads sane, matplotlib there for --plot; returns the device."""
    for option, path in (("--output", req.output), ("--plot", req.plot)):
        if path is not None:
            _check_writable(path, option)
    device = check_compute_options(req.device, req.threads)
    if req.plot is not None:
        from serpent_cli.bench.plotting import require_matplotlib

        require_matplotlib()
    return device


def _show_saved(path: Path, plot: Path | None, as_json: bool) -> None:
    """--load: re-render a saved run (e.g. a GPU run's JSON) as a table, JSON or plot."""
    from serpent_cli.bench.results import load_results

    result = load_results(path)
    if plot is not None:
        _check_writable(plot, "--plot")
        _write_plot(result, plot)
    _show(result, as_json, tiles="tiles" in result)


def _write_plot(result: dict[str, Any], plot: Path) -> None:
    """--plot: the PNG, and a line saying where it went."""
    from serpent_cli.bench.plotting import plot_results

    plot_results(result, plot)
    info(f"wrote {plot}")


def _show(result: dict[str, Any], as_json: bool, *, tiles: bool) -> None:
    """The result on stdout: JSON with --json, else the results table or (--tiles) the tile-size table."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print_table(tiles_table(result) if tiles else results_table(result))


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _ratio(value: float | None) -> str:
    """×N when N times the reference's value, ÷N when N times less (×0.00424 reads worse than ÷236)."""
    if value is None:
        return ""
    if value >= 0.99 or value == 0:
        return f" [dim]×{value:.3g}[/dim]"
    return f" [dim]÷{1 / value:.3g}[/dim]"


def _measured(row: dict[str, Any], kind: str, what: str) -> str:
    cell = row.get(kind)
    if cell is None:
        return "-"
    if cell["status"] != "ok":
        return {"oom": "OOM", "timeout": "timeout", "error": "error"}.get(cell["status"], cell["status"])
    value = cell["ms"] if what == "ms" else cell["peak_mib"]
    return _num(value) + _ratio(row["ratios"].get(f"{kind}_{what}"))


def results_table(result: dict[str, Any]) -> Table:
    """The side-by-side table: one row per model and resolution, ratios to the reference in dim."""
    settings, env = result["settings"], result["environment"]
    flops_only = settings["flops_only"]
    table = Table(
        title=f"serpent bench on {env['device']} ({env['device_name']}), torch {env['torch_version']}, "
        f"scan backend {env['scan_backend']}",
        caption=f"×N / ÷N: N times more / less than {settings['reference']} at the same size; "
        + ("FLOPs counted on meta tensors" if flops_only else f"median of {settings['repeats']}, batch 1, "
           f"inference {settings['precision']}, training fp32 + Adam"),
    )
    columns = ["model", "size", "params M", "GFLOPs"]
    if not flops_only:
        columns += ["infer ms", "infer MiB", "train ms", "train MiB", "MP/s"]
    for col in columns:
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for row in result["rows"]:
        cells = [
            row["model"],
            str(row["resolution"]),
            _num(row["params"] / 1e6) + _ratio(row["ratios"]["params"]),
            _num(row["gflops"]) + _ratio(row["ratios"]["gflops"]),
        ]
        if not flops_only:
            cells += [
                _measured(row, "infer", "ms"),
                _measured(row, "infer", "mib"),
                _measured(row, "train", "ms"),
                _measured(row, "train", "mib"),
                _num(row.get("mp_per_s")) + _ratio(row["ratios"]["mp_per_s"]),
            ]
        table.add_row(*cells)
    return table


def tiles_table(result: dict[str, Any]) -> Table:
    """Tile-size table: time and peak memory per tile size for one image size."""
    rows = result.get("tiles", [])
    res = rows[0]["resolution"] if rows else "?"
    table = Table(title=f"tiled inference of a {res}x{res} image on {result['environment']['device']}")
    for col in ("model", "tile", "tiles", "overlap", "ms", "peak MiB", "MP/s"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for row in rows:
        ok = row["status"] == "ok"
        status = {"oom": "OOM", "timeout": "timeout", "error": "error"}.get(row["status"], row["status"])
        table.add_row(
            row["model"],
            str(row["tile"]) if row["tile"] else "none",
            str(row["tiles"]),
            str(row["overlap"]) if row["tile"] else "-",
            _num(row["ms"]) if ok else status,
            _num(row["peak_mib"]) if ok else "-",
            _num(row["mp_per_s"]) if ok else "-",
        )
    return table
