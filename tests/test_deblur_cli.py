"""`serpent deblur` as a real subprocess on real photo crops: batches, fidelity, bad inputs, exit codes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
import torch
from deblur_helpers import crop, make_weights, one_thread, run  # noqa: F401  (one_thread: fixture)
from numba_cache import NumbaCache
from PIL import Image, ImageCms

from serpent_cli.hub.local import bundled_weights_dir
from serpent_cli.io.imageio import ORIENTATION_TAG, read_picture
from serpent_cli.restore import Restorer, RestoreReport


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("weights") / "w.safetensors")


def _bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def batch(data_dir: Path, tmp_path_factory: pytest.TempPathFactory, weights: Path, serpent_cmd: list[str]):
    """One real run over a folder mixing every kind of good and bad input; tests below inspect it."""
    root = tmp_path_factory.mktemp("batch")
    src = root / "in"
    (src / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    crop(data_dir, "kodak24", 0, (300, 200, 396, 264)).save(src / "rgb.png")
    crop(data_dir, "set14", 2, (40, 40, 104, 88)).convert("L").save(src / "gray.png")
    rgb16 = np.asarray(crop(data_dir, "kodak24", 3, (100, 100, 164, 148)), dtype=np.uint16) * 257 + 77
    y, x = np.mgrid[:48, :64]
    alpha16 = ((x * 977 + y * 331) % 65536).astype(np.uint16)
    (src / "rgba16.png").write_bytes(imagecodecs.png_encode(np.dstack([rgb16, alpha16])))
    tifffile.imwrite(src / "sub" / "deep16.tif", rgb16, photometric="rgb")
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6  # rotate 90 clockwise when displayed
    exif[0x010F] = "KodakTestCam"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    crop(data_dir, "kodak24", 5, (0, 0, 80, 48)).save(src / "sub" / "rotated.jpg", quality=95,
                                                      exif=exif.tobytes(), icc_profile=icc)
    good = (src / "rgb.png").read_bytes()
    (src / "truncated.png").write_bytes(good[: len(good) // 2])
    (src / "fake.jpg").write_bytes(b"not a jpeg at all")
    (src / "bomb.png").write_bytes(_bomb_png(20000, 20000))
    (src / "tiny.png").write_bytes(_bomb_png(1, 1))
    (src / "notes.txt").write_text("stray file in the image folder\n")
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    out = root / "out"
    proc = run([*serpent_cmd, "deblur", str(src), str(root / "missing.png"), str(root / "empty"), "-r",
                "-o", str(out), "--weights", str(weights), "--device", "cpu", "--json"])
    return {"root": root, "src": src, "out": out, "proc": proc, "icc": icc, "alpha16": alpha16, "rgb16": rgb16}


def test_batch_exit_code_and_json(batch) -> None:
    proc = batch["proc"]
    assert proc.returncode == 1, proc.stderr.decode()
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    by_name = {Path(r["path"]).name: r for r in rows}
    assert set(by_name) == {"rgb.png", "gray.png", "rgba16.png", "deep16.tif", "rotated.jpg", "truncated.png",
                            "fake.jpg", "bomb.png", "tiny.png", "missing.png", "empty"}
    for name in ("rgb.png", "gray.png", "rgba16.png", "deep16.tif", "rotated.jpg"):
        row = by_name[name]
        assert row["status"] == "ok" and row["error"] is None and row["seconds"] > 0
        assert Path(row["output"]).is_file()
    assert by_name["rotated.jpg"]["size"] == [48, 80]  # width, height after the EXIF rotation
    for name in ("truncated.png", "fake.jpg", "bomb.png", "tiny.png", "missing.png", "empty"):
        assert by_name[name]["status"] == "failed" and by_name[name]["error"]
    # One schema: every line has the same keys, null where a field does not apply (README documents it).
    keys = {"path", "output", "size", "seconds", "status", "error", "model", "tile", "precision", "mode", "bit_depth"}
    assert all(set(row) == keys for row in rows), [sorted(row) for row in rows]
    assert by_name["missing.png"]["model"] is None and by_name["missing.png"]["bit_depth"] is None
    assert by_name["rgba16.png"]["model"] == "serpent-b" and by_name["rgba16.png"]["bit_depth"] == 16


def test_batch_each_failure_is_one_clear_line(batch) -> None:
    err = batch["proc"].stderr.decode()
    assert "Traceback" not in err
    lines = err.splitlines()
    expected = {
        "truncated.png": "truncated",
        "fake.jpg": "not an image",
        "bomb.png": "SERPENT_MAX_PIXELS=",
        "tiny.png": "too small",
        "missing.png": "no such file",
        "empty": "no images",
    }
    for name, phrase in expected.items():
        hits = [line for line in lines if line.startswith("error:") and name in line]
        assert len(hits) == 1 and phrase in hits[0], (name, hits)
    assert any(line.startswith("warning:") and "notes.txt" in line for line in lines)
    assert not any(".DS_Store" in line for line in lines)
    assert "deblurred 5 images, 6 failed" in err
    assert "━" not in err  # no progress bar when stderr is not a terminal


def test_batch_tree_mirrored_nothing_half_written(batch) -> None:
    out = batch["out"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert files == ["gray.png", "rgb.png", "rgba16.png", "sub", "sub/deep16.tif", "sub/rotated.jpg"]


def test_batch_fidelity(batch) -> None:
    out = batch["out"]
    with Image.open(out / "gray.png") as img:
        assert img.mode == "L" and img.size == (64, 48)
    rgba = imagecodecs.png_decode((out / "rgba16.png").read_bytes())
    assert rgba.dtype == np.uint16 and rgba.shape == (48, 64, 4)
    assert np.array_equal(rgba[..., 3], batch["alpha16"])  # alpha untouched, bit for bit
    assert not np.array_equal(rgba[..., :3], batch["rgb16"])  # the colour went through the network
    assert len(np.unique(rgba[..., :3] % 257)) > 1  # real 16-bit values, not 8-bit ones scaled
    deep = tifffile.imread(out / "sub" / "deep16.tif")
    assert deep.dtype == np.uint16 and deep.shape == (48, 64, 3)
    with Image.open(out / "sub" / "rotated.jpg") as img:
        assert img.size == (48, 80)
        assert img.getexif()[ORIENTATION_TAG] == 1 and img.getexif()[0x010F] == "KodakTestCam"
        assert img.info["icc_profile"] == batch["icc"]


@pytest.mark.usefixtures("one_thread")
def test_batch_16_bit_outputs_keep_16_bit_precision(batch, weights: Path) -> None:
    """The 16-bit PNG and TIFF hold the network's output to within 1-2 of 65535, not to 1/255.

    The same picture restored in this process (same weights, whole image as the CLI's auto tile chose) and
    quantised to 16 bits is the reference; an 8-bit step anywhere in the pipeline would put errors of up to
    128 units here.
    """
    from serpent_cli.hub.weights import load_model

    restorer = Restorer(load_model(weights), torch.device("cpu"))
    for source, output in (("rgba16.png", "rgba16.png"), ("sub/deep16.tif", "sub/deep16.tif")):
        pic = read_picture(batch["src"] / source)
        assert pic.bit_depth == 16
        restored, report = restorer.restore(pic)
        assert report.tile == 0
        want = np.round(np.clip(restored.pixels[..., :3], 0, 1) * 65535).astype(np.int64)
        path = batch["out"] / output
        got = (imagecodecs.png_decode(path.read_bytes()) if path.suffix == ".png" else tifffile.imread(path))
        err = np.abs(got[..., :3].astype(np.int64) - want)
        assert err.max() <= 2, (output, int(err.max()))
        coarse = np.abs(np.round(want / 257) * 257 - want)  # what an 8-bit detour would cost
        assert coarse.max() > 100 and coarse.mean() > 30 * max(err.mean(), 1e-3)


def test_existing_outputs_skip_and_overwrite(batch, weights: Path, serpent_cmd: list[str]) -> None:
    src, root = batch["src"], batch["root"]
    target = root / "single.png"
    target.write_bytes(b"keep me")
    base = [*serpent_cmd, "deblur", str(src / "rgb.png"), "-o", str(target), "--weights", str(weights), "--json"]
    refused = run(base)
    assert refused.returncode == 1 and b"--overwrite" in refused.stderr and target.read_bytes() == b"keep me"
    skipped = run([*base, "--skip-existing"])
    assert skipped.returncode == 0 and json.loads(skipped.stdout)["status"] == "skipped"
    assert target.read_bytes() == b"keep me"
    replaced = run([*base, "--overwrite", "--tile", "64", "--tile-overlap", "16"])
    assert replaced.returncode == 0, replaced.stderr.decode()
    row = json.loads(replaced.stdout)
    assert row["tile"] == 64
    with Image.open(target) as img:
        assert img.size == (96, 64)
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


def test_stdin_to_stdout(batch, weights: Path, serpent_cmd: list[str]) -> None:
    src = batch["src"]
    proc = run([*serpent_cmd, "deblur", "-", "--weights", str(weights)], stdin=(src / "gray.png").read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()
    with Image.open(io.BytesIO(proc.stdout)) as img:
        assert img.format == "PNG" and img.mode == "L" and img.size == (64, 48)


def test_image_data_is_never_written_to_a_terminal(batch, weights: Path, serpent_cmd: list[str]) -> None:
    """As gzip: stdout on a terminal gets one error line on stderr, exit 2, and not a byte of image."""
    src = batch["src"]
    for args in (["-"], ["-", "-o", "-"], [str(src / "gray.png"), "-o", "-"]):
        master, slave = pty.openpty()
        try:
            with (src / "gray.png").open("rb") as stdin:
                proc = subprocess.run([*serpent_cmd, "deblur", *args, "--weights", str(weights)], stdin=stdin,
                                      stdout=slave, stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"},
                                      timeout=120)
            os.set_blocking(master, False)
            try:
                written = os.read(master, 1 << 16)
            except (BlockingIOError, OSError):
                written = b""
        finally:
            os.close(master)
            os.close(slave)
        err = proc.stderr.decode()
        assert proc.returncode == 2, err
        assert err.strip().splitlines() == [
            "error: image data not written to a terminal; redirect stdout (> out.png) or pass -o FILE"
        ]
        assert written == b""


def test_usage_errors_exit_2(batch, weights: Path, serpent_cmd: list[str], tmp_path: Path) -> None:
    src = batch["src"]
    cases = [
        (["--tile", "7"], "--tile"),
        ([str(src / "gray.png"), "-o", str(tmp_path / "one.png")], "names one file"),
    ]
    for extra, phrase in cases:
        proc = run([*serpent_cmd, "deblur", str(src / "rgb.png"), "--weights", str(weights), *extra])
        err = proc.stderr.decode()
        assert proc.returncode == 2 and phrase in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) == 1


def test_default_model_glob_and_name_template(batch, weights: Path, serpent_cmd: list[str], tmp_path: Path) -> None:
    """No --model: the first bundled variant is used; none bundled is one line, exit 2."""
    work = tmp_path / "beside"
    work.mkdir()
    shutil.copy(batch["src"] / "rgb.png", work / "photo.png")
    folder = tmp_path / "no-weights"
    folder.mkdir()
    env = {"SERPENT_WEIGHTS_DIR": str(folder)}
    cmd = [*serpent_cmd, "deblur", str(work / "*.png"), "--name", "{stem}{suffix}-{model}.webp", "--json"]
    proc = run(cmd, env=env)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "serpent-l.safetensors" in err and "--weights" in err
    assert len(err.strip().splitlines()) == 1 and sorted(p.name for p in work.iterdir()) == ["photo.png"]
    shutil.copy(weights, folder / "serpent-b.safetensors")
    proc = run(cmd, env=env)  # a folder of weights stands in for the bundled one: the registry pin applies
    assert proc.returncode == 1 and "does not match the registered serpent-b" in proc.stderr.decode()
    registry = tmp_path / "registry.json"  # register this file's hash, as a user does for their own weights
    registry.write_text(json.dumps({"serpent-b": {"sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}}))
    env["SERPENT_REGISTRY"] = str(registry)
    proc = run(cmd, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["model"] == "serpent-b"
    assert sorted(p.name for p in work.iterdir()) == ["photo.png", "photo_deblurred-serpent-b.webp"]
    assert "model:" not in proc.stderr.decode()  # no model for photos here to point to
    # With the photo model at hand, a run on the default names it (once); an explicit --model does not.
    shutil.copy(bundled_weights_dir() / "serpent-l-blind.safetensors", folder)
    proc = run([*cmd, "--overwrite"], env=env)
    notes = [line for line in proc.stderr.decode().splitlines() if line.startswith("model:")]
    assert proc.returncode == 0 and notes == [
        "model: serpent-b, made for the benchmark blur (Gaussian sigma 3 + noise 0.05); "
        "for everyday photos: --model serpent-l-blind"], proc.stderr.decode()
    proc = run([*cmd, "--overwrite", "--model", "serpent-b"], env=env)
    assert proc.returncode == 0 and "model:" not in proc.stderr.decode()


class _Overflows(torch.nn.Module):
    """Finite in fp32, inf under fp16 autocast (the fp16 black-output failure, made certain)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Conv2d(3, 3, 1, bias=False)
        torch.nn.init.constant_(self.up.weight, 1e5)  # above the fp16 maximum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(x) / 1e6


@pytest.mark.usefixtures("one_thread")
def test_reduced_precision_falls_back_to_fp32(data_dir: Path) -> None:
    img = crop(data_dir, "kodak24", 1, (0, 0, 64, 48))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    restorer = Restorer(_Overflows(), torch.device("cpu"), torch.float16, tile=0)
    report = RestoreReport()
    y = restorer.restore_tensor(x, report)
    assert report.precision == "fp32" and "fp32" in report.warnings[0]
    assert torch.isfinite(y).all()
    assert torch.allclose(y, x + 0.1 * x.sum(1, keepdim=True), atol=1e-4)


def test_grayscale_restore_keeps_alpha(data_dir: Path, tmp_path: Path) -> None:
    img = crop(data_dir, "set14", 0, (0, 0, 40, 32)).convert("LA")
    img.putalpha(Image.linear_gradient("L").resize((40, 32)))
    img.save(tmp_path / "la.png")
    pic = read_picture(tmp_path / "la.png")
    restored, _ = Restorer(torch.nn.Identity(), torch.device("cpu"), tile=0).restore(pic)
    assert restored.mode == "LA" and np.array_equal(restored.alpha, pic.alpha)
    assert np.allclose(restored.pixels, pic.pixels, atol=1e-6)  # identity net: gray in, same gray out


def test_first_run_says_it_compiles_the_kernels(serpent_cmd: list[str], data_dir: Path, weights: Path,
                                                tmp_path: Path, empty_numba_cache: NumbaCache) -> None:
    """With an empty per-user cache the first deblur announces the one-time compile (it takes seconds); the
    next run, loading from the cache, does not."""
    crop(data_dir, "kodak24", 3, (100, 100, 164, 148)).save(tmp_path / "in.png")
    env = empty_numba_cache.env
    said, notices = [], []
    for name in ("a.png", "b.png"):
        done = subprocess.run([*serpent_cmd, "deblur", str(tmp_path / "in.png"), "-o", str(tmp_path / name),
                               "--weights", str(weights), "--threads", "1"],
                              capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr
        said.append("compiling the CPU scan kernels" in done.stderr)
        notices.append(done.stderr)
    assert said == [True, False]
    assert str(empty_numba_cache.folder) in notices[0]  # the notice names the cache folder
