"""Session 11's attacks confirmed on a real worker and a real sink: what the audit keeps of a
forged answer a writer of gov.decisions flags as a re-emitted copy."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from confluent_kafka import Producer

from baton.schemas.events import HandoffRequested
from tests.helpers import wait_for
from tests.integration.test_audit_verify import Audit
from tests.integration.test_audit_verify import audit as audit  # the fixture
from tests.stack import EventSender

pytestmark = pytest.mark.integration


# a worker and a sink of its own (the audit fixture), ~15 s: the unit tests in
# tests/unit/test_attacks_session11_control.py hold the same on the sink's batch; this is the
# real-stack confirmation (fails on 42249ff's parent), out of the suite's 15-minute budget
@pytest.mark.soak
def test_a_forged_copy_is_kept_as_not_a_copy_and_the_workers_own_copy_folds_away(
    audit: Audit,
) -> None:
    """A request, then its retry (answered from the run's state: the worker's re-emitted
    copy), then two records a writer of gov.decisions adds under the same id, flagged
    ``reemitted``: one saying what the worker said (dropped, as a real copy is) and one
    saying ``stop`` where the worker said ``allow``. The audit holds the original once; the
    one forged answer that differs is ``not_a_copy``, its bytes kept; the worker's copy is not
    rejected."""
    assert audit.decisions is not None and audit.sink is not None
    request = HandoffRequested(
        request_id="f-1",
        run_id="forged-copy",
        task_id="research",
        from_agent="planner",
        to_agent="researcher",
        event_time=datetime.now(UTC),
    )
    sender = EventSender(audit.bootstrap, audit.catalog.requests)
    sender.send([request])
    first = wait_for(
        lambda: next(iter(audit.decisions.for_run("forged-copy")), None),  # type: ignore[union-attr]
        30,
        message="the worker's decision",
    )
    assert first.outcome == "allow" and not first.reemitted
    sender.send([request.model_copy(update={"event_time": datetime.now(UTC)})])
    wait_for(
        lambda: [d for d in audit.decisions.for_run("forged-copy") if d.reemitted],  # type: ignore[union-attr]
        30,
        message="the worker's re-emitted copy",
    )
    doc = orjson.loads(first.to_json())
    same = {**doc, "reemitted": True}
    flipped = {**same, "outcome": "stop", "reason": "handoff_budget_exceeded"}
    producer = Producer({"bootstrap.servers": audit.bootstrap})
    for forged in (same, flipped):
        producer.produce(
            audit.catalog.decisions,
            orjson.dumps(forged),
            b"forged-copy",
            partition=first.partition,
        )
    assert producer.flush(10) == 0
    audit.audited_all()
    rejected = wait_for(
        lambda: audit.sink.query(  # type: ignore[union-attr]
            "SELECT error_kind, raw FROM governance.rejected"
        ),
        60,
        message="the forged copy in governance.rejected",
    )
    assert [(kind, orjson.loads(raw)["outcome"]) for kind, raw in rejected] == [
        ("not_a_copy", "stop")
    ]
    rows = audit.sink.query(
        "SELECT count(), any(outcome) FROM governance.decisions FINAL "
        f"WHERE decision_id = '{first.decision_id}'"
    )
    assert rows == [(1, "allow")]
