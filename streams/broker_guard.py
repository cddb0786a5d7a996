"""The guard of ``baton up``'s embedded broker: the broker outlives a ``baton up`` that died
without its ordered stop until the audit sink has stored what the broker holds.

``baton up`` stops its children in order (cli/up_stop.py): the worker, then the sink once it
has read gov.decisions to its end, the broker last, because the broker keeps every record in
memory only. A ``baton up`` killed with SIGKILL (or crashed) cannot: every child got its
parent-death SIGTERM at once, the broker serves its open connections 5 s more and exits, and
the sink's drain lost what it had not read by then (H2, session 35: 2,508 of 5,691 decisions
clients had received were not in the audit; a restart restored their runs with less spend).

So ``baton up`` starts the broker through this process (``python -m
baton.streams.broker_guard FD RECORD PID -- BROKER ARGS``, PID its own), which starts the
broker as its child (ended by a parent-death SIGTERM if this process dies) and writes the
broker's pid to ``FD``:

* SIGTERM, SIGINT or SIGHUP (``baton up``'s ordered stop): the broker gets SIGTERM at once;
* SIGUSR1, this process's parent-death signal (``baton up`` is gone): the guard does the
  ordered stop itself from the pids the stack record ``RECORD`` names (:class:`OrphanedStop`):
  the workers and the alerter end on their parent-death SIGTERM, then the sink is told to
  drain (SIGUSR2: unless it drains already), then the broker gets SIGTERM;
* the broker's exit is this process's (a signal's death as 128 + its number).

Standard library only: it starts in ~50 ms beside a broker that takes seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "DRAIN",
    "HELD_SIGNALS",
    "ORPHANED",
    "SINK_S",
    "WORKERS_S",
    "OrphanedStop",
    "hold_signals",
    "main",
    "named_pids",
    "parent_death_signal",
    "release_signals",
    "runs",
]

#: the signal the guard gets when ``baton up`` dies (its parent-death signal)
ORPHANED = signal.SIGUSR1
#: what the guard sends the sink: drain, unless it already drains (`baton up` died during its
#: own ordered stop: a second SIGTERM stops a draining sink at once, H3 session 36)
DRAIN = signal.SIGUSR2
#: the signals the guard and the sink handle, held (blocked) from their fork until their
#: handlers are in place: one sent while they start is then handled, not their default action
#: (a sink started again at a stop was told to drain while it imported chDB and died of the
#: SIGTERM: 3,346-5,374 of ~10,000 decisions clients had received not in the audit, session 37)
HELD_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, ORPHANED, DRAIN})
#: how long the broker may take to end after its SIGTERM (Tansu: 5 s with clients connected)
_BROKER_END_S = 10.0
#: an orphaned stop's bounds: the workers' and alerter's graceful stop (baton up's grace),
#: then the sink's drain (``baton sink --drain-s`` in baton up, 20 s) and its last insert
WORKERS_S = 15.0
SINK_S = 25.0


def hold_signals() -> None:
    """Block :data:`HELD_SIGNALS` (a ``preexec_fn``: the mask outlives exec); pending ones are
    delivered by :func:`release_signals`."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)


def release_signals() -> None:
    """Unblock :data:`HELD_SIGNALS` once their handlers are installed (a no-op in a process
    started without :func:`hold_signals`)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


def parent_death_signal(sig: int) -> None:  # pragma: no cover - runs in a child, before exec
    """PR_SET_PDEATHSIG: the kernel sends ``sig`` to this process when the thread that started
    it exits (Linux)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)


def _term_when_parent_dies() -> None:  # pragma: no cover - runs in the broker, before exec
    parent_death_signal(signal.SIGTERM)


def named_pids(record: Path, parent: int) -> dict[str, int]:
    """The pids the stack record names by child, when it is the record of ``parent`` (the
    ``baton up`` that started this guard); none when it is not (the earlier start's, not
    rewritten yet: its pids may be anyone's by now, H3 session 36) or cannot be read."""
    try:
        written = json.loads(record.read_text(encoding="utf-8"))
        if int(written.get("pid", 0)) != parent:
            return {}
        pids = written.get("pids", {})
        return {str(name): int(pid) for name, pid in pids.items() if int(pid) > 0}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def runs(pid: int) -> bool:
    """``pid`` runs: exists and is no zombie (an orphan nobody reaped yet has ended; a
    container's init may never reap it, and the broker waited its whole bound)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: waited for, within the bound
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


class OrphanedStop:
    """``baton up``'s ordered stop, done by the guard once ``baton up`` is gone: the workers
    and the alerter (their parent-death SIGTERM) end first, :data:`WORKERS_S` at most; then
    the sink, whose parent-death signal only arms a late drain of its own, gets SIGTERM and
    reads gov.decisions to its end (:data:`SINK_S` at most); then the broker may go. A sink
    told at once, as every child was, finished before a worker still deciding what it had
    fetched published its last decisions (1,124 missing, session 36)."""

    def __init__(self, pids: dict[str, int], at: float) -> None:
        self.sink = pids.get("sink", 0)
        self.others = [pid for name, pid in pids.items() if name not in ("broker", "sink")]
        self.at = at
        self.sink_told: float | None = None

    def done(self, now: float) -> bool:
        """True once the broker may stop; tells the sink to drain when its turn comes."""
        if self.sink_told is None:
            if now - self.at < WORKERS_S and any(runs(pid) for pid in self.others):
                return False
            self.sink_told = now
            if self.sink and runs(self.sink):
                with contextlib.suppress(OSError):
                    os.kill(self.sink, DRAIN)
        return not (self.sink and runs(self.sink)) or now - self.sink_told >= SINK_S


def main(argv: list[str], clock: Callable[[], float] = time.monotonic) -> int:
    fd, record, parent = int(argv[0]), Path(argv[1]), int(argv[2])
    command = argv[argv.index("--") + 1 :]
    asked: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, ORPHANED):
        signal.signal(sig, lambda signum, _frame: asked.append(signum))
    release_signals()  # (before the broker starts: it inherits the mask)
    # `baton up`'s pid from its command line, not getppid(): one that died before this
    # process set its parent-death signal left it with init for a parent, never orphaned
    broker = subprocess.Popen(command, preexec_fn=_term_when_parent_dies)
    with os.fdopen(fd, "w") as told:
        told.write(str(broker.pid))
    ended_at: float | None = None
    orphaned: OrphanedStop | None = None
    while broker.poll() is None:
        now = clock()
        if orphaned is None and (ORPHANED in asked or os.getppid() != parent):
            orphaned = OrphanedStop(named_pids(record, parent), now)  # baton up is gone
        stop = any(s != ORPHANED for s in asked) or (orphaned is not None and orphaned.done(now))
        if stop and ended_at is None:
            broker.terminate()
            ended_at = now
        elif ended_at is not None and now - ended_at > _BROKER_END_S:
            broker.kill()
        time.sleep(0.1)
    code = broker.returncode
    return 128 - code if code < 0 else code


if __name__ == "__main__":  # pragma: no cover - the guard's process
    sys.exit(main(sys.argv[1:]))
