"""Process settings that make per-image measuring fast; applied once per measuring process.

Measuring one thumbnail takes a few milliseconds of numpy work on arrays of a few hundred
kilobytes, and the workflow runs one such process per core. Two library defaults cost more than the
work itself in that setting:

* glibc hands every allocation above 128 KiB (a 320x240 float32 plane is 300 KiB) straight to
  ``mmap`` and returns it on ``free``, so each temporary array is page-faulted in afresh: about
  half of the measuring time. Raising the mmap and trim thresholds keeps freed memory in the heap
  for the next array. Memory is still returned above the thresholds, so a process never holds
  more than one image's working set plus that slack.
* OpenBLAS starts one thread per core for products as small as the hash reductions' (a few million
  multiply-adds) and then keeps them spinning; with one measuring process per core those threads
  only steal time from the other processes. Measuring processes are single-threaded by design
  (parallelism comes from processes), so BLAS is limited to one thread.

Both are best effort: on a C library or BLAS without these entry points nothing changes but speed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from functools import cache

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 16 * 2**20
TRIM_THRESHOLD_BYTES = 64 * 2**20

_BLAS_THREAD_SETTERS = (
    "openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
    "MKL_Set_Num_Threads",
)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (see module docstring); True if applied."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def _loaded_blas_libraries() -> list[str]:
    """Paths of loaded shared libraries whose file name mentions BLAS (Linux /proc only)."""
    try:
        with open(f"/proc/{os.getpid()}/maps") as maps:
            paths = {line.split()[-1] for line in maps if ".so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if "blas" in os.path.basename(p).lower()
                  or "mkl_rt" in os.path.basename(p).lower())


def single_threaded_blas() -> bool:
    """Limit the loaded BLAS library to one thread; True if a setter was found and called."""
    import numpy  # noqa: F401  (BLAS is loaded with numpy)

    done = False
    for path in _loaded_blas_libraries():
        with contextlib.suppress(OSError):
            library = ctypes.CDLL(path)
            for name in _BLAS_THREAD_SETTERS:
                setter = getattr(library, name, None)
                if setter is not None:
                    setter(1)
                    done = True
    return done


@cache
def tune_for_measuring() -> tuple[bool, bool]:
    """Apply both settings once in this process; returns which ones took effect."""
    return keep_freed_memory(), single_threaded_blas()
