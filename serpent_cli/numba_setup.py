"""numba, set up once for every compiled kernel of the package (the scan, the PNG row filters).

Import this module before ``numba`` itself: numba reads its cache folder and CPU target from the
environment once, at import, so whichever of our kernels is loaded first must find them set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def configure_numba() -> None:
    """Settings numba reads once, at import; each is left alone where the user set it.

    * A per-user cache folder: the package folder (numba's default) is often read-only
      (system or shared installs); a per-user cache means only the first run compiles.
    * Full-width AVX-512 vectors where the CPU has them: LLVM's tuning for recent Intel
      cores prefers 256-bit vectors, which leaves half of each register idle in the scan
      (measured: 2.0 -> 2.5 G state updates/s per core on an Emerald Rapids Xeon).
    """
    if not os.environ.get("NUMBA_CACHE_DIR"):
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        os.environ["NUMBA_CACHE_DIR"] = str(Path(base) / "serpent" / "numba")
    if "numba" in sys.modules or os.environ.get("NUMBA_CPU_FEATURES") or os.environ.get("NUMBA_CPU_NAME"):
        return
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features().flatten()
        name = llvm.get_host_cpu_name()
    except Exception:  # unknown host: numba's own detection
        return
    if "+avx512f" in features.split(","):
        os.environ["NUMBA_CPU_NAME"] = name
        os.environ["NUMBA_CPU_FEATURES"] = features + ",-prefer-256-bit"


def start_threads() -> None:
    """Start numba's thread pool now (idempotent), leaving torch's thread count as it was.

    numba's OpenMP layer and torch can share one libgomp: starting numba's pool sets the
    process-wide OpenMP thread count, which would silently undo ``torch.set_num_threads``.
    Once the pool runs, numba's per-launch count no longer touches torch's.
    """
    import numba

    torch = sys.modules.get("torch")
    wanted = torch.get_num_threads() if torch is not None else None
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    if torch is not None and torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)



def follow_torch_threads() -> int:
    """Give numba's next parallel region torch's thread count (the one knob users and ``--threads`` set)."""
    import numba
    import torch

    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    return threads


configure_numba()
