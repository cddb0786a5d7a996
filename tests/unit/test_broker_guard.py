"""The guard of `baton up`'s broker (streams/broker_guard.py): with `baton up` gone, the
workers end first, then the sink is told to drain, then the broker stops (session 36: a
`baton up` killed with SIGKILL left 997-3,437 decisions clients had received out of the
audit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from baton.streams.broker_guard import DRAIN, SINK_S, WORKERS_S, OrphanedStop, named_pids, runs
from tests.helpers import wait_for

pytestmark = pytest.mark.unit

_SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def _ends_on_sigterm(mark: Path) -> list[str]:
    """A process that writes the time of its SIGTERM (or the guard's SIGUSR2) to ``mark`` and
    exits 0 then."""
    code = (
        "import signal, sys, time\n"
        f"def end(*_):\n    open({str(mark)!r}, 'w').write(repr(time.time())); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, end)\n"
        "signal.signal(signal.SIGUSR2, end)\n"
        "open(" + repr(str(mark) + ".up") + ", 'w').close()\n"
        "time.sleep(60)\n"
    )
    return [sys.executable, "-c", code]


def test_the_sink_is_told_once_the_workers_ended_and_the_broker_goes_after_it(
    tmp_path: Path,
) -> None:
    worker = subprocess.Popen(_SLEEP)
    sink = subprocess.Popen(_ends_on_sigterm(tmp_path / "sink"))
    try:
        wait_for(lambda: (tmp_path / "sink.up").exists(), 10)
        stop = OrphanedStop({"broker": 1, "worker": worker.pid, "sink": sink.pid}, at=0.0)
        assert not stop.done(1.0) and not stop.done(WORKERS_S - 1)  # the worker runs
        assert sink.poll() is None and stop.sink_told is None
        worker.kill()
        worker.wait()
        stop.done(WORKERS_S - 0.5)  # its turn: SIGTERM, it drains
        assert stop.sink_told == WORKERS_S - 0.5
        assert sink.wait(10) == 0 and (tmp_path / "sink").exists()
        assert stop.done(WORKERS_S)
    finally:
        for proc in (worker, sink):
            proc.kill()
            proc.wait()


def test_each_wait_is_bounded(tmp_path: Path) -> None:
    hung = subprocess.Popen(_SLEEP)  # a worker that never ends, a sink deaf to SIGTERM
    up = tmp_path / "deaf.up"
    deaf = subprocess.Popen(
        [
            sys.executable,
            "-c",
            # deaf to the guard's drain signal too: one that died of it had "ended" if the
            # kernel delivered it before runs() read /proc (CI, session 50)
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"signal.signal({DRAIN.value}, signal.SIG_IGN); "
            f"open({str(up)!r}, 'w').close(); time.sleep(60)",
        ]
    )
    try:
        wait_for(up.exists, 10)
        stop = OrphanedStop({"worker": hung.pid, "sink": deaf.pid}, at=100.0)
        assert not stop.done(100.0 + WORKERS_S - 0.1)
        assert not stop.done(100.0 + WORKERS_S)  # the sink told, given its time
        time.sleep(0.2)  # were the signal to end it, it would have by now
        assert deaf.poll() is None
        assert not stop.done(100.0 + WORKERS_S + SINK_S - 0.1)
        assert stop.done(100.0 + WORKERS_S + SINK_S)
        assert OrphanedStop({}, at=0.0).done(0.0)  # nothing named (no record): at once
    finally:
        for proc in (hung, deaf):
            proc.kill()
            proc.wait()


def test_a_zombie_has_ended_and_an_unreadable_record_names_nothing(tmp_path: Path) -> None:
    """An orphan nobody reaped (a container's init may never) kept the broker its whole
    bound."""
    proc = subprocess.Popen(["true"])
    wait_for(lambda: not runs(proc.pid), 10)  # ended, not reaped: a zombie
    assert Path(f"/proc/{proc.pid}").exists()
    proc.wait()
    assert runs(os.getpid())
    record = tmp_path / "stack.json"
    assert named_pids(record, 5) == {}
    record.write_text("{not json")
    assert named_pids(record, 5) == {}
    record.write_text(json.dumps({"pid": 5, "pids": {"broker": 7, "sink": 9, "worker": 0}}))
    assert named_pids(record, 5) == {"broker": 7, "sink": 9}
    # the earlier start's record, not rewritten yet when baton up died: its pids may be
    # anyone's by now (H3, session 36: an unrelated process got the guard's SIGTERM)
    assert named_pids(record, 6) == {}


def test_a_guard_whose_parent_died_stops_the_sink_before_the_broker(tmp_path: Path) -> None:
    """The whole path: a parent starts the guard as `baton up` does and dies; the guard tells
    the sink the record names, then stops its broker."""
    sink = subprocess.Popen(_ends_on_sigterm(tmp_path / "sink"))
    record = tmp_path / "stack.json"
    broker = _ends_on_sigterm(tmp_path / "broker")
    pids = {"broker": 1, "sink": sink.pid}
    parent = f"""
import json, os, subprocess, sys, time
from baton.streams.embedded import orphaned_when_parent_dies
open({str(record)!r}, "w").write(json.dumps({{"pid": os.getpid(), "pids": {pids!r}}}))
r, w = os.pipe()
guard = subprocess.Popen(
    [sys.executable, "-m", "baton.streams.broker_guard", str(w), {str(record)!r},
     str(os.getpid()), "--", *{broker!r}],
    pass_fds=(w,), preexec_fn=orphaned_when_parent_dies)
os.close(w)
print(guard.pid, os.read(r, 32).decode(), flush=True)
time.sleep(1.0)
"""
    try:
        wait_for(lambda: (tmp_path / "sink.up").exists(), 10)
        out = subprocess.run(
            [sys.executable, "-c", parent], capture_output=True, text=True, timeout=30
        )
        guard_pid, broker_pid = (int(n) for n in out.stdout.split())
        assert sink.wait(15) == 0  # told by the guard, its parent gone
        wait_for(lambda: (tmp_path / "broker").exists(), 15)
        sink_at = float((tmp_path / "sink").read_text())
        assert sink_at <= float((tmp_path / "broker").read_text())
        wait_for(lambda: not runs(guard_pid) and not runs(broker_pid), 15)
    finally:
        sink.kill()
        sink.wait()
    assert time.time() - sink_at < 30


def test_a_guard_whose_parent_died_before_it_could_tell_is_orphaned_at_once(
    tmp_path: Path,
) -> None:
    """`baton up` dead before the guard set its parent-death signal (H3, session 36): the
    guard's parent is init by then; compared with `baton up`'s pid from its command line, it
    stops its broker instead of running with it for ever."""
    read, write = os.pipe()
    guard = subprocess.Popen(
        [sys.executable, "-m", "baton.streams.broker_guard", str(write), str(tmp_path / "none"),
         "1", "--", *_SLEEP],
        pass_fds=(write,),
    )  # fmt: skip
    os.close(write)
    try:
        assert guard.wait(20) == 128 + 15  # its broker ended by SIGTERM
    finally:
        guard.kill()
        guard.wait()
        os.close(read)


def test_a_draining_sink_told_by_the_guard_keeps_draining() -> None:
    """`baton up` killed during its own ordered stop: its sink drains already, and the guard's
    signal must not be the second SIGTERM that stops a drain at once (H3, session 36)."""
    import signal
    import threading

    from baton.cli.sink_cmd import _drain_first

    stop = threading.Event()
    handlers = {
        s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, DRAIN)
    }
    try:
        drain = _drain_first(stop, 30.0, lambda _line: None)
        assert drain is not None
        signal.raise_signal(DRAIN)  # not draining yet: the guard's turn starts the drain
        assert drain.is_set() and not stop.is_set()
        signal.raise_signal(DRAIN)  # draining: it goes on
        assert not stop.is_set()
        signal.raise_signal(signal.SIGTERM)  # a second stop signal: at once, as before
        assert stop.is_set()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
