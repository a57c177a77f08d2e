"""`serpent eval`: deterministic numbers under the seeded degradation, an honest baseline row, clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from serpent_cli.degradation.benchmark import BENCHMARK, seeded_generator
from serpent_cli.factory import create_model
from serpent_cli.hub.weights import save_model
from serpent_cli.io.imageio import read_rgb

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "serpent-b.safetensors"
    save_model(create_model("serpent-b"), path, dtype=None)
    return path


@pytest.fixture(scope="module")
def folder(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real validation photos, one in a subfolder, plus a stray text file."""
    root = tmp_path_factory.mktemp("eval")
    for i, p in enumerate(sorted((data_dir / "natural-val").iterdir())[:3]):
        dest = root / ("nested" if i == 2 else "") / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
    (root / "README.txt").write_text("stray")
    return root


def _eval(cmd: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, "eval", *args], capture_output=True, text=True, env=ENV, timeout=300)


def test_json_is_deterministic_and_baseline_matches_scikit_image(serpent_cmd: list[str], weights: Path,
                                                                  folder: Path) -> None:
    args = (str(folder), "--model", "serpent-b", "--weights", str(weights), "--crop", "96", "--json")
    first, second = _eval(serpent_cmd, *args), _eval(serpent_cmd, *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout  # identical numbers, run after run
    assert "skipped 1 file(s)" in first.stderr and "README.txt" in first.stderr
    report = json.loads(first.stdout)
    label = f"serpent-b ({weights})"  # the row names the file
    assert [r["model"] for r in report["summary"]] == ["degraded input", "wiener (known kernel)", label]
    assert report["degradation"]["name"] == "benchmark" and report["wiener_k"] > 0
    assert report["lpips"] is None or report["lpips"].startswith("LPIPS not computed")
    rows = report["images"]
    assert len(rows) == 9 and {r["image"] for r in rows} >= {"nested/" + sorted(p.name for p in (
        folder / "nested").iterdir())[0]}
    # Recompute the baseline independently: seeded degradation of the centre crop, clipped, scikit-image metrics.
    for row in (r for r in rows if r["model"] == "degraded input"):
        clean = read_rgb(folder / row["image"])
        _, h, w = clean.shape
        clean = clean[:, (h - 96) // 2 : (h - 96) // 2 + 96, (w - 96) // 2 : (w - 96) // 2 + 96].contiguous()
        degraded = BENCHMARK(clean, generator=seeded_generator(row["image"], 0)).clamp(0, 1)
        a, b = clean.permute(1, 2, 0).double().numpy(), degraded.permute(1, 2, 0).double().numpy()
        assert row["psnr"] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1), abs=1e-4)
        assert row["ssim"] == pytest.approx(structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=2),
            abs=1e-6)
    means = {r["model"]: r for r in report["summary"]}
    assert means["degraded input"]["images"] == 3
    # Patch grid: serpent-b has patch 4, so a score; the baselines have no patches.
    assert isinstance(means[label]["grid"], float) and means[label]["grid"] > 0
    assert means["degraded input"]["grid"] is None and means["wiener (known kernel)"]["grid"] is None
    assert means["wiener (known kernel)"]["psnr"] > means["degraded input"]["psnr"]
    base = [r["psnr"] for r in rows if r["model"] == "degraded input"]
    assert means["degraded input"]["psnr"] == pytest.approx(sum(base) / 3, abs=1e-3)


def test_table_seed_and_tiling(serpent_cmd: list[str], weights: Path, folder: Path) -> None:
    base = (str(folder), "--model", "serpent-b", "--weights", str(weights), "--crop", "96", "--limit", "1")
    table = _eval(serpent_cmd, *base)
    assert table.returncode == 0, table.stderr
    assert "degraded input" in table.stdout and "serpent-b" in table.stdout and "PSNR" in table.stdout
    assert "wiener (known kernel)" in table.stdout and "grid" in table.stdout
    whole = json.loads(_eval(serpent_cmd, *base, "--json").stdout)
    other_seed = json.loads(_eval(serpent_cmd, *base, "--json", "--seed", "1").stdout)
    tiled = json.loads(_eval(serpent_cmd, *base, "--json", "--tile", "64", "--tile-overlap", "16").stdout)
    assert other_seed["summary"][0]["psnr"] != whole["summary"][0]["psnr"]  # the seed drives the noise
    assert tiled["summary"][0] == whole["summary"][0]  # same inputs
    assert tiled["summary"][-1]["psnr"] == pytest.approx(whole["summary"][-1]["psnr"], abs=0.5)


