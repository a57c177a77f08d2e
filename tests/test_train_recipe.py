"""Training that uses its budget: schedule, symmetries, bounded cache, several folders, --init."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from serpent_cli import create_model
from serpent_cli.errors import UsageError
from serpent_cli.hub.weights import load_model, save_model
from serpent_cli.io.folders import scan_image_folders
from serpent_cli.training.data import RandomCropDataset
from serpent_cli.training.loop import MIN_LR_RATIO, learning_rate, load_initial_weights

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}


def test_learning_rate_warms_up_then_follows_a_cosine() -> None:
    total, warmup, peak = 1000, 20, 1e-3
    lrs = [learning_rate(s, total, peak, warmup, "cosine") for s in range(total)]
    assert lrs[0] == pytest.approx(peak / warmup) and lrs[warmup - 1] == pytest.approx(peak)
    assert all(a <= b for a, b in itertools.pairwise(lrs[:warmup]))  # rising
    assert all(a >= b for a, b in itertools.pairwise(lrs[warmup:]))  # then falling
    assert lrs[-1] == pytest.approx(peak * MIN_LR_RATIO, rel=1e-2)
    halfway = peak * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi / 2)))
    assert learning_rate(510, total, peak, warmup, "cosine") == pytest.approx(halfway)
    assert learning_rate(900, total, peak, warmup, "constant") == peak


def test_rotations_keep_pairs_aligned_and_cover_all_symmetries(data_dir: Path) -> None:
    """With rotation on, clean and degraded rotate together; all 8 symmetries of the square occur."""
    images = sorted((data_dir / "natural-train").iterdir())[:1]
    plain = RandomCropDataset(images, 32, seed=0)
    rotated = RandomCropDataset(images, 32, seed=0, rotate=True)
    seen = set()
    for k in range(40):
        d0, c0 = plain[k]
        d1, c1 = rotated[k]
        match = [q for q in range(4) if torch.equal(c0.rot90(q, (-2, -1)), c1)]
        assert match, f"sample {k}: rotated crop is not a rotation of the plain one"
        assert torch.equal(d0.rot90(match[0], (-2, -1)), d1)  # the degraded one turned the same way
        seen.add(match[0])
    assert seen == {0, 1, 2, 3}


def test_image_cache_is_bounded(data_dir: Path) -> None:
    images = sorted((data_dir / "natural-train").iterdir())[:8]
    one_mb = RandomCropDataset(images, 32, seed=0, cache_mb=1.0)
    for k in range(16):
        one_mb[k]
    assert 0 < one_mb.cached_bytes <= 2**20 or len(one_mb._cache or {}) == 1
    unbounded = RandomCropDataset(images, 32, seed=0, cache_mb=1e6)
    for k in range(16):
        unbounded[k]
    assert unbounded.cached_bytes > one_mb.cached_bytes
    assert torch.equal(one_mb[3][1], unbounded[3][1])  # eviction changes memory, never the samples


def test_several_folders_train_as_one_set(data_dir: Path) -> None:
    scan = scan_image_folders([data_dir / "natural-val", data_dir / "faces-val"])
    assert len(scan.images) == len(list((data_dir / "natural-val").iterdir())) + len(
        list((data_dir / "faces-val").iterdir()))
    assert scan.images[0].parent.name == "natural-val" and scan.images[-1].parent.name == "faces-val"


def test_init_from_a_file_or_name_and_refuse_other_architectures(tmp_path: Path) -> None:
    source = create_model("serpent-b")
    path = tmp_path / "b.safetensors"
    save_model(source, path, dtype=None)
    target = create_model("serpent-b")
    load_initial_weights(target, str(path))
    for k, v in load_model(path).state_dict().items():
        assert torch.equal(target.state_dict()[k], v)
    with pytest.raises(UsageError, match="different architecture"):
        load_initial_weights(create_model("serpent-l"), str(path))
    with pytest.raises(UsageError, match="different architecture"):
        load_initial_weights(create_model("serpent-b", state_divisor=6.0), str(path))
    with pytest.raises(UsageError, match="no such weights file"):
        load_initial_weights(target, str(tmp_path / "missing.safetensors"))
    with pytest.raises(UsageError, match="neither a weights file nor a known model"):
        load_initial_weights(target, "serpent-q")


def test_train_init_and_two_folders_end_to_end(serpent_cmd: list[str], data_dir: Path, tmp_path: Path) -> None:
    """`serpent train A B --init FILE`: starts from the file's weights (step-0 validation equals them)."""
    start = create_model("serpent-b")
    init = tmp_path / "start.safetensors"
    save_model(start, init, dtype=None)
    out = tmp_path / "run"
    common = [*serpent_cmd, "train", str(data_dir / "natural-val"), str(data_dir / "faces-val"), "--model",
              "serpent-b", "--steps", "2", "--crop", "32", "--batch-size", "2", "--save-every", "1"]
    cmd = [*common, "--out", str(out), "--init", str(init), "--lr", "1e-9", "--warmup", "0", "--ema", "0"]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    trained = load_model(out / "model.safetensors")
    for k, v in start.state_dict().items():  # lr 1e-9: two steps move nothing measurable
        torch.testing.assert_close(trained.state_dict()[k], v, rtol=0, atol=1e-6)
    bad = subprocess.run([*common, "--out", str(tmp_path / "r2"), "--init", "serpent-q"], env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "serpent-q" in bad.stderr
