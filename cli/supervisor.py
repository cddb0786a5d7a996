"""Keeps the children of ``baton up`` running: restart with backoff, give up on a crash loop.

``RestartPolicy`` and ``CrashHistory`` are pure (the caller passes the time), so the rule can
be tested with a fake clock; ``Supervisor`` applies them to processes through a ``spawn``
function and a clock it is given.

Not guaranteed: a child that hangs without exiting is not noticed (only exits are); a restart
loses what the child held in memory and did not commit (the worker and the sink commit only
after their output is durable, so they redo that work: at-least-once); ``Supervisor`` must be
driven from one thread, the one that spawned the children (their parent-death signal is tied
to it).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from baton.schemas.errors import ChildFailed, ConfigError
from baton.schemas.files import FileProblem, open_log

__all__ = [
    "ChildFailed",
    "ChildSpec",
    "CrashHistory",
    "RestartPolicy",
    "Supervisor",
    "copy_lines",
    "describe_exit",
    "exit_code_for",
    "follow_lines",
    "open_child_log",
    "without_control",
]


@dataclass(frozen=True)
class RestartPolicy:
    """Restart a crashed child after ``backoff_s``, doubling per recent crash up to
    ``max_backoff_s``; the ``limit``-th crash within ``window_s`` seconds ends the stack."""

    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    limit: int = 5
    window_s: float = 120.0

    def __post_init__(self) -> None:
        if not self.backoff_s > 0:
            raise ValueError(f"restart backoff: must be > 0 seconds, got {self.backoff_s!r}")
        if not self.max_backoff_s >= self.backoff_s:
            raise ValueError(
                f"restart max backoff: must be >= the backoff ({self.backoff_s:g} s), "
                f"got {self.max_backoff_s!r}"
            )
        if self.limit < 1:
            raise ValueError(f"restart limit: must be an integer >= 1, got {self.limit!r}")
        if not self.window_s > 0:
            raise ValueError(f"restart window: must be > 0 seconds, got {self.window_s!r}")


class CrashHistory:
    """The recent crashes of one child and what to do about the next one."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._crashes: deque[float] = deque()

    @property
    def recent(self) -> int:
        """Crashes counted in the window as of the last ``record``."""
        return len(self._crashes)

    def record(self, now: float) -> float | None:
        """Note a crash at ``now``; return the delay before the restart, or None to give up.

        Crashes older than the window are forgotten, so a child that ran well for a while
        starts again from the first backoff.
        """
        while self._crashes and now - self._crashes[0] >= self.policy.window_s:
            self._crashes.popleft()
        self._crashes.append(now)
        if len(self._crashes) >= self.policy.limit:
            return None
        # the exponent is bounded before the power, so a huge limit cannot overflow a float
        exponent = min(len(self._crashes) - 1, 64)
        return float(min(self.policy.backoff_s * 2.0**exponent, self.policy.max_backoff_s))


def describe_exit(code: int) -> str:
    """``code 75`` or ``signal SIGKILL`` for a ``Popen.returncode``."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def exit_code_for(code: int) -> int:
    """The exit code of ``baton up`` when a child with ``code`` made it give up: the child's
    own code, 128 + N for a signal (as a shell reports it), 1 for an unexpected clean exit."""
    if code > 0:
        return min(code, 255)
    if code < 0:
        return min(128 - code, 255)
    return 1


class Process(Protocol):
    """What the supervisor needs of a child (``subprocess.Popen`` has it)."""

    pid: int

    def poll(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


@dataclass(frozen=True)
class ChildSpec:
    """A child of ``baton up``: its name in messages, its ``baton`` arguments and its log;
    ``echo``: its stdout also goes to the terminal (the alerter's alert lines);
    ``echo_warnings``: its WARNING and ERROR log lines do (:class:`WarningEcho`);
    ``stop_last``: it is stopped once the others are gone (the audit sink, which stores what
    they wrote before the broker goes)."""

    name: str
    args: tuple[str, ...]
    log_path: Path
    echo: bool = False
    echo_warnings: bool = False
    stop_last: bool = False


@dataclass
class _Child:
    spec: ChildSpec
    proc: Process
    history: CrashHistory
    started: float
    log_offset: int
    restart_at: float | None = None
    restarts: int = 0
    last_code: int | None = None


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def tail(path: Path, since: int = 0, lines: int = 20, chars: int = 4000) -> str:
    """The last ``lines`` lines of ``path`` written after byte ``since`` (at most ``chars``)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(since, size - chars * 4))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    # terminal control sequences (Faust's spinner writes some) would garble the log line
    text = _CONTROL.sub("", text)
    kept = [ln.rstrip() for ln in text.splitlines() if ln.strip()][-lines:]
    return "\n".join(kept)[-chars:]


