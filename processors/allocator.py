"""The worker's C allocator told to give freed large blocks back, so its RSS follows its runs.

glibc raises its mmap threshold to the size of every large block freed (up to 32 MiB) and its
trim threshold to twice that: after the runs table's dicts have been resized a few times,
blocks of megabytes (a batch's buffers, the next resize) come from the heap, whose free space
the process keeps between the long-lived blocks. A worker building 100k runs held ~280 bytes
a run of such free heap on top of its ~1.65 KB of live objects a decoded run
(bench/memory_bench.py; tracemalloc against RSS). Fixed thresholds (glibc's defaults, 128 KiB,
no longer raised) keep every block past them in a mapping of its own, unmapped when freed.

Not guaranteed: anything off glibc. musl's ``mallopt`` does nothing and macOS has none; then
:func:`keep_heap_compact` returns False and the process allocates as it would have. The same
setting from outside: ``MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072``.
"""

from __future__ import annotations

import ctypes

__all__ = ["HEAP_THRESHOLD", "keep_heap_compact"]

#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks from this size on get a mapping of their own; free heap past it at the top is
#: given back (glibc's defaults, held: its dynamic thresholds are what this turns off)
HEAP_THRESHOLD = 128 * 1024


def keep_heap_compact(threshold: int = HEAP_THRESHOLD) -> bool:
    """Fix glibc's mmap and trim thresholds at ``threshold`` bytes for this process; True
    when the C library took both (glibc), False where it cannot (no ``mallopt``)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    took = mallopt(_M_MMAP_THRESHOLD, threshold) == 1
    return mallopt(_M_TRIM_THRESHOLD, threshold) == 1 and took
