"""The worker's allocator setting: freed large blocks go back to the OS (glibc)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from baton.processors.allocator import keep_heap_compact

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"),
]

#: RSS kept after twelve 1 MiB blocks are freed, once an 8 MiB block was freed before them
#: (glibc then raises its thresholds) and small blocks were allocated after them
PROBE = """
import sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
if sys.argv[1] == "compact":
    from baton.processors.allocator import keep_heap_compact
    assert keep_heap_compact()
big = b"x" * (8 << 20)
del big
before = rss()
blocks = [b"y" * (1 << 20) for _ in range(12)]
keep = [b"z" * 600 for _ in range(1000)]
del blocks
print(rss() - before)
"""


def _kept(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, check=True, timeout=60
    )
    return int(done.stdout)


def test_freed_large_blocks_are_given_back_with_the_workers_setting() -> None:
    assert _kept("glibc") > 8 << 20  # glibc's own: the freed 12 MiB stay in the heap
    assert _kept("compact") < 1 << 20


def test_the_setting_is_taken_by_glibc() -> None:
    assert keep_heap_compact() is True