_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")


def without_control(text: str) -> str:
    """``text`` without terminal control sequences and control characters (but tabs)."""
    return _CONTROL.sub("", text)


def open_child_log(path: Path) -> BinaryIO:
    """The log of a child (or the broker) at ``path``, open to append to; a ConfigError naming
    it when it is not a file of its own (a symbolic link, a FIFO: ``schemas.files.open_log``)."""
    try:
        return open_log(path)
    except FileProblem as exc:
        raise ConfigError(
            f"the log {path} {exc}; baton up appends only to regular files of its own in "
            "DATA_DIR/logs (remove it, or start with another --data-dir)"
        ) from None


def copy_lines(source: IO[bytes], log_path: Path, echo: Callable[[str], None]) -> None:
    """Append every line of ``source`` to ``log_path`` and hand it, without control
    characters, to ``echo``, until ``source`` ends (the child exited). When ``echo`` fails
    (a closed terminal or pipe), the lines still go to the log: the child never blocks on a
    full pipe nobody reads."""
    echoing = True
    with source, open_child_log(log_path) as log:
        for raw in source:
            log.write(raw)
            log.flush()
            echoing = _echoed(raw, echo, echoing)


def _echoed(raw: bytes, echo: Callable[[str], None], echoing: bool) -> bool:
    """Hand the line ``raw``, without control characters, to ``echo`` while ``echoing``;
    False from the first failure on (a closed terminal or pipe: the log still gets them)."""
    line = without_control(raw.decode("utf-8", errors="replace")).rstrip()
    if line and echoing:
        try:
            echo(line)
        except (OSError, ValueError):  # EPIPE, or a closed stdout
            return False
    return echoing


def follow_lines(
    log_path: Path,
    start: int,
    echo: Callable[[str], None],
    done: Callable[[], bool],
    every_s: float = 0.2,
) -> None:
    """Hand every line appended to ``log_path`` past byte ``start``, without control
    characters, to ``echo``, until ``done()`` (the child exited) and the file is read to its
    end. The child writes its log itself: a pipe to ``baton up`` broke when ``baton up`` was
    killed, and the sink, draining what the broker held, died of its first write (EPIPE) with
    thousands of decisions unstored (session 36)."""
    echoing = True
    pending = b""
    try:
        source = log_path.open("rb")
    except OSError:
        return
    with source:
        source.seek(start)
        while True:
            finished = done()  # before the read: a last line written as it exits is read
            chunk = source.read(1 << 16)
            if not chunk:
                if not finished:
                    time.sleep(every_s)
                    continue
                lines, pending = [pending] if pending else [], b""
            else:
                *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                echoing = _echoed(raw, echo, echoing)
            if not chunk:
                return


#: a log line at WARNING or above, in the text or the JSON format (cli/log_format.py)
_WARNING_LINE = re.compile(
    r"^\S+ \S+ (?:WARNING|ERROR|CRITICAL) |\"level\": ?\"(?:warning|error|critical)\""
)


@dataclass
class WarningEcho:
    """A child's WARNING and ERROR log lines, handed to ``say`` as ``NAME: line``: at most
    ``burst`` in each ``window_s``, the rest counted (said with the next one shown), so a
    flood of one warning never floods the terminal. The worker's capacity warnings, its kill
    switches and policy updates, a sink's failing inserts were only in DATA_DIR/logs."""

    name: str
    say: Callable[[str], None]
    burst: int = 10
    window_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _window_start: float = float("-inf")
    _shown: int = 0
    _dropped: int = 0

    def __call__(self, line: str) -> None:
        if not _WARNING_LINE.search(line):
            return
        now = self.clock()
        if now - self._window_start >= self.window_s:
            if self._dropped:
                self.say(f"{self.name}: {self._dropped} more warning line(s) went to its log only")
            self._window_start, self._shown, self._dropped = now, 0, 0
        if self._shown >= self.burst:
            self._dropped += 1
            return
        self._shown += 1
        self.say(f"{self.name}: {line[:600]}")
        if self._shown == self.burst:
            self.say(
                f"{self.name}: {self.burst} warning lines within {self.window_s:g} s; more in "
                "this minute go to its log only"
            )


