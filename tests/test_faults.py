"""Faults around real runs: full disks, read-only folders, signals, concurrent writers, damaged checkpoints,
and a rank failing alone under distributed training.  Real photos, real subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from deblur_helpers import crop, make_weights
from PIL import Image

from serpent_cli.hub.weights import load_model
from serpent_cli.training.loop import load_state, state_digest, state_files

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("weights") / "w.safetensors")


def _photos(data_dir: Path, folder: Path, sizes: list[int]) -> list[str]:
    """Square crops of real photos, one per size, named 0.png, 1.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, side in enumerate(sizes):
        crop(data_dir, "kodak24", i, (0, 0, side, side)).save(folder / f"{i}.png")
    return [f"{i}.png" for i in range(len(sizes))]


def _fully_decodes(path: Path) -> bool:
    with Image.open(path) as img:
        img.load()
    return True


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def _limited(fsize: int) -> Callable[[], None]:
    """For a child: writes beyond ``fsize`` bytes fail with EFBIG (SIGXFSZ ignored, or it would kill the child)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return apply


@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``where`` (root only); skips the test where this machine does not allow it."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the RLIMIT_FSIZE variant covers write failures here")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _deblur(cmd: list[str], src: Path, out: Path, weights: Path, *extra: str,
            preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    args = [*cmd, "deblur", str(src), "-o", str(out), "--weights", str(weights), "--device", "cpu", "--tile", "0",
            *extra]
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300, preexec_fn=preexec)


def _check_failed_writes(proc: subprocess.CompletedProcess[str], out: Path, names: list[str], reason: str,
                         earlier: dict[str, bytes]) -> list[str]:
    """Exit 1, one error line per failed file naming the reason, complete outputs only, earlier ones intact."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    failed = [n for n in names if any(f"{n}: cannot write" in line for line in errors)]
    assert failed and len(errors) == len(failed), proc.stderr
    assert all(reason in line for line in errors), errors
    for name in names:
        target = out / name
        if name in earlier:
            assert target.read_bytes() == earlier[name]
        elif name in failed:
            assert not target.exists()
        else:
            assert _fully_decodes(target)
    assert not _leftovers(out), _leftovers(out)
    return failed


# ----------------------------------------------------------------------------- 2. disk full, read-only


def test_disk_full_on_a_small_tmpfs(data_dir: Path, tmp_path: Path, weights: Path, serpent_cmd: list[str]) -> None:
    names = _photos(data_dir, tmp_path / "in", [256] * 8)
    with _tmpfs(tmp_path / "mnt", "1m") as mnt:
        out = mnt / "out"
        out.mkdir()
        earlier = {"0.png": b"earlier output, must survive"}
        (out / "0.png").write_bytes(earlier["0.png"])
        proc = _deblur(serpent_cmd, tmp_path / "in", out, weights, "--skip-existing")
        failed = _check_failed_writes(proc, out, names, "No space left on device", earlier)
        assert 0 < len(failed) < 7  # some fitted before the disk filled up


def test_file_size_limit_makes_writes_fail(data_dir: Path, tmp_path: Path, weights: Path,
                                           serpent_cmd: list[str]) -> None:
    """Where no tmpfs can be mounted: RLIMIT_FSIZE makes big writes fail (EFBIG) and small ones succeed."""
    names = _photos(data_dir, tmp_path / "in", [64, 256, 64, 256])
    out = tmp_path / "out"
    out.mkdir()
    earlier = {"1.png": b"earlier output, must survive"}
    (out / "1.png").write_bytes(earlier["1.png"])
    proc = _deblur(serpent_cmd, tmp_path / "in", out, weights, "--skip-existing", preexec=_limited(60_000))
    assert _check_failed_writes(proc, out, names, "File too large", earlier) == ["3.png"]


def test_read_only_output_folder(data_dir: Path, tmp_path: Path, weights: Path, serpent_cmd: list[str]) -> None:
    names = _photos(data_dir, tmp_path / "in", [64, 64, 64])
    earlier = {"2.png": b"earlier output, must survive"}
    if os.geteuid() == 0:  # chmod does not stop root: a read-only mount does
        with _tmpfs(tmp_path / "mnt", "4m") as mnt:
            out = mnt / "out"
            out.mkdir()
            (out / "2.png").write_bytes(earlier["2.png"])
            remount = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
            if remount.returncode != 0:
                pytest.skip(f"cannot remount read-only here: {remount.stderr.decode().strip()}")
            proc = _deblur(serpent_cmd, tmp_path / "in", out, weights, "--skip-existing")
            _check_failed_writes(proc, out, names, "Read-only file system", earlier)
            assert sorted(p.name for p in out.iterdir()) == ["2.png"]
    else:
        out = tmp_path / "out"
        out.mkdir()
        (out / "2.png").write_bytes(earlier["2.png"])
        out.chmod(0o555)
        try:
            proc = _deblur(serpent_cmd, tmp_path / "in", out, weights, "--skip-existing")
            _check_failed_writes(proc, out, names, "Permission denied", earlier)
        finally:
            out.chmod(0o755)


