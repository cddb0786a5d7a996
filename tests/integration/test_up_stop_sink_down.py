"""`baton up` stopped while its audit sink is down (crashed, waiting out its restart backoff):
the sink is started again to store the decisions before the broker stops (H2, session 35)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.up_load import stop_under_load

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_a_sink_that_crashed_just_before_the_stop_is_started_again_to_store_them(
    tmp_path: Path,
) -> None:
    """H2, session 35: the sink killed and waiting out its restart backoff when Ctrl-C came:
    3,535 and 7,235 decisions clients had received were not in the audit, and nothing said so."""

    def kill_the_sink(data_dir: Path) -> None:
        record = json.loads((data_dir / "stack.json").read_text())
        os.kill(record["pids"]["sink"], signal.SIGKILL)
        time.sleep(0.3)

    lines = stop_under_load(tmp_path / "stack", kill_the_sink)
    said = "\n".join(lines)
    assert "the audit sink was down: started again to store the decisions" in said, said[-3000:]


@pytest.mark.timeout(240)
def test_a_kill_9_of_baton_up_under_load_leaves_no_decision_a_client_got_out_of_the_audit(
    tmp_path: Path,
) -> None:
    """`baton up` killed with SIGKILL: every child got its parent-death SIGTERM at once, the
    broker (memory only) exited 5 s later and the sink, its pipe to `baton up` broken, died at
    its first write: 2,508 of 5,691 (H2, session 35), 3,437 and 1,124 (session 36) decisions
    clients had received were not in the audit. Now the broker's guard stops them in order
    (streams/broker_guard.py) and the children write their logs themselves."""
    stop_under_load(tmp_path / "stack", None, kill=True)
    sink_log = (tmp_path / "stack" / "logs" / "sink.log").read_text()
    assert "reading the decisions to their end first" in sink_log
    assert "audit sink stopped:" in sink_log
