"""`serpent bench` as a user runs it: real subprocesses, real (tiny) timings, JSON / PNG / tables checked."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


def run(
    cmd: list[str], *args: str, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, "bench", *args], capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


def test_flops_only_json(serpent_cmd: list[str]) -> None:
    models = ["serpent-b", "serpent-l", "unet-32"]  # SwinIR / NAFNet figures: tests/test_flops.py
    proc = run(serpent_cmd, "--flops-only", "--json", "-r", "64", "128", "-m", *models)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    env = result["environment"]
    assert env["device"] == "cpu" and env["torch_version"] and env["scan_backend"] == "numba"
    rows = {(r["model"], r["resolution"]): r for r in result["rows"]}
    assert set(rows) == {(m, r) for m in models for r in (64, 128)}
    for m in models:
        assert rows[(m, 128)]["gflops"] == pytest.approx(4 * rows[(m, 64)]["gflops"], rel=0.02)
        assert "infer" not in rows[(m, 64)]  # nothing timed
    assert rows[("serpent-b", 64)]["ratios"]["gflops"] == 1.0  # default reference
    ratio_l = rows[("serpent-l", 128)]["ratios"]["gflops"]
    assert ratio_l == pytest.approx(rows[("serpent-l", 128)]["gflops"] / rows[("serpent-b", 128)]["gflops"])
    assert 3.9 < ratio_l < 4.0
    assert rows[("unet-32", 64)]["params"] / 1e6 == pytest.approx(7.76, rel=0.01)


@pytest.fixture(scope="module")
def timed_run(serpent_cmd: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path, str]:
    """One real timed run (inference + training step) of serpent-b and unet-32 at 32 px, with every output."""
    out = tmp_path_factory.mktemp("bench")
    png, js = out / "bench.png", out / "bench.json"
    proc = run(
        serpent_cmd, "-r", "32", "-m", "serpent-b", "unet-32", "--repeats", "2", "--warmup", "1",
        "--json", "--plot", str(png), "--output", str(js),
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), png, js, proc.stderr


def test_timed_run_json(timed_run: tuple[dict, Path, Path, str]) -> None:
    result, _png, js, stderr = timed_run
    assert json.loads(js.read_text()) == result  # --output writes what --json prints
    assert "Traceback" not in stderr
    settings = result["settings"]
    assert settings["repeats"] == 2 and settings["statistic"] == "median" and settings["train_precision"] == "fp32"
    for row in result["rows"]:
        assert row["resolution"] == 32
        for kind in ("infer", "train"):
            cell = row[kind]
            assert cell["status"] == "ok", cell
            assert len(cell["times_ms"]) == 2 and all(t > 0 for t in cell["times_ms"])
            assert cell["ms"] == pytest.approx(statistics.median(cell["times_ms"]), rel=1e-3)
            assert 0 < cell["peak_mib"] < 4096
        # A training step (forward + backward + Adam state) holds more memory than inference.  Times are
        # not compared: on a loaded machine either can come out slower (benchmarks/ holds timings).
        assert row["train"]["peak_mib"] > row["infer"]["peak_mib"]
        assert row["mp_per_s"] == pytest.approx(32 * 32 / 1e6 / (row["infer"]["ms"] / 1000))
    rows = {r["model"]: r for r in result["rows"]}
    assert rows["serpent-b"]["ratios"]["infer_ms"] == 1.0
    assert rows["unet-32"]["ratios"]["train_mib"] == pytest.approx(
        rows["unet-32"]["train"]["peak_mib"] / rows["serpent-b"]["train"]["peak_mib"]
    )


def test_plot_is_a_png(timed_run: tuple[dict, Path, Path, str]) -> None:
    _result, png, _js, _stderr = timed_run
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert im.width > 800 and im.height > 500
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 20  # lines and text, not a blank canvas
    assert not list(png.parent.glob(".*tmp*"))  # atomic write left nothing behind


def test_tiles_table(serpent_cmd: list[str], tmp_path: Path) -> None:
    js = tmp_path / "tiles.json"
    proc = run(
        serpent_cmd, "--tiles", "-r", "96", "-m", "serpent-b", "--tile-sizes", "0,64", "--tile-overlap", "8",
        "--repeats", "1", "--warmup", "0", "--output", str(js),
    )
    assert proc.returncode == 0, proc.stderr
    assert "tiled inference of a 96x96 image" in proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if "serpent-b" in ln]
    assert len(lines) == 2 and "none" in lines[0] and " 64 " in lines[1]
    tiles = json.loads(js.read_text())["tiles"]
    assert [(t["tile"], t["tiles"], t["status"]) for t in tiles] == [(0, 1, "ok"), (64, 4, "ok")]
    assert all(t["ms"] > 0 and t["peak_mib"] > 0 for t in tiles)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "serpent-b", "no-such-model", "-r", "abc"], "unexpected argument 'no-such-model'"),
        (["--flops-only", "-r", "64", "-m", "serpent-b", "--reference", "unet-32"], "--reference unet-32 must be one"),
        (["--tiles", "-r", "256", "512", "-m", "serpent-b"], "--tiles needs exactly one --resolution"),
        (["--flops-only", "-m", "serpent-b", "--output", "/nonexistent-dir/x.json"], "does not exist"),
        (["--load", "/nonexistent-dir/x.json"], "No such file"),
    ],
)
def test_bad_options_one_line_exit_2(serpent_cmd: list[str], args: list[str], message: str) -> None:
    proc = run(serpent_cmd, *args, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert proc.stdout == ""


def test_missing_matplotlib_is_one_line(tmp_path: Path) -> None:
    """--plot without the optional extra: a clear line before any measuring, exit 1, no file."""
    code = (
        "import sys; sys.modules['matplotlib'] = None; "
        f"sys.argv = ['serpent', 'bench', '--flops-only', '-m', 'serpent-b', '--plot', {str(tmp_path / 'p.png')!r}]; "
        "from serpent_cli.cli import main; main()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert "--plot needs matplotlib" in proc.stderr and "pip install matplotlib" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "p.png").exists()


def test_out_of_memory_is_a_cell(serpent_cmd: list[str], tmp_path: Path) -> None:
    """A model that does not fit is an "OOM" cell and larger sizes are not tried; the run still succeeds."""
    js = tmp_path / "oom.json"
    proc = run(
        serpent_cmd, "-r", "256", "512", "-m", "serpent-b", "--no-train", "--memory-limit", "40",
        "--repeats", "1", "--warmup", "0", "--output", str(js),
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # a thread pool's stacks would eat the tiny address-space cap
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sum("OOM" in ln for ln in proc.stdout.splitlines() if "serpent-b" in ln) == 2
    rows = json.loads(js.read_text())["rows"]
    assert [r["infer"]["status"] for r in rows] == ["oom", "oom"]
    assert rows[1]["infer"]["error"] == "larger size not tried"
    assert all(r["gflops"] > 0 for r in rows)  # FLOPs are still there


@pytest.mark.parametrize("message", ["error return without exception set",
                                     "<function forward at 0x7f> returned NULL without setting an exception"])
def test_a_native_allocation_failure_under_the_cap_is_an_oom_cell(monkeypatch: pytest.MonkeyPatch,
                                                                  message: str) -> None:
    """Under --memory-limit, compiled code that runs out of address space returns NULL without an exception
    (seen in CI: the cell read "error: SystemError ..."); that is the model not fitting. Without a cap it stays an
    error, so a real bug is never hidden as OOM."""
    from serpent_cli.bench import runner

    def fails(spec: runner.MeasureSpec, device: object) -> list[float]:
        raise SystemError(message)

    monkeypatch.setattr(runner, "_run_spec", fails)
    capped = runner.measure_here(runner.MeasureSpec("serpent-b", 64, "infer", memory_limit_mib=40))
    uncapped = runner.measure_here(runner.MeasureSpec("serpent-b", 64, "infer"))
    assert capped.status == "oom"
    assert uncapped.status == "error" and "SystemError" in (uncapped.error or "")


def test_load_shows_a_saved_run(serpent_cmd: list[str], timed_run: tuple[dict, Path, Path, str]) -> None:
    """--load renders a saved JSON (how a GPU run's file is shown and plotted elsewhere)."""
    _result, _png, js, _stderr = timed_run
    proc = run(serpent_cmd, "--load", str(js))
    assert proc.returncode == 0, proc.stderr
    table = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("│")]
    assert [ln.split("│")[1].strip() for ln in table] == ["serpent-b", "unet-32"]
    assert "infer ms" in proc.stdout and "×1" in proc.stdout


