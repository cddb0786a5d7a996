"""A small file read whole, at most a limit: a regular file only, checked on the open file.

Policy files, stack records, key files: each is a few KB that a command reads whole. Read
blindly, a FIFO or ``/dev/zero`` given for one blocks or never ends, and a swapped file
between a ``stat`` and an ``open`` defeats the check; here the file is opened without
blocking and its kind and size are checked on the open descriptor (``fstat``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["FileProblem", "read_small_file"]


class FileProblem(Exception):
    """Why a file cannot be read as a small regular file: ``str()`` is a phrase to follow its
    name ("is a directory", "is larger than 65536 bytes", ...)."""


def read_small_file(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    ``FileNotFoundError`` when there is none (callers decide what absence means);
    ``FileProblem`` when it is a directory, not a regular file, larger than ``limit`` or
    unreadable.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise FileProblem("is a directory") from None
    except OSError as exc:
        raise FileProblem(f"cannot be read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise FileProblem("is a directory")
        if not stat.S_ISREG(mode):
            raise FileProblem(f"is not a regular file (a {kind_of(mode)})")
        data = _read_upto(fd, limit + 1)
    except OSError as exc:
        raise FileProblem(f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise FileProblem(f"is larger than {limit} bytes")
    return data


def _read_upto(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "device"