def test_unet_weights_evaluate_too(serpent_cmd: list[str], folder: Path, tmp_path: Path) -> None:
    path = tmp_path / "unet.safetensors"
    save_model(create_model("unet-32"), path)
    proc = _eval(serpent_cmd, str(folder), "--model", "unet-32", "--weights", str(path), "--crop", "64",
                 "--limit", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)["summary"]
    assert summary[-1]["model"] == f"unet-32 ({path})" and summary[-1]["grid"] is None  # no patches: n/a


def test_default_model_is_deblurs(serpent_cmd: list[str], weights: Path, folder: Path, tmp_path: Path) -> None:
    """No --model: eval picks what deblur picks (first of serpent-l, -b, -h with weights here), in one place."""
    bundled = tmp_path / "weights"
    bundled.mkdir()
    torch.manual_seed(1)
    save_model(create_model("serpent-h"), bundled / "serpent-h.safetensors")
    registry = tmp_path / "registry.json"  # pin the stand-in file, as a user does for their own weights
    digest = hashlib.sha256((bundled / "serpent-h.safetensors").read_bytes()).hexdigest()
    registry.write_text(json.dumps({"serpent-h": {"sha256": digest}}))
    env = {**ENV, "SERPENT_WEIGHTS_DIR": str(bundled), "SERPENT_REGISTRY": str(registry)}
    evaluated = subprocess.run([*serpent_cmd, "eval", str(folder), "--crop", "32", "--limit", "1", "--json"],
                               capture_output=True, text=True, env=env, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["summary"][-1]["model"] == "serpent-h"
    image = next(p for p in folder.iterdir() if p.suffix == ".png")
    deblurred = subprocess.run([*serpent_cmd, "deblur", str(image), "-o", str(tmp_path / "out.png"), "--json"],
                               capture_output=True, text=True, env=env, timeout=300)
    assert deblurred.returncode == 0, deblurred.stderr
    assert json.loads(deblurred.stdout)["model"] == "serpent-h"


def test_bad_inputs_are_one_clear_line(serpent_cmd: list[str], weights: Path, folder: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(weights.read_bytes()[:5000])
    cases = [
        ((str(tmp_path / "nope"), "--weights", str(weights)), 2, "not found"),
        ((str(folder), "--weights", str(corrupt)), 1, "corrupt"),
        ((str(folder), "--weights", str(weights), "--tile", "big"), 2, "--tile"),
        ((str(folder), "--model", "unet-32", "--weights", str(weights)), 1, "not a unet-32"),
    ]
    for args, code, message in cases:
        proc = _eval(serpent_cmd, *args)
        assert proc.returncode == code, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_unusable_images_are_skipped_with_a_warning(serpent_cmd: list[str], weights: Path, data_dir: Path,
                                                     tmp_path: Path) -> None:
    from PIL import Image

    src = data_dir / "natural-val" / "sunhays80_img_001.png"
    with Image.open(src) as img:
        img.crop((0, 0, 64, 64)).save(tmp_path / "good.png")
        img.crop((0, 0, 8, 8)).save(tmp_path / "tiny.png")
    jpeg = sorted((data_dir / "natural-train").glob("*.jpg"))[0].read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    proc = _eval(serpent_cmd, str(tmp_path), "--weights", str(weights), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 file(s)" in proc.stderr and "tiny.png" in proc.stderr and "truncated.jpg" in proc.stderr
    assert {r["image"] for r in json.loads(proc.stdout)["images"]} == {"good.png"}


def test_blind_degradation_is_deterministic_and_recorded(serpent_cmd: list[str], weights: Path, folder: Path) -> None:
    from serpent_cli.degradation.family import BLIND, describe_draw

    args = (str(folder), "--model", "serpent-b", "--weights", str(weights), "--crop", "64", "--json")
    first = _eval(serpent_cmd, *args, "--degradation", "blind")
    second = _eval(serpent_cmd, *args, "--degradation", "blind")
    bench = json.loads(_eval(serpent_cmd, *args).stdout)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    report = json.loads(first.stdout)
    assert report["degradation"]["name"] == "blind" and bench["degradation"]["name"] == "benchmark"
    assert bench["degradation"]["blur_sigma"] == 3.0 and "draws" not in bench
    assert [d["image"] for d in report["draws"]] == sorted({r["image"] for r in report["images"]})
    for draw in report["draws"]:
        assert draw == {"image": draw["image"], **describe_draw(draw["image"], 0)}
    base = {r["image"]: r["psnr"] for r in report["images"] if r["model"] == "degraded input"}
    for key, value in base.items():
        clean = read_rgb(folder / key)
        _, h, w = clean.shape
        clean = clean[:, (h - 64) // 2 : (h - 64) // 2 + 64, (w - 64) // 2 : (w - 64) // 2 + 64].contiguous()
        degraded = BLIND(clean, generator=seeded_generator(key, 0)).clamp(0, 1)
        a, b = clean.permute(1, 2, 0).double().numpy(), degraded.permute(1, 2, 0).double().numpy()
        assert value == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1), abs=1e-4)
    assert report["summary"][0]["psnr"] != bench["summary"][0]["psnr"]
    # No kernel is known under the blind family, so no Wiener row (see serpent_cli.evaluation.evaluate).
    labels = [r["model"] for r in report["summary"]]
    assert labels == ["degraded input", f"serpent-b ({weights})"] and report["wiener_k"] is None
    bad = _eval(serpent_cmd, str(folder), "--weights", str(weights), "--degradation", "nonsense")
    assert bad.returncode == 2 and "benchmark, blind" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_untouched_images_are_scored_apart(data_dir: Path) -> None:
    """A photo the degradation left exact (input PSNR capped at 200 dB) must not swamp the means."""
    from serpent_cli.evaluation.evaluate import EvalImage, evaluate

    photos = sorted((data_dir / "kodak24").iterdir())[:3]
    clean = [read_rgb(p)[:, :96, :96].contiguous() for p in photos]
    degraded = [BENCHMARK(c.unsqueeze(0), generator=seeded_generator(p.name, 0))[0].clamp(0, 1)
                for c, p in zip(clean, photos)]
    items = [EvalImage(photos[0].name, clean[0], clean[0].clone()),  # untouched: degraded == clean
             EvalImage(photos[1].name, clean[1], degraded[1]), EvalImage(photos[2].name, clean[2], degraded[2])]

    def darken(x: torch.Tensor) -> torch.Tensor:
        return x * 0.9

    report = evaluate(items, {"identity": lambda x: x, "darken": darken}, use_lpips=False)
    rows = {r["model"]: r for r in report.summary}
    changed_psnr = [r["psnr"] for r in report.rows if r["model"] == "degraded input" and not r["untouched"]]
    assert len(changed_psnr) == 2 and rows["degraded input"]["images"] == 2
    assert rows["degraded input"]["psnr"] == pytest.approx(sum(changed_psnr) / 2)  # not pulled up by 200 dB
    assert rows["degraded input"]["psnr"] < 40
    assert rows["identity"]["untouched_images"] == 1 and rows["identity"]["untouched_psnr"] > 100
    darkened = float(-10 * torch.log10((clean[0] * 0.1).pow(2).mean()))
    assert rows["darken"]["untouched_psnr"] == pytest.approx(darkened, abs=1e-3)  # harm on an exact photo shows
    benchmark_only = evaluate(items[1:], {"identity": lambda x: x}, use_lpips=False)
    assert benchmark_only.summary[0]["untouched_images"] == 0 and benchmark_only.summary[0]["untouched_psnr"] is None
