"""Files a command reads, or appends its logs to, checked on the open file, not before it.

Policy files, stack records, key files: each is a few KB that a command reads whole
(``read_small_file``). Read blindly, a FIFO or ``/dev/zero`` given for one blocks or never
ends, and a swapped file between a ``stat`` and an ``open`` defeats the check; here the file
is opened without blocking and its kind and size are checked on the open descriptor
(``fstat``). ``baton send``'s input (``open_stream``) may be a FIFO on purpose (a writer feeds
it; opening one waits for its writer), never a device, socket or directory: also checked on
the open file. Logs ``baton up`` appends to (``open_log``) are regular files of their own: a
symbolic link left at a log's name would have it append to whatever file the link names.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

_Opened = TypeVar("_Opened")

__all__ = [
    "FileProblem",
    "ForeignFile",
    "create_file",
    "kind_of",
    "open_log",
    "open_stream",
    "read_small_file",
    "read_small_text",
    "read_upto",
    "replace_file",
    "write_data_file",
]


class FileProblem(Exception):
    """Why a file cannot be read as asked: ``str()`` is a phrase to follow its name ("is a
    directory", "is larger than 65536 bytes", ...); ``kind`` says what it is when it is not a
    file of the kind asked ("directory", "FIFO", "socket", "device"), ``size`` how large it
    is when it is larger than the limit (else None)."""

    def __init__(self, phrase: str, *, kind: str | None = None, size: int | None = None) -> None:
        super().__init__(phrase)
        self.kind = kind
        self.size = size


class ForeignFile(FileProblem):
    """A file another user owns where only the reader's own is trusted (``mine``)."""


def read_small_file(
    path: str | Path,
    limit: int,
    *,
    private: bool = False,
    mine: bool = False,
    trusted: bool = False,
    unwritable: bool = False,
) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    ``FileNotFoundError`` when there is none (callers decide what absence means);
    ``FileProblem`` when it is a directory, not a regular file, larger than ``limit`` or
    unreadable, or (``private``: a secret such as a private key) when its group or others
    may read it, or (``mine``: a file that says where to connect, like git's
    safe.directory) when another user owns it, or (``trusted``: a key handed over, such as a
    mounted secret) when its owner is neither the reader nor root or a folder above it lets
    another user replace it, or (``unwritable``: a public key others must not replace) when
    its group or others may write it.
    """
    fd = _opened(lambda: os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    try:
        info = os.fstat(fd)
        _check_kind(info.st_mode, fifo=False)
        if mine and info.st_uid != os.geteuid():
            raise ForeignFile(
                f"is owned by another user (uid {info.st_uid}, you are {os.geteuid()}): not "
                "trusted, it could send your commands to their broker or audit"
            )
        if trusted and info.st_uid not in (os.geteuid(), 0):
            raise FileProblem(
                f"is owned by another user (uid {info.st_uid}, you are {os.geteuid()}): whoever "
                "made it knows what it holds"
            )
        if trusted:
            _check_folders(Path(path))
        if unwritable and info.st_mode & 0o022:
            raise FileProblem(
                f"writable by others (mode {info.st_mode & 0o777:o}); chmod 644 {path}"
            )
        if private and info.st_mode & 0o077:
            raise FileProblem(
                f"readable by others (mode {info.st_mode & 0o777:o}); chmod 600 {path}"
            )
        data = read_upto(fd, limit + 1)
    except OSError as exc:
        raise FileProblem(f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        size = max(info.st_size, len(data))
        raise FileProblem(f"is larger than {limit} bytes", size=size)
    return data


def read_small_text(path: str | Path, limit: int) -> str:
    """The UTF-8 text of the regular file at ``path`` (a config file read once, whole):
    :func:`read_small_file`, and ``FileProblem`` naming the first byte that is not UTF-8."""
    data = read_small_file(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem(
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def replace_file(path: Path, text: str, mode: int, temp: Path | None = None) -> None:
    """Write ``text`` to ``path`` atomically (a reader sees the old file or the new one),
    through a new file of its own: a random temp name created with ``O_EXCL``, never through
    a link or hard link someone planted at a predictable one (which had another file written
    and become ``path``: H3, session 34); ``temp``: the caller's own temp name instead (a
    link or file already there is an error). ``OSError`` for the caller to name the file."""
    _through_temp(path, text, mode, os.replace, temp)


def create_file(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to a new file at ``path``, whole: a reader, or a second writer racing
    this one, finds no file or the whole of it, never a half-written one (a key: h48b F5), and
    a crash leaves no file there. ``FileExistsError`` when anything, a link too, is at ``path``
    already (it is never replaced); any other ``OSError`` for the caller to name the file."""
    _through_temp(path, text, mode, os.link)


