"""`serpent train`: real subprocess runs on crops of real photos (tiny crops, few steps)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from serpent_cli.factory import create_model
from serpent_cli.hub.weights import load_model
from serpent_cli.training.loop import load_state, state_files

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def small_train(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve real photos in a nested folder (recursion), plus stray files that must be skipped."""
    root = tmp_path_factory.mktemp("train-data")
    photos = sorted((data_dir / "natural-train").iterdir())[:12]
    for i, p in enumerate(photos):
        dest = root / ("sub" if i % 2 else "") / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
    (root / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    return root


def _train(cmd: list[str], data: Path, out: Path, *extra: str, check: bool = True,
           timeout: float = 300) -> subprocess.CompletedProcess:
    args = [*cmd, "train", str(data), "--crop", "32", "--batch-size", "2", "--out", str(out), "--log-every", "1",
            *extra]
    proc = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "log.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_writes_loadable_weights_states_and_log(serpent_cmd: list[str], small_train: Path,
                                                      tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _train(serpent_cmd, small_train, run, "--model", "serpent-b", "--steps", "4", "--save-every", "2")
    assert "skipped 2 file(s)" in proc.stderr and "notes.txt" in proc.stderr and "broken.jpg" in proc.stderr
    assert "12 images, benchmark degradation" in proc.stderr
    assert "Traceback" not in proc.stderr
    model = create_model("serpent-b", weights=run / "model.safetensors")
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    assert [s for s, _ in state_files(run)] == [4, 2]
    assert [int(r["step"]) for r in _rows(run)] == [1, 2, 3, 4]
    assert all(float(r["loss"]) > 0 for r in _rows(run))
    # The EMA weights in model.safetensors equal the state's EMA tensors.
    ema = load_state(run / "checkpoints" / "state-00000004.pt")["ema"]
    saved = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(saved[k], ema[k]) for k in saved)