@dataclass
class Supervisor:
    """Starts children, notices exits, restarts them per ``policy``; see the module docstring.

    ``spawn(spec)`` starts a process and returns it; ``say(line)`` reports one event;
    ``clock`` is a monotonic clock in seconds.
    """

    policy: RestartPolicy
    spawn: Callable[[ChildSpec], Process]
    say: Callable[[str], None]
    clock: Callable[[], float] = time.monotonic
    _children: dict[str, _Child] = field(default_factory=dict)

    def start(self, spec: ChildSpec) -> Process:
        if spec.name in self._children:
            raise ValueError(f"child {spec.name!r}: already started")
        offset = log_size(spec.log_path)
        proc = self.spawn(spec)
        self._children[spec.name] = _Child(
            spec, proc, CrashHistory(self.policy), self.clock(), offset
        )
        return proc

    def processes(self) -> dict[str, Process]:
        """The current process of every child (a restarted child has a new one)."""
        return {name: child.proc for name, child in self._children.items()}

    def restarts(self, name: str) -> int:
        return self._children[name].restarts

    def tick(self) -> None:
        """Restart the children whose backoff is over and handle new exits.

        Raises ``ChildFailed`` when a child reached the crash limit of the policy.
        """
        for child in self._children.values():
            now = self.clock()
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._restart(child, now)
                continue
            code = child.proc.poll()
            if code is not None:
                self._crashed(child, code, now)

    def stop(self, grace_s: float, last_s: float | None = None) -> None:
        """SIGTERM every running child, SIGKILL those still running after ``grace_s``; then
        the same for the ``stop_last`` children with ``last_s`` more seconds (what they may
        take to read what the others wrote; None: they are told to stop at once, a second
        SIGTERM, as by a broker that is gone)."""
        children = list(self._children.values())
        self._stop([c for c in children if not c.spec.stop_last], grace_s)
        last = [c for c in children if c.spec.stop_last]
        if last_s is not None:  # one that died meanwhile must still read what they wrote:
            # a sink killed a moment before the stop still ran when `revive` looked (its
            # SIGKILL not yet delivered), and its drain was lost (session 39, CI)
            for child in last:
                if child.proc.poll() is not None:
                    self._restart(child, self.clock())
        self._stop(last, grace_s + (last_s or 0.0), twice=last_s is None)

    def _stop(self, children: list[_Child], grace_s: float, twice: bool = False) -> None:
        for child in children:
            if child.proc.poll() is None:
                child.proc.terminate()
        if twice:  # the second once the first is handled (two pending ones are one)
            time.sleep(0.5)
            for child in children:
                if child.proc.poll() is None:
                    child.proc.terminate()
        deadline = self.clock() + grace_s
        for child in children:
            proc = child.proc
            try:
                proc.wait(max(0.1, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                name = child.spec.name
                self.say(f"the {name} (pid {proc.pid}) did not stop within {grace_s:g} s: killed")
                proc.kill()
                proc.wait()

    def revive(self, name: str) -> bool:
        """Start child ``name`` again now if it is down (exited, or waiting out its backoff):
        the sink at a stop, to store what the workers published before the broker goes.
        True when it was started."""
        child = self._children.get(name)
        if child is None or (child.restart_at is None and child.proc.poll() is None):
            return False
        self._restart(child, self.clock())
        return True

    def _crashed(self, child: _Child, code: int, now: float) -> None:
        child.last_code = code
        name, ran = child.spec.name, now - child.started
        copier = getattr(child.proc, "copier", None)  # its last lines, copied to its log
        if copier is not None:
            copier.join(2.0)
        output = tail(child.spec.log_path, child.log_offset)
        delay = child.history.record(now)
        if delay is None:
            policy = self.policy
            raise ChildFailed(
                f"the {name} keeps failing ({child.history.recent} exits within "
                f"{policy.window_s:g} s, the last with {describe_exit(code)} after {ran:.1f} s); "
                f"stopping everything. Its last output ({child.spec.log_path}):\n"
                f"{output or '(none)'}",
                exit_code_for(code),
            )
        last = " | ".join(output.splitlines()[-3:])[-600:] or "(no output)"
        self.say(
            f"the {name} (pid {child.proc.pid}) exited with {describe_exit(code)} after "
            f"{ran:.1f} s; restarting it in {delay:g} s (exit {child.history.recent}; "
            f"exit {self.policy.limit} within {self.policy.window_s:g} s stops baton up); "
            f"last output: {last}"
        )
        child.restart_at = now + delay

    def _restart(self, child: _Child, now: float) -> None:
        child.restart_at = None
        child.log_offset = log_size(child.spec.log_path)
        child.proc = self.spawn(child.spec)
        child.started = now
        child.restarts += 1
        self.say(f"restarted the {child.spec.name} (pid {child.proc.pid})")