def _through_temp(
    path: Path, text: str, mode: int, put: Callable[[Path, Path], None], temp: Path | None = None
) -> None:
    """``text`` written and synced to a temp file of its own (a random name created with
    ``O_EXCL``, never through a link), then ``put(temp, path)``; the temp file never stays."""
    import secrets

    temp = temp or path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        put(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def write_data_file(
    path: Path,
    text: str,
    mode: int,
    what: str,
    temp: Path | None = None,
    hint: str = "expected a writable data dir (--data-dir)",
) -> None:
    """:func:`replace_file`, its ``OSError`` a ``ConfigError`` naming ``what`` and ``path``
    and ending with ``hint`` (default: a file of a `baton up` data dir, as the stack record,
    the policy copy, held switches)."""
    from baton.schemas.errors import ConfigError

    try:
        replace_file(path, text, mode, temp)
    except OSError as exc:
        raise ConfigError(f"cannot write {what} {path}: {exc.strerror or exc}; {hint}") from None


def open_stream(path: str | Path) -> BinaryIO:
    """``path`` open for reading as it comes: a regular file or a FIFO (opening one waits for
    its writer, on purpose), its kind checked on the open file.

    ``FileNotFoundError`` when there is none; ``FileProblem`` when it is a directory, a device
    or a socket (``/dev/zero`` would never end), or unreadable.
    """
    stream = _opened(lambda: open(path, "rb"))  # noqa: SIM115 - the caller closes it
    try:
        _check_kind(os.fstat(stream.fileno()).st_mode, fifo=True)
    except BaseException:
        stream.close()
        raise
    return stream


def open_log(path: str | Path) -> BinaryIO:
    """``path`` open to append to (and read back), created 0644 when there is none.

    ``FileProblem`` when a symbolic link is at its name (it would append to the file the link
    names: ``~/.bashrc``), or it is a FIFO, device, socket or directory (checked on the open
    file, which is opened without blocking: a FIFO would wait for its reader).
    """
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileProblem("is a symbolic link", kind="symbolic link") from None
        raise FileProblem(f"cannot be opened: {exc.strerror or exc}") from None
    try:
        _check_kind(os.fstat(fd).st_mode, fifo=False)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "a+b")


def _check_kind(mode: int, *, fifo: bool) -> None:
    """FileProblem unless ``mode`` is a regular file's (or, ``fifo``, a FIFO's)."""
    if stat.S_ISREG(mode) or (fifo and stat.S_ISFIFO(mode)):
        return
    kind = kind_of(mode)
    if kind == "directory":
        raise FileProblem("is a directory", kind=kind)
    raise FileProblem(f"is not a regular file (a {kind})", kind=kind)


def read_upto(fd: int, size: int) -> bytes:
    """At most ``size`` bytes of the open file ``fd``, read to its end or to ``size``."""
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


def _check_folders(path: Path) -> None:
    """FileProblem when a folder above ``path`` (as given, and as its links resolve) lets
    another user replace it: owned by someone else than the reader or root, or writable by
    its group or others without the sticky bit (a file renamed over it, or a link to another
    file put in its place, passes every check of the file itself; h48b F2)."""
    me = os.geteuid()
    folders = {*Path(os.path.abspath(path)).parents, *path.resolve().parents}
    for folder in sorted(folders, key=lambda f: len(f.parts)):
        info = os.stat(folder)
        if info.st_uid not in (me, 0):
            raise FileProblem(
                f"is in {folder}, owned by another user (uid {info.st_uid}): they can replace it"
            )
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            raise FileProblem(
                f"is in {folder}, which others may write (mode {info.st_mode & 0o777:o}): they "
                "can replace it"
            )


def _opened(opener: Callable[[], _Opened]) -> _Opened:
    """What ``opener`` opened; ``FileNotFoundError`` as it is, any other failure to open a
    ``FileProblem`` saying why."""
    try:
        return opener()
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise FileProblem("is a directory", kind="directory") from None
    except OSError as exc:
        raise FileProblem(f"cannot be read: {exc.strerror or exc}") from None
