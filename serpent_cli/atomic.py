"""Atomic file writes: a temporary file in the same folder, fsynced, then renamed over the target.

An interrupted run (Ctrl-C, SIGKILL, a full disk) leaves either the old file or the new one, never a
truncated one.  One implementation serves images, weights, checkpoints and exported Hub folders.

``replace=False`` publishes only when the name is still free, atomically (a hard link, which fails
when the name exists), so two processes writing the same output never both publish it: the second
gets ``FileExistsError`` and its temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def user_file_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give (mkstemp's 0600 would hide outputs from others)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# A filesystem without hard links answers link() with one of these; then publish by check + rename.
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


@contextlib.contextmanager
def atomic_output(path: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it into place.

    With ``replace=False`` an existing ``path`` is never replaced: ``FileExistsError`` instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        os.close(fd)
        yield tmp
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, user_file_mode())
        if replace:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _publish_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if no file has it; atomic where hard links exist."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if path.exists():  # no hard links here: check, then rename (a narrow race remains on such filesystems)
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def write_atomic(path: Path, write: Callable[[Path], object], *, replace: bool = True) -> None:
    """Call ``write(tmp)`` to fill a temporary file, then move it atomically to ``path``."""
    with atomic_output(path, replace=replace) as tmp:
        write(tmp)


def write_bytes_atomic(path: Path, data: bytes, *, replace: bool = True) -> None:
    """``data`` to ``path``, atomically."""
    write_atomic(path, lambda tmp: tmp.write_bytes(data), replace=replace)


def write_json_atomic(path: Path, data: object, *, sort_keys: bool = False) -> None:
    """``data`` as indented JSON (and a final newline) to ``path``, atomically and fsynced."""
    text = json.dumps(data, indent=2, sort_keys=sort_keys) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: not every platform can fsync a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