@pytest.mark.parametrize("explicit", [False, True])
def test_without_spandrel(tmp_path: Path, explicit: bool) -> None:
    """spandrel missing: the default list drops its peers with a warning; asking for one is a clear exit 2."""
    models = "['-m', 'swinir-b']" if explicit else "[]"
    code = (
        "import sys; sys.modules['spandrel'] = None; "
        f"sys.argv = ['serpent', 'bench', '--flops-only', '-r', '32', '--json'] + {models}; "
        "from serpent_cli.cli import main; main()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in proc.stderr
    # Either way, one line says how to enable the peers.
    hint = [line for line in proc.stderr.splitlines() if "pip install 'serpent-cli[bench]'" in line]
    assert len(hint) == 1, proc.stderr
    if explicit:
        assert proc.returncode == 2 and "need the spandrel package" in hint[0]
        return
    assert proc.returncode == 0, proc.stderr
    assert "SwinIR and NAFNet peers left out" in hint[0]
    names = [row["model"] for row in json.loads(proc.stdout)["rows"]]
    assert names == ["serpent-b", "serpent-l", "serpent-h", "unet-32", "unet-64", "unet-128"]


def test_repeat_budget_ignores_one_time_warm_up_costs() -> None:
    """A first call that compiles (slow) must not cut the repeats; a slow steady state does."""
    import time

    import torch

    from serpent_cli.bench.runner import time_calls

    calls: list[float] = []

    def compiles_once() -> None:
        time.sleep(0.3 if not calls else 0.01)  # the first call pays a one-time cost
        calls.append(1.0)

    times = time_calls(compiles_once, torch.device("cpu"), warmup=1, repeats=3, budget_s=0.2)
    assert len(times) == 3 and all(t < 250 for t in times)

    def always_slow() -> None:
        time.sleep(0.15)

    assert len(time_calls(always_slow, torch.device("cpu"), warmup=1, repeats=3, budget_s=0.2)) == 1
    assert len(time_calls(always_slow, torch.device("cpu"), warmup=0, repeats=2, budget_s=0.0)) == 2
