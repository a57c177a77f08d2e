"""Hostile files: the image reader and the weights loader fuzzed with hypothesis, absurd weights headers.

The fuzz runs live in tests/fuzz_harness.py and run in a child process, which caps its own address
space and watches file descriptor 2; a bounded run (fixed seed, a few thousand cases) is part of the
suite.  ``SERPENT_FUZZ_EXAMPLES=20000`` makes a longer run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from deblur_helpers import crop, run

from serpent_cli.errors import WeightsError
from serpent_cli.hub.weights import load_model, save_model
from serpent_cli.models.config import SerpentConfig
from serpent_cli.models.serpent import Serpent

HARNESS = Path(__file__).with_name("fuzz_harness.py")


def _fuzz(target: str, data_dir: Path) -> dict[str, object]:
    env = {**os.environ, "SERPENT_TEST_DATA": str(data_dir), "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run([sys.executable, str(HARNESS), target], capture_output=True, text=True, env=env,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-6000:] + proc.stdout[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_fuzzed_images_load_or_fail_in_one_line(data_dir: Path) -> None:
    """PNG 8/16-bit, gray, alpha, palette, JPEG + EXIF + ICC, TIFF 8/16-bit, WebP, BMP, mutated."""
    figures = _fuzz("images", data_dir)
    assert figures["cases"] >= 3000
    assert figures["refused"] and figures["loaded"]  # both outcomes are reached: the mutations are not all fatal


@pytest.mark.slow
def test_fuzzed_weights_load_or_fail_in_one_line(data_dir: Path) -> None:
    """Header length, header JSON, metadata, config values and tensor entries of a real weights file, mutated."""
    figures = _fuzz("weights", data_dir)
    assert figures["cases"] >= 600
    assert figures["refused"] and figures["loaded"]


def _weights_with_config(path: Path, **fields: object) -> Path:
    """A real tiny weights file whose header config is then rewritten to ask for ``fields``."""
    import struct

    torch.manual_seed(0)
    save_model(Serpent(SerpentConfig(embed_dim=4, num_scales=2, blocks_per_stage=1)), path)
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    config = json.loads(header["__metadata__"]["config"]) | fields
    header["__metadata__"]["config"] = json.dumps(config)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])
    return path


ABSURD_NETWORKS = [
    ({"embed_dim": 10**6}, "embed_dim = 1000000 is outside"),
    ({"num_scales": 10**4}, "num_scales = 10000 is outside"),
    ({"embed_dim": -32}, "embed_dim = -32 is outside"),
    ({"embed_dim": 32.5}, "embed_dim = 32.5 is outside"),
    ({"patch_size": "4"}, 'patch_size = "4" is outside'),
    ({"dt_min": float("nan")}, "dt_min = NaN is outside"),
    ({"embed_dim": 1024, "num_scales": 8}, "M parameters, over the"),  # every field sane, the whole absurd
]


@pytest.mark.parametrize(("fields", "message"), ABSURD_NETWORKS, ids=[str(f) for f, _ in ABSURD_NETWORKS])
def test_absurd_network_in_header_is_refused_before_allocation(tmp_path: Path, fields: dict[str, object],
                                                               message: str) -> None:
    """Refused in a child whose address space may grow by only 512 MiB: building first would need gigabytes."""
    path = _weights_with_config(tmp_path / "absurd.safetensors", **fields)
    with pytest.raises(WeightsError, match=r"invalid config|limit") as info:
        load_model(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    code = (
        "import resource, sys\n"
        "from serpent_cli.errors import WeightsError\n"
        "from serpent_cli.hub.weights import load_model\n"
        "pages = int(open('/proc/self/statm').read().split()[0])\n"
        "limit = pages * resource.getpagesize() + (512 << 20)\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))\n"
        "try:\n    load_model(sys.argv[1])\nexcept WeightsError as exc:\n    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"})
    assert proc.returncode == 0 and message in proc.stdout, proc.stderr[-3000:]


def test_absurd_weights_are_one_line_on_the_command_line(data_dir: Path, tmp_path: Path,
                                                         serpent_cmd: list[str]) -> None:
    path = _weights_with_config(tmp_path / "absurd.safetensors", embed_dim=10**6)
    crop(data_dir, "kodak24", 0, (0, 0, 64, 48)).save(tmp_path / "in.png")
    proc = run([*serpent_cmd, "deblur", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"),
                "--weights", str(path), "--device", "cpu"], timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "embed_dim = 1000000 is outside 1..1024" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.png").exists()
