"""The stops an alerter announced, remembered in a state file across its restarts.

Why: a genuine signed stop written to gov.stops again (whoever writes the topic can copy one)
was announced anew by an alerter that no longer remembered it: after a restart, or 100,000
stops later (h44b F1). Given a state directory (``--state-dir``, ``BATON_ALERTS_STATE_DIR``;
`baton up` gives its alerter DATA_DIR/alerts), the digests the alerter deduplicates by are
kept in ``STATE_FILE`` there and read again at its start.

The file: ``_HEADER``, then 24 bytes an entry: the 16-byte digest and the stop's decided_at
(POSIX seconds, a big-endian double). An entry is appended once its alert is out (printed, not
held in a summary, done with by the webhook sender: when its offset may be committed, and
before it is), so a crash re-reads and announces again what was not out, as before. The whole
file is rewritten (a new file of its own, 0600, fsync'ed, renamed over the old one) at start,
at exit, and once it holds twice ``limit`` entries, keeping the newest ``limit`` decided within
``keep_s`` (older stops are folded into a late summary anyway: sinks/alerts.py).

Not guaranteed: entries appended since the last rewrite may be lost with the machine (not
fsync'ed one by one). A file this module did not write (no header, a link, FIFO, folder or
device, another user's, writable by others, larger than it ever writes) is named in a warning
and the alerter starts afresh; a torn last entry (a crash mid-append) is dropped, the others
kept. One alerter a directory (a lock on it): a second one started on it, one without a state
directory, or one whose directory cannot be used, remembers in memory only, as before (said).
Never raises for the file or the directory: an alerter that cannot remember still announces.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import re
import secrets
import stat
import struct
from collections import OrderedDict, deque
from collections.abc import Iterable
from pathlib import Path

from baton.schemas.files import read_upto

__all__ = ["STATE_FILE", "AnnouncedStops"]

log = logging.getLogger(__name__)

#: the state file's name in the state directory
STATE_FILE = "announced-stops"
#: ``_replace``'s temp file names (``_temp_name``: a random 16-hex part)
_TEMP = re.compile(rf"\.{re.escape(STATE_FILE)}\.[0-9a-f]{{16}}\.tmp")
_HEADER = b"baton alerts: announced stops, v1\n"
_ENTRY = struct.Struct(">16sd")
_NO_STATE = "announced stops are remembered in memory only (a restart announces again a stop "
_NO_STATE += "written to gov.stops again, unless it is past --max-age)"


class AnnouncedStops:
    """The digests of the stops announced, oldest first, each with its decided_at (POSIX
    seconds): at most ``limit`` in memory, and in the state file of ``state_dir`` once their
    alerts are out (:meth:`settle`)."""

    def __init__(
        self, limit: int = 100_000, keep_s: float = 0.0, state_dir: Path | None = None
    ) -> None:
        if limit < 1 or not keep_s >= 0:
            raise ValueError(f"AnnouncedStops: limit >= 1, keep_s >= 0 expected: {limit}, {keep_s}")
        self.limit, self.keep_s, self.state_dir = limit, keep_s, state_dir
        self._times: OrderedDict[bytes, float] = OrderedDict()
        #: added, their alerts not out yet (never in the file): numbered from _pending_from
        self._pending: deque[tuple[bytes, float]] = deque()
        self._pending_from = 0
        #: entries added, all told (a commit mark counts them: :meth:`settle`)
        self.added = 0
        #: entries read from the state file at the start
        self.loaded = 0
        self.path: Path | None = None
        self._dir_fd: int | None = None
        self._in_file = 0
        self._failing = False

    def __contains__(self, key: object) -> bool:
        return key in self._times

    def __len__(self) -> int:
        return len(self._times)

    def touch(self, key: bytes) -> None:
        """``key`` was seen again: the last to be forgotten (not one of them: nothing)."""
        if key in self._times:
            self._times.move_to_end(key)

    def add(self, key: bytes, decided: float) -> None:
        """``key``, of a stop decided at ``decided``, is announced (or held to be)."""
        self._times[key] = decided
        if len(self._times) > self.limit:
            self._times.popitem(last=False)
        self._pending.append((key, decided))
        self.added += 1
        if len(self._pending) > self.limit:  # (its alert is never out: not written)
            self._pending.popleft()
            self._pending_from += 1

    def open(self, wall: float) -> None:
        """Take the state directory (made 0700 when missing) and read what it remembers, as
        of ``wall`` (POSIX seconds); a problem is logged, and memory only or a fresh start."""
        if self.state_dir is None:
            log.warning("alerts: no --state-dir: %s", _NO_STATE)
            return
        directory = self.state_dir
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            log.error(
                "alerts: state dir %s cannot be used (%s): %s", directory, _why(exc), _NO_STATE
            )
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log.error(
                "alerts: state dir %s is another alerter's (locked): %s", directory, _NO_STATE
            )
            return
        self._dir_fd, self.path = fd, directory / STATE_FILE
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or info.st_mode & 0o022:
            log.warning(
                "alerts: state dir %s is not only yours (uid %d, mode %o): whoever may write it "
                "can remove what the alerter remembers; use a directory of your own",
                directory,
                info.st_uid,
                stat.S_IMODE(info.st_mode),
            )
        _remove_stale_temps(fd, directory)
        entries = self._read(self.path)
        wall = _reference(wall, (t for _, t in entries))
        for key, decided in entries:
            if self._fresh(decided, wall):
                self._times[key] = decided
                self._times.move_to_end(key)
                if len(self._times) > self.limit:
                    self._times.popitem(last=False)
        self.loaded = len(self._times)
        self._rewrite(wall)

    def settle(self, upto: int, wall: float) -> None:
        """The alerts of the entries added before the ``upto``-th are out: write them."""
        out: list[tuple[bytes, float]] = []
        while self._pending and self._pending_from < upto:
            out.append(self._pending.popleft())
            self._pending_from += 1
        if not out or self.path is None or self._dir_fd is None:  # (closed: never the cwd's)
            return
        if self._in_file + len(out) > 2 * self.limit:
            self._rewrite(wall)
            return
        try:
            flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
            fd = os.open(STATE_FILE, flags, dir_fd=self._dir_fd)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                    raise OSError(errno.EPERM, "replaced by something else")
                try:
                    _write_all(fd, b"".join(_ENTRY.pack(key, t) for key, t in out))
                except OSError:  # (a disk full): a torn entry misaligned every later one
                    with contextlib.suppress(OSError):  # (h45c F4): cut back to whole ones
                        os.ftruncate(fd, info.st_size)
                    raise
            finally:
                os.close(fd)
        except OSError:  # gone or replaced: written anew from memory
            self._rewrite(wall)
            return
        self._in_file += len(out)

    def close(self, wall: float) -> None:
        """At exit: the file rewritten (what is out), the directory's lock released."""
        if self._dir_fd is None:
            return
        self._rewrite(wall)
        os.close(self._dir_fd)
        self._dir_fd = None

    def _fresh(self, decided: float, wall: float) -> bool:
        return not self.keep_s or wall - decided <= self.keep_s

    def _rewrite(self, wall: float) -> None:
        if self.path is None or self._dir_fd is None:
            return
        held = {key for key, _ in self._pending}
        wall = _reference(wall, self._times.values())
        kept = [(k, t) for k, t in self._times.items() if k not in held and self._fresh(t, wall)]
        kept = kept[-self.limit :]
        try:
            data = _HEADER + b"".join(_ENTRY.pack(k, t) for k, t in kept)
            _replace(self._dir_fd, data)
            os.fsync(self._dir_fd)  # the rename too
        except OSError as exc:
            if not self._failing:
                log.error("alerts: cannot write %s (%s): %s", self.path, _why(exc), _NO_STATE)
            self._failing = True
            return
        if self._failing:
            log.warning("alerts: %s written again", self.path)
        self._failing = False
        self._in_file = len(kept)

    def _read(self, path: Path) -> list[tuple[bytes, float]]:
        """The entries of the file at ``path``, oldest first; [] and a warning when it is not
        one this module wrote (never blocks: opened O_NONBLOCK, regular files only, at most
        the largest size it writes read)."""
        limit = len(_HEADER) + 2 * self.limit * _ENTRY.size

        def fresh_start(problem: str) -> list[tuple[bytes, float]]:
            log.error(
                "alerts: state file %s %s: not read, starting afresh (stops announced before "
                "may be announced again; those past --max-age are folded into a late summary)",
                path,
                problem,
            )
            return []

        try:  # (in the directory opened at start: a link to it retargeted since is not followed)
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(STATE_FILE, flags, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return []
        except OSError as exc:
            return fresh_start("is a symbolic link" if exc.errno == errno.ELOOP else _why(exc))
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return fresh_start("is not a regular file (a FIFO, folder, device or socket)")
            if info.st_uid != os.geteuid():
                return fresh_start(f"belongs to another user (uid {info.st_uid})")
            if info.st_mode & 0o022:
                return fresh_start(f"may be written by others (mode {info.st_mode & 0o777:o})")
            if info.st_size > limit:
                return fresh_start(f"is larger ({info.st_size} bytes) than it is ever written")
            data = read_upto(fd, limit + 1)
        except OSError as exc:
            return fresh_start(_why(exc))
        finally:
            os.close(fd)
        if len(data) > limit:
            return fresh_start(f"is larger than {limit} bytes")
        if not data.startswith(_HEADER):
            return fresh_start("is not an alerter's state file (its first line is not ours)")
        body = memoryview(data)[len(_HEADER) :]
        whole = len(body) - len(body) % _ENTRY.size
        entries = [(k, t) for k, t in _ENTRY.iter_unpack(body[:whole]) if math.isfinite(t)]
        if whole < len(body) or len(entries) < whole // _ENTRY.size:
            log.warning(
                "alerts: state file %s: %d bytes of a torn last entry and %d damaged entries "
                "dropped (a crash while it was written?), %d entries kept",
                path,
                len(body) - whole,
                whole // _ENTRY.size - len(entries),
                len(entries),
            )
        return entries


def _reference(wall: float, decided: Iterable[float]) -> float:
    """The time the keep window counts back from: ``wall``, or the newest stop's ``decided``
    when that is earlier (a start with the clock days ahead dropped every entry for good,
    silently: h45c F6; a signed time, which no writer of gov.stops can move)."""
    return min(wall, max(decided, default=wall))


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _remove_stale_temps(dir_fd: int, directory: Path) -> None:
    """Remove the temp files a rewrite killed midway left (``_replace``'s names only, up to
    ~5 MB each; nothing else removed them: one more each kill -9). Called holding the
    directory's lock, so no other alerter is writing one; a link of that name is removed, not
    followed; a problem is a warning."""
    try:
        stale = [name for name in os.listdir(dir_fd) if _TEMP.fullmatch(name)]
    except OSError as exc:
        log.warning("alerts: cannot list %s (%s): temp files left there stay", directory, _why(exc))
        return
    removed, failed = 0, []
    for name in stale:
        try:
            os.unlink(name, dir_fd=dir_fd)
            removed += 1
        except OSError as exc:
            failed.append(f"{name} ({_why(exc)})")
    if failed:  # one line, however many (a shared directory can hold thousands: h50a)
        log.warning(
            "alerts: cannot remove %d temp file(s) in %s: %s", len(failed), directory, failed[0]
        )
    if removed:
        log.info("alerts: removed %d temp file(s) a killed rewrite left in %s", removed, directory)


def _temp_name() -> str:
    """A new temp file name for ``_replace``, one ``_TEMP`` matches."""
    return f".{STATE_FILE}.{secrets.token_hex(8)}.tmp"


def _replace(dir_fd: int, data: bytes) -> None:
    """``data`` written to a new file of its own (O_EXCL, 0600, fsync'ed), renamed over the
    state file, all in the directory ``dir_fd`` opened at start (a link to it retargeted by
    another user since is not followed: h45c F3): a reader sees the old file or the new one,
    never a link's target written."""
    temp = _temp_name()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600, dir_fd=dir_fd)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, STATE_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise
