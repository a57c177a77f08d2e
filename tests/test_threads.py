"""Thread counts: the default shares the cores among running serpent processes; --threads reaches torch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from deblur_helpers import crop, make_weights

from serpent_cli.threads import available_cores

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="lock files need fcntl")

# A stand-in for a running serpent process: registers, says so, and holds its lock until stdin closes.
_HOLDER = (
    "import sys; from serpent_cli.threads import register_process\n"
    "assert register_process(); print('ready', flush=True); sys.stdin.read()\n"
)
# What a new process would choose now (it registers itself too), and how many it counted.
_ASK = (
    "from serpent_cli.threads import default_threads, running_processes\n"
    "print(default_threads(), running_processes())\n"
)


def _env(runtime: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    return {**env, "XDG_RUNTIME_DIR": str(runtime), "NO_COLOR": "1", **extra}


def _ask(runtime: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _ASK], capture_output=True, text=True, env=_env(runtime),
                         timeout=60, check=True)
    threads, count = out.stdout.split()
    return int(threads), int(count)


def _start_holder(runtime: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=_env(runtime))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_default_divides_the_cores_among_running_processes(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    cores = available_cores()
    assert _ask(runtime) == (cores, 1)  # alone
    holders = [_start_holder(runtime) for _ in range(3)]
    try:
        assert _ask(runtime) == (max(1, cores // 4), 4)  # three holders and the asking process
        holders[0].send_signal(signal.SIGKILL)  # dies without cleaning up: its file stays, unlocked
        holders[0].wait(timeout=30)
        (runtime / "serpent" / "12345-deadbeef.lock").write_bytes(b"")  # a crashed process's leftover
        assert len(list((runtime / "serpent").glob("*.lock"))) == 4
        assert _ask(runtime) == (max(1, cores // 3), 3)
        # Stale files were removed by the counting; the two live holders' files remain.
        assert len(list((runtime / "serpent").glob("*.lock"))) == 2
    finally:
        for proc in holders:
            proc.kill()
            proc.wait(timeout=30)
    assert _ask(runtime) == (cores, 1)
    assert not list((runtime / "serpent").glob("*.lock"))


@pytest.mark.parametrize(
    ("threads", "omp", "expected"),
    [(1, None, 1), (0, "1", 1), (2, "1", 2), (0, None, None)],
    ids=["explicit", "OMP_NUM_THREADS", "explicit beats OMP_NUM_THREADS", "default"],
)
def test_precedence(tmp_path: Path, threads: int, omp: str | None, expected: int | None) -> None:
    code = (f"import torch; from serpent_cli.threads import apply_threads, worker_threads\n"
            f"assert worker_threads() == 1\n"  # nothing set yet: work outside torch stays on one thread
            f"n = apply_threads({threads}); print(n, torch.get_num_threads(), worker_threads())\n")
    env = _env(tmp_path, **({"OMP_NUM_THREADS": omp} if omp else {}))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    got, torch_has, workers = map(int, out.stdout.split())
    assert got == torch_has == workers == (expected or available_cores())


def test_deblur_threads_reach_torch(serpent_cmd: list[str], data_dir: Path, tmp_path: Path) -> None:
    weights = make_weights(tmp_path / "w.safetensors")
    crop(data_dir, "kodak24", 0, (300, 200, 364, 248)).save(tmp_path / "in.png")
    env = _env(tmp_path, OMP_NUM_THREADS="2")
    proc = subprocess.run([*serpent_cmd, "-v", "deblur", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"),
                           "--weights", str(weights), "--threads", "1"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "threads: 1" in proc.stderr
    bad = subprocess.run([*serpent_cmd, "deblur", str(tmp_path / "in.png"), "--threads", "-2"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "--threads -2" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