@pytest.mark.parametrize("model", ["unet-32", "serpent-b"])  # serpent-b: the scan's custom autograd too
def test_resume_is_exactly_an_uninterrupted_run(serpent_cmd: list[str], small_train: Path, tmp_path: Path,
                                                model: str) -> None:
    """4 steps straight == 2 steps, then --resume to 4: same weights bit for bit (same data, RNG, optimiser)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ("--model", model, "--save-every", "2", "--lr", "1e-3")
    _train(serpent_cmd, small_train, straight, *common, "--steps", "4")
    _train(serpent_cmd, small_train, split, *common, "--steps", "2")
    proc = _train(serpent_cmd, small_train, split, *common, "--steps", "4", "--resume")
    assert "resuming at step 2" in proc.stderr
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [int(r["step"]) for r in _rows(split)] == [1, 2, 3, 4]


def test_sigkill_then_resume_continues_from_last_saved_step(serpent_cmd: list[str], small_train: Path,
                                                            tmp_path: Path) -> None:
    run = tmp_path / "killed"
    args = [*serpent_cmd, "train", str(small_train), "--model", "serpent-b", "--crop", "32", "--batch-size", "1",
            "--steps", "1000", "--save-every", "2", "--keep", "2", "--log-every", "1", "--out", str(run)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            saved = [s for s, _ in state_files(run)]
            if saved and max(saved) >= 6:
                break
            time.sleep(0.05)
        else:
            pytest.fail("training never wrote a checkpoint at step 6")
        time.sleep(0.3)  # land somewhere mid-step / mid-write
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = state_files(run)
    last = saved[0][0]
    assert last >= 6
    for step, path in saved:  # every finished checkpoint is intact
        assert load_state(path)["step"] == step
        load_model(run / "checkpoints" / f"step-{step:08d}.safetensors")
    load_model(run / "model.safetensors")

    resumed = _train(serpent_cmd, small_train, run, "--model", "serpent-b", "--batch-size", "1",
                     "--steps", str(last + 2), "--save-every", "2", "--keep", "2", "--resume")
    assert f"resuming at step {last}" in resumed.stderr
    assert state_files(run)[0][0] == last + 2
    assert load_state(state_files(run)[0][1])["step"] == last + 2
    steps = [int(r["step"]) for r in _rows(run)]
    assert steps == list(range(1, last + 3))  # rows logged after the last checkpoint were dropped, no gaps
    assert not list(run.rglob(".*.tmp"))  # temporaries of the killed run were cleaned up


def test_sigterm_saves_the_current_step_and_exits_130(serpent_cmd: list[str], small_train: Path,
                                                     tmp_path: Path) -> None:
    """A scheduler's SIGTERM (or Ctrl-C) finishes the step, saves a state there, and says how to go on."""
    run = tmp_path / "stopped"
    args = [*serpent_cmd, "train", str(small_train), "--model", "unet-32", "--crop", "32", "--steps", "100000",
            "--save-every", "3", "--out", str(run)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while not state_files(run) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "state saved; continue with --resume" in err and "Traceback" not in err
    step = int(err.split("stopped at step ")[1].split(":")[0])
    assert state_files(run)[0][0] == step and load_state(state_files(run)[0][1])["step"] == step


def _free_port() -> int:
    """A TCP port nobody listens on now (a fixed one collides with parallel test runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("model", ["unet-32", "serpent-b"])  # serpent-b: the scan's custom autograd under DDP
def test_two_process_torchrun_gloo_matches_one_process(serpent_cmd: list[str], small_train: Path,
                                                       tmp_path: Path, model: str) -> None:
    """2 ranks x batch 1 see the samples 1 process x batch 2 sees; DDP averages grads -> same weights."""
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    common = ["train", str(small_train), "--model", model, "--crop", "32", "--steps", "3", "--save-every", "3",
              "--lr", "1e-3", "--device", "cpu"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(_free_port()), "-m", "serpent_cli", *common, "--batch-size", "1",
                           "--out", str(ddp)], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch 1x2" in proc.stderr
    assert proc.stderr.count("done: step 3") == 1  # only rank 0 reports
    _train(serpent_cmd, small_train, single, "--model", model, "--steps", "3", "--save-every", "3",
           "--lr", "1e-3", "--device", "cpu")
    a, b = load_file(str(ddp / "model.safetensors")), load_file(str(single / "model.safetensors"))
    torch.manual_seed(0)  # the run's own initialisation (--seed 0)
    init = create_model(model).state_dict()
    moved = max(float((a[k] - init[k]).abs().max()) for k in a)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 1e-3 and diff < 1e-5


def test_bad_inputs_are_one_clear_line(serpent_cmd: list[str], small_train: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    cases = [
        ([str(tmp_path / "missing")], "data folder not found"),
        ([str(empty)], "no readable images"),
        ([str(small_train), "--model", "resnet-50"], "not trainable"),
        ([str(small_train), "--crop", "0"], "--crop must be >= 1"),
        ([str(small_train), "--lr", "3"], "--lr must be in"),
        ([str(small_train), "--precision", "fp16", "--device", "cpu"], "fp16"),
    ]
    for args, message in cases:
        proc = subprocess.run([*serpent_cmd, "train", *args, "--out", str(tmp_path / "never")], capture_output=True,
                              text=True, env=ENV, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_existing_run_is_never_clobbered(serpent_cmd: list[str], small_train: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train(serpent_cmd, small_train, run, "--model", "unet-32", "--steps", "2", "--save-every", "2")
    before = (run / "model.safetensors").read_bytes()
    again = _train(serpent_cmd, small_train, run, "--model", "unet-32", "--steps", "2", check=False)
    assert again.returncode == 2 and "pass --resume" in again.stderr and "Traceback" not in again.stderr
    wrong = _train(serpent_cmd, small_train, run, "--model", "serpent-b", "--steps", "3", "--resume", check=False)
    assert wrong.returncode == 2 and "trains unet-32, not serpent-b" in wrong.stderr
    assert (run / "model.safetensors").read_bytes() == before


def test_the_degradation_follows_the_model_and_a_resume_keeps_it(serpent_cmd: list[str], small_train: Path,
                                                                 tmp_path: Path) -> None:
    """Fine-tuning the photo model learns the blind family unasked; --resume never switches degradation."""
    run = tmp_path / "photos"
    proc = _train(serpent_cmd, small_train, run, "--model", "serpent-l-blind", "--steps", "1", "--save-every", "1")
    assert "12 images, blind degradation" in proc.stderr
    assert json.loads((run / "run.json").read_text())["degradation"] == "blind"
    before = (run / "model.safetensors").read_bytes()
    wrong = _train(serpent_cmd, small_train, run, "--model", "serpent-l-blind", "--steps", "2", "--resume",
                   "--degradation", "benchmark", check=False)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip().splitlines() == [
        f"error: {run} trains under the blind degradation, not benchmark; pass --degradation blind to resume it, "
        "or choose another --out"], wrong.stderr
    assert (run / "model.safetensors").read_bytes() == before
    again = _train(serpent_cmd, small_train, run, "--model", "serpent-l-blind", "--steps", "2", "--resume")
    assert "blind degradation" in again.stderr and "resuming at step 1" in again.stderr


def test_small_images_are_padded_and_corrupt_ones_skipped(serpent_cmd: list[str], data_dir: Path,
                                                          tmp_path: Path) -> None:
    from PIL import Image

    data = tmp_path / "tiny"
    data.mkdir()
    with Image.open(data_dir / "natural-val" / "sunhays80_img_001.png") as img:
        img.crop((0, 0, 20, 24)).save(data / "tiny.png")
    jpeg = sorted((data_dir / "natural-train").glob("*.jpg"))[0].read_bytes()
    (data / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])  # header fine, pixels cut off
    run = tmp_path / "run"
    proc = _train(serpent_cmd, data, run, "--model", "unet-32", "--steps", "2", "--save-every", "2")
    assert "smaller than --crop 32" in proc.stderr
    assert "skipping unreadable image" in proc.stderr and "truncated.jpg" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (run / "model.safetensors").is_file()


@pytest.mark.slow
def test_serpent_b_learns_to_beat_the_degraded_input(serpent_cmd: list[str], data_dir: Path, tmp_path: Path) -> None:
    """A few hundred CPU steps on small crops: validation PSNR climbs above the degraded input's."""
    run = tmp_path / "learn"
    _train(serpent_cmd, data_dir / "natural-train", run, "--model", "serpent-b", "--batch-size", "4", "--lr", "1e-3",
           "--steps", "300", "--val", str(data_dir / "natural-val"), "--val-every", "100", "--val-crop", "128",
           "--save-every", "300", "--log-every", "50", timeout=1800)  # ~150 s of CPU; the machine may be busy
    val = [r for r in _rows(run) if r["val_psnr"]]
    first, last = val[0], val[-1]
    print(" ".join(f"step {r['step']}: val {float(r['val_psnr']):.2f} dB / degraded {float(r['val_psnr_degraded']):.2f}"
                   for r in val))
    assert int(first["step"]) == 0 and int(last["step"]) == 300
    assert float(last["val_psnr"]) > float(first["val_psnr"]) + 1.0
    assert float(last["val_psnr"]) > float(last["val_psnr_degraded"]) + 0.2
    assert float(last["val_ssim"]) > float(last["val_ssim_degraded"])
    assert (run / "best.safetensors").is_file()
