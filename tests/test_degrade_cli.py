"""`serpent degrade` as a real subprocess: the benchmark degradation, deterministic per file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from deblur_helpers import crop, run
from PIL import Image

from serpent_cli.degradation.benchmark import Degradation, seeded_generator
from serpent_cli.io.imageio import read_picture


def _clean_tree(data_dir: Path, root: Path) -> Path:
    src = root / "clean"
    (src / "faces").mkdir(parents=True)
    crop(data_dir, "kodak24", 0, (300, 200, 396, 264)).save(src / "kodim.png")
    crop(data_dir, "faces-val", 0, (64, 64, 128, 128)).save(src / "faces" / "face.png")
    (src / "README.txt").write_text("not an image\n")
    return src


def test_degrade_is_the_benchmark_and_deterministic(data_dir: Path, tmp_path: Path, serpent_cmd: list[str]) -> None:
    src = _clean_tree(data_dir, tmp_path)
    first = run([*serpent_cmd, "degrade", str(src), "-r", "-o", str(tmp_path / "a"), "--json"])
    assert first.returncode == 0, first.stderr.decode()
    rows = [json.loads(line) for line in first.stdout.decode().splitlines()]
    assert [r["key"] for r in rows] == ["faces/face.png", "kodim.png"] and all(r["status"] == "ok" for r in rows)
    assert b"README.txt" in first.stderr and b"Traceback" not in first.stderr
    again = run([*serpent_cmd, "degrade", str(src), "-r", "-o", str(tmp_path / "b")])
    other = run([*serpent_cmd, "degrade", str(src / "kodim.png"), "-o", str(tmp_path / "c"), "--seed", "7"])
    assert again.returncode == 0 and other.returncode == 0
    for rel in ("kodim.png", "faces/face.png"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "c" / "kodim.png").read_bytes() != (tmp_path / "a" / "kodim.png").read_bytes()

    # The file is exactly DESIGN section 4's degradation with the per-file seed, clipped and quantised.
    clean = read_picture(src / "faces" / "face.png").to_tensor()
    expected = Degradation()(clean, generator=seeded_generator("faces/face.png", 0)).clamp(0, 1)
    expected = (expected.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "faces" / "face.png")), expected)
    noisy = np.asarray(Image.open(tmp_path / "a" / "kodim.png"), dtype=np.float32) / 255
    blurred = Degradation(noise_sigma=0).blur(read_picture(src / "kodim.png").to_tensor()).permute(1, 2, 0).numpy()
    assert abs(float((noisy - blurred).std()) - 0.05) < 0.01  # sigma 0.05 noise on top of the blur


def test_degrade_bad_options_and_inputs(data_dir: Path, tmp_path: Path, serpent_cmd: list[str]) -> None:
    src = _clean_tree(data_dir, tmp_path)
    bad = run([*serpent_cmd, "degrade", str(src / "kodim.png"), "-o", str(tmp_path / "o"), "--kernel-size", "60"])
    assert bad.returncode == 2 and b"odd" in bad.stderr and b"Traceback" not in bad.stderr
    mixed = run([*serpent_cmd, "degrade", str(src / "kodim.png"), str(src / "README.txt"), str(tmp_path / "nope"),
                 "-o", str(tmp_path / "o"), "--noise-sigma", "0", "--blur-sigma", "1.5", "--kernel-size", "9"])
    err = mixed.stderr.decode()
    assert mixed.returncode == 1 and "Traceback" not in err
    assert sum(line.startswith("error:") for line in err.splitlines()) == 2
    assert (tmp_path / "o" / "kodim.png").is_file() and not (tmp_path / "o" / "README.png").exists()


def test_earlier_outputs_are_not_fed_back_in(data_dir: Path, tmp_path: Path) -> None:
    """Outputs written inside an input folder (-o there, or the suffix beside) are not inputs next time."""
    from serpent_cli.io.batch import Naming, assign_outputs, drop_earlier_outputs, expand_inputs

    src = _clean_tree(data_dir, tmp_path)
    (src / "out").mkdir()
    (src / "out" / "kodim.png").write_bytes((src / "kodim.png").read_bytes())
    (src / "kodim_degraded.png").write_bytes((src / "kodim.png").read_bytes())
    warnings: list[str] = []
    inside = expand_inputs([str(src)], True, warnings.append, exclude=str(src / "out"))
    assert sorted(j.key for j in inside) == ["faces/face.png", "kodim.png", "kodim_degraded.png"]
    assert len(warnings) == 1 and "README.txt" in warnings[0]
    naming = Naming(default_suffix="_degraded")
    beside = drop_earlier_outputs(expand_inputs([str(src)], False, warnings.append), naming)
    assign_outputs(beside, naming)
    assert [(j.key, Path(j.output).name) for j in beside] == [("kodim.png", "kodim_degraded.png")]
