"""The installed command answers --version and --help as a real subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys

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


def test_models_table_fits_80_columns_without_splitting_names(serpent_cmd: list[str]) -> None:
    # An 80-column terminal (TTY_COMPATIBLE: Rich treats the pipe as one).
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TTY_COMPATIBLE": "1"}
    out = subprocess.run([*serpent_cmd, "models"], capture_output=True, text=True, env=env, check=True).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)  # bold / italic styles (NO_COLOR only drops colours)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    for name in ("serpent-b", "serpent-l", "serpent-h"):
        assert any(f"serpent-cli/{name}" in line for line in lines), out  # repo ids never cut mid-word


def test_tables_sent_to_a_pipe_are_not_squeezed(serpent_cmd: list[str]) -> None:
    """`serpent models | less`: each cell's line whole, not wrapped at 80 columns."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "80"}  # $COLUMNS does not squeeze a pipe
    out = subprocess.run([*serpent_cmd, "models"], capture_output=True, text=True, env=env, check=True).stdout
    rows = {line.split("│")[1].strip(): line for line in out.splitlines()
            if line.startswith("│") and line.split("│")[1].strip()}
    assert set(rows) >= {"serpent-b", "serpent-l", "serpent-l-blind", "serpent-h"}, out
    for name, row in rows.items():
        assert f"serpent-cli/{name}" in row, out
    assert re.search(r"PSNR [\d.]+-[\d.]+ dB on \d+ sets \(--json: all\)", rows["serpent-b"]), out
