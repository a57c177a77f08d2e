"""`serpent bench --plot`: FLOPs, latency and memory against resolution, one line per model.

matplotlib is in the optional ``bench`` extra (``pip install 'serpent-cli[bench]'``); without it
``--plot`` fails up front with one line saying so, before any measuring starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from serpent_cli.errors import SerpentError

# Serpent variants in one warm family, peers in distinct cool / grey hues: groups read at a glance.
_STYLE = {
    "serpent-b": ("#f4a261", "o", "-"),
    "serpent-l": ("#e76f51", "o", "-"),
    "serpent-h": ("#9d0208", "o", "-"),
    "unet-32": ("#90be6d", "s", "--"),
    "unet-64": ("#43aa8b", "s", "--"),
    "unet-128": ("#277da1", "s", "--"),
    "swinir-b": ("#7b2cbf", "^", ":"),
    "swinir-l": ("#3c096c", "^", ":"),
    "nafnet-32": ("#6c757d", "D", "-."),
}


def require_matplotlib() -> None:
    """Fail early, with the install command, when the plot extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from serpent_cli.bench.peers import BENCH_EXTRA

        raise SerpentError(f"--plot needs matplotlib: {BENCH_EXTRA} (or pip install matplotlib)") from None


def _series(rows: list[dict[str, Any]], model: str, getter: Any) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in sorted((r for r in rows if r["model"] == model), key=lambda r: r["resolution"]):
        value = getter(row)
        if value is not None and value > 0:
            xs.append(row["resolution"])
            ys.append(value)
    return xs, ys


def _cell(kind: str, what: str) -> Any:
    def get(row: dict[str, Any]) -> float | None:
        cell = row.get(kind)
        return cell.get(what) if cell and cell.get("status") == "ok" else None

    return get


def _spans_under_a_decade(ax: Any) -> bool:
    """Minor tick labels only help when the axis shows fewer than ~one decade."""
    low, high = ax.get_ylim()
    return low > 0 and high / low < 20


def plot_results(result: dict[str, Any], path: str | Path) -> None:
    """Write a PNG with one panel per quantity (log-log), one line per model; atomic write."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator, ScalarFormatter

    rows = result["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    resolutions = sorted({r["resolution"] for r in rows})
    panels = [
        ("GFLOPs (forward)", lambda r: r.get("gflops")),
        ("inference latency (ms)", _cell("infer", "ms")),
        ("inference peak memory (MiB)", _cell("infer", "peak_mib")),
        ("training step latency (ms)", _cell("train", "ms")),
        ("training peak memory (MiB)", _cell("train", "peak_mib")),
        ("inference throughput (MP/s)", lambda r: r.get("mp_per_s")),
    ]
    order = [0, 1, 3, 5, 2, 4]  # top: FLOPs, latencies, throughput; bottom: memory
    if not any(_series(rows, m, getter)[0] for _t, getter in panels[1:] for m in models):
        order = [0]  # --flops-only: one panel, not five empty ones
    shape = (2, 3) if len(order) > 1 else (1, 1)
    fig, grid = plt.subplots(*shape, figsize=(14, 8.5) if len(order) > 1 else (7.5, 5), constrained_layout=True)
    axes = list(grid.flat) if len(order) > 1 else [grid]
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    for ax, index in zip(axes, order):
        title, getter = panels[index]
        drawn = 0
        for model in models:
            xs, ys = _series(rows, model, getter)
            if not xs:
                continue
            color, marker, style = _STYLE.get(model, (None, "o", "-"))
            ax.plot(xs, ys, marker=marker, linestyle=style, color=color, label=model, linewidth=2, markersize=6)
            drawn += 1
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(resolutions))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if _spans_under_a_decade(ax) else NullFormatter())
        ax.set_xlabel("image side (pixels)")
        ax.set_title(title, fontsize=11)
        ax.grid(True, which="both", alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside right center", frameon=False)
    env = result.get("environment", {})
    fig.suptitle(
        f"serpent bench: {env.get('device', '?')} ({env.get('device_name', '?')}), "
        f"torch {env.get('torch_version', '?')}, batch 1, log scales",
        fontsize=13,
    )
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    except OSError as exc:
        raise SerpentError(f"cannot write plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()


__all__ = ["plot_results", "require_matplotlib"]
