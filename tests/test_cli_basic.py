"""The installed command answers --version and --help as a real subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from serpent_cli import __version__


def test_version(serpent_cmd: list[str]) -> None:
    out = subprocess.run([*serpent_cmd, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"serpent {__version__}"


def test_help_lists_subcommands(serpent_cmd: list[str]) -> None:
    out = subprocess.run([*serpent_cmd, "--help"], capture_output=True, text=True, check=True)
    for name in ["deblur", "degrade", "train", "eval", "bench", "download", "models"]:
        assert name in out.stdout


def test_python_dash_m() -> None:
    out = subprocess.run([sys.executable, "-m", "serpent_cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_unknown_option_is_usage_error(serpent_cmd: list[str]) -> None:
    out = subprocess.run([*serpent_cmd, "--frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


COMMANDS = ["deblur", "degrade", "train", "eval", "bench", "download", "models", "export"]


def test_quiet_and_verbose_work_before_or_after_the_subcommand(serpent_cmd: list[str], data_dir: Path,
                                                              tmp_path: Path) -> None:
    """`serpent -q degrade ...` and `serpent degrade ... -q` alike: a user puts flags where they think of them."""
    photo = str(data_dir / "kodak24" / "kodim03.png")

    def degrade(before: list[str], after: list[str]) -> subprocess.CompletedProcess[str]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}.png"
        return subprocess.run([*serpent_cmd, *before, "degrade", photo, "-o", str(out), *after],
                              capture_output=True, text=True, timeout=120)

    loud, before, after = degrade([], []), degrade(["-q"], []), degrade([], ["--quiet"])
    assert all(proc.returncode == 0 for proc in (loud, before, after)), (loud.stderr, before.stderr, after.stderr)
    assert "degraded 1 image" in loud.stderr and before.stderr == "" and after.stderr == ""
    for command in COMMANDS:
        help_text = subprocess.run([*serpent_cmd, command, "--help"], capture_output=True, text=True).stdout
        assert "--quiet" in help_text and "--verbose" in help_text, command


def test_help_paragraphs_are_not_split_mid_sentence(serpent_cmd: list[str]) -> None:
    """A docstring's hard line breaks must not reach the help: on a wide terminal each paragraph is one line."""
    import inspect

    from serpent_cli.cli import app

    env = {**os.environ, "COLUMNS": "1000", "NO_COLOR": "1"}
    top = subprocess.run([*serpent_cmd, "--help"], capture_output=True, text=True, env=env, check=True).stdout
    callbacks = {info.name: info.callback for info in app.registered_commands}
    for name in COMMANDS:
        paragraphs = [" ".join(p.split()) for p in inspect.cleandoc(callbacks[name].__doc__ or "").split("\n\n")]
        assert any(name in line and paragraphs[0] in line for line in top.splitlines()), (name, paragraphs[0])
        out = subprocess.run([*serpent_cmd, name, "--help"], capture_output=True, text=True, env=env, check=True)
        lines = out.stdout.splitlines()
        for paragraph in paragraphs:
            assert any(paragraph in line for line in lines), (name, paragraph)


def test_models_fit_80_columns_without_splitting_names(serpent_cmd: list[str]) -> None:
    """An 80-column terminal gets one block per model: names, repo ids and what each model is for, whole."""
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TTY_COMPATIBLE": "1"}  # Rich treats the pipe as one
    out = subprocess.run([*serpent_cmd, "models"], capture_output=True, text=True, env=env, check=True).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)  # bold / italic styles (NO_COLOR only drops colours)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    for name in ("serpent-b", "serpent-l", "serpent-h", "serpent-l-blind"):
        assert any(f"serpent-cli/{name} @ main" in line for line in lines), out  # repo ids never cut mid-word
    blocks = _blocks(lines)
    assert "(default)" in blocks["serpent-l"][0] and "(default)" not in blocks["serpent-b"][0], out
    assert any(line.split() == ["for", "everyday", "photos", "(any", "blur", "kind", "or", "none,", "noise,", "JPEG)"]
               for line in blocks["serpent-l-blind"]), out
    assert any("for     the benchmark blur" in line for line in blocks["serpent-h"]), out


def _blocks(lines: list[str]) -> dict[str, list[str]]:
    """The narrow layout's blocks by model name (a block starts with an unindented line)."""
    blocks: dict[str, list[str]] = {}
    for line in lines:
        if line and not line.startswith(" "):
            blocks[line.split()[0]] = [line]
        elif blocks and line:
            blocks[list(blocks)[-1]].append(line)
    return blocks


def test_tables_sent_to_a_pipe_are_not_squeezed(serpent_cmd: list[str]) -> None:
    """`serpent models | less`: the table whole, each cell's lines unwrapped, not squeezed to 80 columns."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "80"}  # $COLUMNS does not squeeze a pipe
    out = subprocess.run([*serpent_cmd, "models"], capture_output=True, text=True, env=env, check=True).stdout
    rows: dict[str, list[list[str]]] = {}  # model -> its table lines, split into cells
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if not cells:
            continue
        if cells[0] and not cells[0].startswith("("):
            rows[cells[0]] = []
        if rows:
            rows[list(rows)[-1]].append(cells)
    assert set(rows) == {"serpent-b", "serpent-l", "serpent-l-blind", "serpent-h"}, out
    for name, lines in rows.items():
        assert lines[0][3] == f"serpent-cli/{name}", out
    assert rows["serpent-l"][1][0] == "(default)", out
    assert rows["serpent-b"][0][2] == "the benchmark blur (Gaussian sigma 3 + noise 0.05)", out
    assert rows["serpent-l-blind"][0][2] == "everyday photos (any blur kind or none, noise, JPEG)", out
    assert re.fullmatch(r"PSNR [\d.]+-[\d.]+ dB on 6 sets \(--json: all\)", rows["serpent-b"][1][2]), out
    blind = [cells[2] for cells in rows["serpent-l-blind"]]
    assert re.fullmatch(r"PSNR [\d.]+-[\d.]+ dB on 2 sets \(blind\) \(--json: all\)", blind[2]), out
