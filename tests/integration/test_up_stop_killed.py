"""`baton up` itself killed (SIGKILL) under load: its broker's guard stops the stack in order
(streams/broker_guard.py) and no decision a client got is missing from the audit (session 36).
A file of its own: the load tests of the stop run in parallel."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.up_load import stop_under_load

pytestmark = pytest.mark.integration


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