def _train(cmd: list[str], data: Path, out: Path, *extra: str, preexec: Callable[[], None] | None = None,
           env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    args = [*cmd, "train", str(data), "--crop", "32", "--batch-size", "1", "--out", str(out), "--device", "cpu",
            *extra]
    return subprocess.run(args, capture_output=True, text=True, env=env or ENV, timeout=timeout, preexec_fn=preexec)


@pytest.fixture(scope="module")
def train_data(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    for i in range(4):
        crop(data_dir, "kodak24", i, (100, 100, 164, 164)).save(root / f"{i}.png")
    return root


def test_failed_checkpoint_write_keeps_the_previous_one(train_data: Path, tmp_path: Path,
                                                        serpent_cmd: list[str]) -> None:
    run_dir = tmp_path / "run"
    common = ("--model", "serpent-b", "--save-every", "2")
    assert _train(serpent_cmd, train_data, run_dir, *common, "--steps", "2").returncode == 0
    model_before = (run_dir / "model.safetensors").read_bytes()
    # The 11 MB weights fit under the limit, the 45 MB training state does not.
    proc = _train(serpent_cmd, train_data, run_dir, *common, "--steps", "4", "--resume", preexec=_limited(20 * MiB))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot write the checkpoint of step 4" in errors[0], proc.stderr
    assert "File too large" in errors[0] and "the checkpoint of step 2 is intact" in errors[0]
    assert [s for s, _ in state_files(run_dir)] == [2]
    assert load_state(state_files(run_dir)[0][1])["step"] == 2
    assert (run_dir / "model.safetensors").read_bytes() == model_before
    load_model(run_dir / "model.safetensors")
    assert not (run_dir / "checkpoints" / "step-00000004.safetensors").exists()
    assert not _leftovers(run_dir), _leftovers(run_dir)
    again = _train(serpent_cmd, train_data, run_dir, *common, "--steps", "4", "--resume")
    assert again.returncode == 0 and "resuming at step 2" in again.stderr, again.stderr
    assert state_files(run_dir)[0][0] == 4


# ----------------------------------------------------------------------------- 3. signals


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_during_a_folder_leaves_complete_outputs_only(data_dir: Path, tmp_path: Path, weights: Path,
                                                             serpent_cmd: list[str], sig: int, code: int) -> None:
    names = _photos(data_dir, tmp_path / "in", [256] * 8)
    out = tmp_path / "out"
    args = [*serpent_cmd, "deblur", str(tmp_path / "in"), "-o", str(out), "--weights", str(weights),
            "--device", "cpu", "--tile", "0"]
    # SIGINT at its default disposition in the child: a shell ignores it for background jobs (`cmd &`, nohup),
    # children inherit that, and Python then never turns it into KeyboardInterrupt: the test ran under such a shell.
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (out / "0.png").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert (out / "0.png").exists(), "no output appeared"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    if sig == signal.SIGTERM:
        assert err.strip().splitlines() == ["error: terminated"], err
    done = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert 1 <= len(done) < len(names)
    assert all(_fully_decodes(out / name) for name in done)
    assert not _leftovers(out), _leftovers(out)
    rest = _deblur(serpent_cmd, tmp_path / "in", out, weights, "--skip-existing", "--json")
    assert rest.returncode == 0, rest.stderr
    statuses = {Path(r["path"]).name: r["status"] for r in map(json.loads, rest.stdout.splitlines())}
    assert statuses == {n: ("skipped" if n in done else "ok") for n in names}
    assert all(_fully_decodes(out / name) for name in names)


# ----------------------------------------------------------------------------- 5. two writers at once


def test_two_concurrent_runs_into_one_folder_publish_each_output_once(data_dir: Path, tmp_path: Path,
                                                                      weights: Path, serpent_cmd: list[str]) -> None:
    names = _photos(data_dir, tmp_path / "in", [96] * 6)
    out = tmp_path / "out"
    args = [*serpent_cmd, "deblur", str(tmp_path / "in"), "-o", str(out), "--weights", str(weights),
            "--device", "cpu", "--skip-existing", "--json"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in results]
    rows = [json.loads(line) for out_text, _ in results for line in out_text.splitlines()]
    ok = sorted(Path(r["path"]).name for r in rows if r["status"] == "ok")
    assert ok == names  # every output published by exactly one of the two runs; the other skipped it
    assert sum(r["status"] == "skipped" for r in rows) == len(names)
    assert sorted(p.name for p in out.iterdir()) == names
    assert all(_fully_decodes(out / name) for name in names)


# ----------------------------------------------------------------------------- 4. damaged checkpoints


def _flip_inside_largest_tensor(path: Path) -> None:
    """Flip one bit in the middle of the biggest tensor record of a torch zip file (not in its metadata)."""
    with zipfile.ZipFile(path) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_resume_skips_a_damaged_latest_checkpoint(train_data: Path, tmp_path: Path, serpent_cmd: list[str],
                                                  damage: str) -> None:
    run_dir = tmp_path / "run"
    common = ("--model", "unet-32", "--save-every", "2", "--keep", "3")
    assert _train(serpent_cmd, train_data, run_dir, *common, "--steps", "4").returncode == 0
    latest = run_dir / "checkpoints" / "state-00000004.pt"
    if damage == "truncated":
        latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    else:
        _flip_inside_largest_tensor(latest)
    proc = _train(serpent_cmd, train_data, run_dir, *common, "--steps", "6", "--resume")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "state-00000004.pt" in line]
    assert len(warnings) == 1 and "truncated or corrupt" in warnings[0], proc.stderr
    assert "resuming at step 2" in proc.stderr and "Traceback" not in proc.stderr
    assert [s for s, _ in state_files(run_dir)] == [6, 4, 2]  # step 4 redone, the damaged file set aside
    assert all(load_state(p)["step"] == s for s, p in state_files(run_dir))
    assert (run_dir / "checkpoints" / "state-00000004.pt.corrupt").exists()


# ----------------------------------------------------------------------------- 6. one rank fails alone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def diverging_run(data_dir: Path, tmp_path: Path, serpent_cmd: list[str]) -> tuple[Path, Path]:
    """A unet-32 run at step 1 whose first conv gates on brightness: a bright crop overflows to inf, a dark one
    does not.  With a real photo and a black image, exactly one of two ranks gets a non-finite loss next step."""
    data = tmp_path / "data"
    data.mkdir()
    crop(data_dir, "kodak24", 2, (200, 100, 264, 164)).save(data / "bright.png")
    Image.new("RGB", (64, 64)).save(data / "dark.png")
    run_dir = tmp_path / "run"
    assert _train(serpent_cmd, data, run_dir, "--model", "unet-32", "--steps", "1", "--save-every", "1",
                  "--ema", "0").returncode == 0
    path = state_files(run_dir)[0][1]
    state = load_state(path)
    model = state["model"]
    model["down.0.0.weight"] = torch.full_like(model["down.0.0.weight"], 1e30)
    model["down.0.0.bias"] = torch.full_like(model["down.0.0.bias"], -1e30 * 27 * 0.15)
    model["down.0.2.weight"] = torch.full_like(model["down.0.2.weight"], 1e30)
    state["digest"] = state_digest(state)
    torch.save(state, path)
    return data, run_dir


@pytest.mark.parametrize("launcher", ["processes", "torchrun"])
def test_a_rank_with_a_nonfinite_loss_stops_every_rank(diverging_run: tuple[Path, Path], serpent_cmd: list[str],
                                                       launcher: str) -> None:
    data, run_dir = diverging_run
    port = _free_port()
    train = ["train", str(data), "--model", "unet-32", "--crop", "32", "--batch-size", "1", "--steps", "6",
             "--save-every", "100", "--ema", "0", "--device", "cpu", "--resume", "--out", str(run_dir)]
    env = {**ENV, "SERPENT_DIST_TIMEOUT": "300"}
    start = time.monotonic()
    if launcher == "torchrun":
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                               "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "serpent_cli", *train],
                              capture_output=True, text=True, env=env, timeout=120)
        codes, err = [proc.returncode], proc.stderr
    else:  # two plain processes: no torchrun agent to kill a survivor, so a hang would really hang
        procs = [subprocess.Popen([*serpent_cmd, *train], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env=env | {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
                 for r in range(2)]
        try:
            errs = [p.communicate(timeout=120)[1] for p in procs]
        finally:
            for p in procs:
                p.kill()
        codes, err = [p.returncode for p in procs], errs[0]
        assert codes[1] == 0 and "error:" not in errs[1], errs[1]  # rank 0 reports; rank 1 stops quietly
    assert time.monotonic() - start < 120
    assert codes[0] != 0
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "training diverged at step 2" in lines[0] and "rank " in lines[0], err[-3000:]
    assert "Traceback" not in err or launcher == "torchrun"  # torchrun adds its own failure report
