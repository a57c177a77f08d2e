"""Start-up: answers that need no work (help, version, usage errors, missing files) import nothing heavy.

Each case runs the real entry point in a fresh interpreter and reports which heavy modules were loaded
when it exited.  Times are not asserted (they flake on a loaded machine): benchmarks/startup.py
measures them against ``python -c pass``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "PIL", "numpy", "safetensors", "huggingface_hub", "tqdm", "spandrel", "matplotlib")

# Runs `serpent ARGS...` through the console-script entry point; at exit, prints the heavy modules loaded.
_PROBE = """
import atexit, json, sys
atexit.register(lambda: print("HEAVY=" + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules))))
sys.argv = ["serpent", *sys.argv[1:]]
from serpent_cli.cli import main
main()
"""


def _heavy_after(args: list[str], cwd: Path) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("HEAVY="))
    return json.loads(line.removeprefix("HEAVY=")), proc


CASES = [
    (["--help"], 0, "Commands"),
    (["--version"], 0, "serpent"),
    (["deblur", "--help"], 0, "--threads"),
    (["--frobnicate"], 2, "No such option"),
    (["deblur", "--tile", "huge", "a.png"], 2, "--tile 'huge'"),
    (["deblur", "--device", "gpu", "a.png"], 2, "unknown device"),
    (["deblur", "--model", "serpent-x", "a.png"], 2, "unknown --model"),
    (["deblur", "--threads", "-1", "a.png"], 2, "--threads -1"),
    (["deblur", "missing.png", "-o", "out.png"], 1, "missing.png: no such file"),
    (["degrade", "missing.png"], 1, "missing.png: no such file"),
    (["degrade", "--kernel-size", "4", "a.png"], 2, "odd"),
    (["eval", "missing-folder"], 2, "data folder not found"),
    (["eval", ".", "--model", "resnet-50"], 2, "unknown model"),
    (["train", "missing-folder"], 2, "data folder not found"),
    (["bench", "-r", "big"], 2, "--resolution takes whole numbers"),
    (["export", "missing.safetensors", "-o", "hub"], 1, "weights file not found"),
    (["download"], 2, "name a model"),
]


@pytest.mark.parametrize(("args", "code", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_quick_answers_import_nothing_heavy(args: list[str], code: int, message: str, tmp_path: Path) -> None:
    heavy, proc = _heavy_after(args, tmp_path)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert heavy == [], f"{args} imported {heavy}"
    assert not any(tmp_path.iterdir())  # and wrote nothing


def test_public_api_still_imports() -> None:
    """The lazy package keeps `from serpent_cli import create_model` and the ops entry point working."""
    code = (
        "import sys, serpent_cli\n"
        "assert 'torch' not in sys.modules\n"
        "from serpent_cli import VARIANTS, SerpentConfig, create_model, list_models\n"
        "from serpent_cli.models import Serpent, UNet\n"
        "from serpent_cli.ops import selective_scan\n"
        "assert isinstance(create_model('serpent-b'), Serpent) and 'unet-32' in list_models()\n"
        "assert VARIANTS['serpent-l'] == SerpentConfig(name='serpent-l', patch_size=2) and callable(selective_scan)\n"
        "print(sorted(n for n in dir(serpent_cli) if not n.startswith('_')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "create_model" in proc.stdout


@pytest.mark.parametrize(("preset", "expected"), [(None, "1"), ("0", "0")])
def test_huge_pages_for_torch_tensors_unless_the_user_said_otherwise(preset: str | None, expected: str) -> None:
    """``import serpent_cli`` asks torch for transparent huge pages on large tensors before torch is imported (torch
    reads the setting once, at its first allocation); a value in the user's environment is kept."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if preset is not None:
        env["THP_MEM_ALLOC_ENABLE"] = preset
    code = ("import sys, os, serpent_cli; assert 'torch' not in sys.modules; "
            "print(os.environ['THP_MEM_ALLOC_ENABLE'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == expected
