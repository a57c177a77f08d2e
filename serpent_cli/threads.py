"""How many CPU threads one `serpent` process should use, so that several at once do not oversubscribe.

DESIGN.md section 3: with default threads and one competing CPU-bound process, the torch scan's many
short parallel regions made a deblur 35x slower than with one thread.  So the default is the cores this
process may use, divided among the `serpent` processes of this user running right now.

How "running right now" is counted: each process that calls :func:`apply_threads` holds an
``fcntl.flock`` on its own file in a per-user folder (``$XDG_RUNTIME_DIR/serpent``, else the user's
cache folder) until it exits; the kernel drops the lock when the process dies, however it dies.  A
file whose lock can be taken belongs to a dead process: it is not counted, and it is removed.  Where
there is no ``fcntl`` (Windows) the default is simply the cores.

Precedence: an explicit ``--threads N`` (N > 0), then ``OMP_NUM_THREADS`` when the user set it, then
the shared default.  ``torch.set_num_interop_threads`` is left alone: it may not be called once any
parallel work has started.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
from pathlib import Path
from typing import IO

from serpent_cli.errors import UsageError

_LOCK_SUFFIX = ".lock"
_own_lock: IO[bytes] | None = None  # kept open (and locked) for the life of the process
_applied = 0  # the count apply_threads set; 0 until it runs


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        with contextlib.suppress(OSError):
            return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def runtime_dir() -> Path:
    """The per-user folder of lock files: ``$XDG_RUNTIME_DIR/serpent``, else ``~/.cache/serpent/running``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "serpent"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "serpent" / "running"


def register_process() -> bool:
    """Hold a lock file for this process until it exits (idempotent); False where that is impossible.

    The file is locked under a temporary name and then renamed into place, so no other process can
    ever see it unlocked and take it for a dead one's.
    """
    global _own_lock
    if _own_lock is not None:
        return True
    try:
        import fcntl
    except ImportError:
        return False
    folder = runtime_dir()
    name = f"{os.getpid()}-{secrets.token_hex(4)}"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = open(folder / f"{name}.tmp", "wb")  # held open (locked) until the process exits
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(folder / f"{name}.tmp", folder / f"{name}{_LOCK_SUFFIX}")
    except OSError:
        return False  # read-only home, full disk: count without this process
    _own_lock = handle
    atexit.register(_unregister, folder / f"{name}{_LOCK_SUFFIX}")
    return True


def _unregister(path: Path) -> None:
    """At a normal exit, remove this process's file (after a kill, the next count removes it)."""
    with contextlib.suppress(OSError):
        path.unlink()


def running_processes() -> int:
    """How many processes hold their lock file now (this one included if registered); stale files go."""
    try:
        import fcntl
    except ImportError:
        return 1
    folder = runtime_dir()
    try:
        paths = list(folder.glob(f"*{_LOCK_SUFFIX}"))
    except OSError:
        return 1
    own = os.fstat(_own_lock.fileno()).st_ino if _own_lock is not None else None
    count = 0
    for path in paths:
        try:
            with open(path, "rb") as handle:
                inode = os.fstat(handle.fileno()).st_ino
                if inode == own:
                    count += 1
                    continue
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    count += 1  # a live process holds it
                    continue
                # Nobody holds it: its process is gone.  Remove it unless the name was reused meanwhile.
                with contextlib.suppress(OSError):
                    if os.stat(path).st_ino == inode:
                        path.unlink()
        except OSError:
            continue  # removed by another process while we looked
    return max(1, count)


def default_threads() -> int:
    """The cores this process may use, divided among the `serpent` processes running now (at least 1)."""
    if not register_process():
        return available_cores()
    return max(1, available_cores() // running_processes())


def _omp_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    try:
        n = int(value.split(",")[0])
    except ValueError:
        return None
    return n if n > 0 else None


def check_threads(n: int | None) -> None:
    """A negative ``--threads`` is a usage error (checked before anything heavy is imported)."""
    if n is not None and n < 0:
        raise UsageError(f"--threads {n}: use a positive count, or 0 for the default")


def apply_threads(n: int | None) -> int:
    """Set the intra-op thread count of torch; returns it.

    The numba scan kernels follow torch's count at every call (``serpent_cli.ops.scan_numba``), so
    this is the one knob; setting numba's here would start its pool, which resets the
    process-wide OpenMP count that torch reads.

    ``n`` > 0 is used as given; 0 or None means ``OMP_NUM_THREADS`` if set, else :func:`default_threads`.
    Call it before any model work: the count applies to what runs after it.
    """
    global _applied
    check_threads(n)
    register_process()  # counted by the others from now on, whatever count this one uses
    count = n if n else (_omp_threads() or default_threads())
    import torch

    torch.set_num_threads(count)
    _applied = torch.get_num_threads()
    return _applied


def worker_threads() -> int:
    """Threads for work outside torch (the PNG encoder): the count :func:`apply_threads` set, else 1.

    A command that never set a count (``serpent degrade``) stays on one thread, as before.
    """
    return _applied or 1
