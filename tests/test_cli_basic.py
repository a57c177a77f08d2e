"""The installed command answers --version and --help as a real subprocess."""

from __future__ import annotations

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
