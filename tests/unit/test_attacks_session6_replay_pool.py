"""The sixth session's attack review of `baton replay`'s forked --jobs pool (start_pool): a
pool process killed or refused mid-replay, hostile rows only in the pieces the pool replays,
an exception that does not travel back, the reading process killed or interrupted. Each
scenario runs in a process of its own (a pool forks it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
#: the decode a pool process runs: page_rows, or a hostile piece's misdeed
HOSTILE = """
import os, signal, time
from baton.sinks.replay_source import page_rows


class TwoArgs(Exception):
    # pickles, but its pickle does not load (args do not match __init__)
    def __init__(self, a, b):
        super().__init__(f"{a} {b}")


def decode(piece):
    if piece == b"DIE":
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer ends a pool process
    if piece == b"UNPICKLABLE":
        raise TwoArgs("x", "y")
    if piece == b"SLOW":
        time.sleep(60)
    return page_rows(piece)
"""
#: a replay of three pieces, the first (the pool's: it is handed to the pool first) given by
#: argv[2], with a pool forked by start_pool as `baton replay` forks it
SCENARIO = """
import os, sys

sys.path.insert(0, sys.argv[1])
import h5_hostile
from baton.processors.replay_pool import replay_pieces, start_pool, stop_pool
from tests.unit.test_engine_support import policy_with
from tests.unit.test_replay import KEY, _budget_history, _policies, record
from tests.unit.test_replay_read import _page

loose, strict = policy_with(max_handoffs=20), policy_with(max_handoffs=3)
rows = [r for i in range(6) for r in record(loose, _budget_history(f"r{i}", 5, 1.0))]
first = sys.argv[2].encode()
if first == b"BROKEN":  # a run whose second input no longer parses: broken, exit 7
    first = _page([rows[0], rows[1]._replace(input='{"type":"handoff_requested"}'), *rows[2:10]])
pieces = [first, _page(rows[10:20]), _page(rows[20:])]
pool = start_pool(1)
assert pool is not None and pool._mp_context.get_start_method() == "fork"
print("pool", *[p for p in pool._processes], flush=True)
try:
    two = replay_pieces(pieces, h5_hostile.decode, strict, _policies(loose), KEY, 2, pool=pool)
except BaseException as exc:  # as the command does (cli.replay_cmds._replay): the pool stopped
    stop_pool(pool)
    print("raised", type(exc).__name__, exc, flush=True)
    raise SystemExit(3)
pool.shutdown(wait=True, cancel_futures=True)
one = replay_pieces(pieces, h5_hostile.decode, strict, _policies(loose), KEY, 1)
same = (  # every run's outcome (a dataclass: every field), in order
    two.runs == one.runs and list(two.partial.items()) == list(one.partial.items())
    and two.broken == one.broken and two.transitions == one.transitions
    and two.decisions == one.decisions and len(one.runs) == 5
)
print("same" if same else "differs", "broken", two.broken, "partial", sorted(two.partial))
"""


def _start(tmp_path: Path, first: str) -> subprocess.Popen[bytes]:
    (tmp_path / "h5_hostile.py").write_text(HOSTILE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    return subprocess.Popen(
        [sys.executable, "-c", SCENARIO, str(tmp_path), first],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its pool in its process group: killed with it at the end
    )


def _run(tmp_path: Path, first: str) -> tuple[int, str]:
    proc = _start(tmp_path, first)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"the replay with a {first} piece still runs after 30 s") from None
    return proc.returncode, out.decode() + err.decode()[-2000:]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pool_pids(proc: subprocess.Popen[bytes]) -> list[int]:
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("pool "), line
    return [int(p) for p in line.split()[1:]]


def test_hostile_rows_in_the_pool_s_piece_are_reported_as_one_process_reports_them(
    tmp_path: Path,
) -> None:
    code, out = _run(tmp_path, "BROKEN")
    assert code == 0, out
    assert "same broken ['r0'] partial ['r0']" in out, out


def test_a_pool_process_killed_mid_replay_fails_the_replay(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "DIE")
    assert code == 3 and "raised ReplayFailed" in out, out


def test_an_exception_whose_pickle_does_not_load_fails_the_replay_closed(
    tmp_path: Path,
) -> None:
    # (one process raises TwoArgs itself; the pool's result does not load: the pool is broken,
    # ReplayFailed, exit 7, whose words guess at memory; never a replay that goes on)
    code, out = _run(tmp_path, "UNPICKLABLE")
    assert code == 3 and "raised ReplayFailed" in out, out
    assert "could not be read back" in out and "TypeError" in out, out  # the pool's own reason


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_replay_killed_leaves_no_pool_process_behind(tmp_path: Path, how: str) -> None:
    # `timeout 600 baton replay ...` (SIGTERM), the OOM killer or kill -9 on the reading
    # process: its forked pool process waited for work for ever, holding the command's
    # stdout and stderr open (a CI step reading them never ended)
    proc = _start(tmp_path, "SLOW")
    try:
        pool = _pool_pids(proc)
        time.sleep(0.3)  # the SLOW piece in the pool
        os.kill(proc.pid, getattr(signal, how))
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(map(_alive, pool)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, pool)), f"pool processes {pool} outlive the replay"
    finally:
        for pid in pool if "pool" in locals() else []:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_ctrl_c_ends_the_replay_and_its_pool(tmp_path: Path) -> None:
    # Ctrl-C reaches the terminal's whole process group: the reader and its pool
    proc = _start(tmp_path, "SLOW")
    try:
        pool = _pool_pids(proc)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=10)
        assert proc.returncode != 0
        deadline = time.monotonic() + 5
        while any(map(_alive, pool)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, pool)), f"pool processes {pool} outlive Ctrl-C"
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
