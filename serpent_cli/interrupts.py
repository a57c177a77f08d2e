"""SIGTERM as a clean stop: the same unwinding Ctrl-C gets, then exit code 143.

Python turns SIGINT into ``KeyboardInterrupt``, so ``finally`` blocks and the atomic writers remove
their temporary files; SIGTERM (what ``kill``, schedulers and torchrun send) would end the process on
the spot and leave them behind.  :class:`Terminated` derives from ``BaseException`` for the same
reason ``KeyboardInterrupt`` does: no ``except Exception`` may swallow it.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so everything unwinds before exit 143."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated


def terminate_cleanly_on_sigterm() -> None:
    """Install the handler (main thread only: Python delivers signals there)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
