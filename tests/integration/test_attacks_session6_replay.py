"""The sixth session's attack review of `baton replay --jobs` on a real chDB audit: rows an
attacker altered in the table, replayed by the forked pool or by one process, give the same
exit and the same JSON report byte for byte; a host that cannot fork replays in one process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: rows altered in place, as a writer of the audit table can: one run's second input no
#: longer parses (broken), another's padded to 60 KB (not reproduced: unfaithful)
ALTER = [
    'ALTER TABLE governance.decisions UPDATE input = \'{"type":"handoff_requested"}\' '
    "WHERE run_id = 'run-00700' AND handoff_count = 2 AND phase = 'pre_handoff'",
    "ALTER TABLE governance.decisions UPDATE input = concat(input, repeat(' ', 60000)) "
    "WHERE run_id = 'run-00400' AND handoff_count = 2 AND phase = 'pre_handoff'",
]
#: os.fork failing as at a container's pids limit (EAGAIN), then the command
NO_FORK = """
import os, sys

def refused():
    raise BlockingIOError(11, "Resource temporarily unavailable")

if sys.argv.pop(1) == "no-fork":
    os.fork = refused
from baton.cli.main import main
main()
"""


@pytest.fixture(scope="module")
def hostile_audit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.replay_bench import record as bench_record
    from tests.chdb_audit import chdb_audit
    from tests.unit.test_engine_support import policy_with

    root = tmp_path_factory.mktemp("hostile")
    client = chdb_audit(root / "chdb", bench_record(800, 6_000, policy_with(max_handoffs=20)))
    try:
        for sql in ALTER:
            client.command(sql, settings={"mutations_sync": 2})
    finally:
        client.close()
    (root / "stricter.yaml").write_text("multi_agent:\n  max_handoffs: 3\n")
    return root


def _replay(audit: Path, jobs: str, fork: str = "fork") -> tuple[int, bytes, str]:
    from bench.replay_bench import KEY

    env = {**os.environ, "PYTHONPATH": str(ROOT), "BATON_AUDIT_CHAIN_KEY": KEY.decode()}
    argv = ["replay", "--policy", str(audit / "stricter.yaml"), "--jobs", jobs]
    argv += ["--dsn", f"chdb://{audit / 'chdb'}", "--format", "json"]
    out = subprocess.run(
        [sys.executable, "-c", NO_FORK, fork, *argv],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    # the seconds it took are the one thing that may differ
    report = re.sub(rb'"seconds": [0-9.e+-]+', b'"seconds": 0', out.stdout)
    return out.returncode, report, out.stderr.decode()[-1500:]


def test_altered_rows_replayed_by_the_forked_pool_report_byte_for_byte_as_one_process(
    hostile_audit: Path,
) -> None:
    one, two = _replay(hostile_audit, "1"), _replay(hostile_audit, "2")
    assert one[0] == 7, one[2]  # a gate never passes an altered audit
    assert two[0] == 7, two[2]
    assert two[1] == one[1]
    assert b'"run-00700"' in one[1] and b'"run-00400"' in one[1]


def test_a_host_that_cannot_fork_replays_in_one_process_with_the_same_exit(
    hostile_audit: Path,
) -> None:
    # (the forked pool's start raised BlockingIOError out of the command: a traceback and
    # exit 1, the code of "the policy changes runs", with nothing replayed)
    one, refused = _replay(hostile_audit, "1"), _replay(hostile_audit, "2", "no-fork")
    assert refused[0] == one[0] == 7, refused[2]
    assert refused[1] == one[1]
    assert refused[2].startswith("baton: error: ") and "Traceback" not in refused[2]
