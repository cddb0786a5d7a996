"""Session 11 (H3): tests/unit/test_attacks_session11_rules.py's breaks through a real `baton
worker` over Tansu: a report redelivered after its run became a tombstone (counted twice),
and a deep agent naming no parent under ``require_lineage`` (allowed at depth 1)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from baton.schemas.decision import Outcome, Reason
from baton.schemas.events import HandoffCompleted
from baton.streams.embedded import EmbeddedBroker
from tests.helpers import handoff, wait_for

from .conftest import PARTITIONS, Stack, one_worker_stack

pytestmark = pytest.mark.integration

#: tenant "lineage" requires it; the default tenant decides as before
POLICY = """\
multi_agent:
  max_agents_per_run: 20
  max_handoffs: 50
  max_delegation_depth: 2
  shared_max_usd: 10
tenants:
  lineage: {require_lineage: true}
"""
#: runs idle for 3 s become tombstones (the sweep runs every second)
RETENTION = {"BATON_RUN_RETENTION_S": "3", "BATON_TOMBSTONE_RETENTION_S": "600"}


@pytest.fixture(scope="module")
def h3_stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("h3s11")
    with one_worker_stack(broker, workdir, POLICY, "l", extra_env=RETENTION) as s:
        yield s


def _run() -> str:
    return f"run_{uuid.uuid4().hex[:8]}"


def test_a_worker_counts_a_report_redelivered_to_its_tombstone_once(h3_stack: Stack) -> None:
    run = _run()
    report = HandoffCompleted(
        request_id=f"{run}-h1",
        run_id=run,
        task_id="t1",
        agent="billing",
        cost_usd=2.0,
        event_time=datetime.now(UTC),
    )
    h3_stack.requests.send([handoff(run, 1, "t1", "planner", "billing"), report])
    allow, counted = h3_stack.decisions.wait_run(run, 2)
    assert (allow.outcome, counted.reason, counted.spent_usd) == (Outcome.ALLOW, "within_budget", 2)
    changelog = f"baton-{h3_stack.prefix.rstrip('.')}-runs-changelog"
    reader = Consumer({"bootstrap.servers": h3_stack.bootstrap, "group.id": f"r-{changelog}"})
    reader.assign([TopicPartition(changelog, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    records: list[dict[str, Any]] = []

    def tombstone() -> list[dict[str, Any]]:
        while (msg := reader.poll(0.2)) is not None:
            if not msg.error() and msg.key() == run.encode() and msg.value() is not None:
                records.append(orjson.loads(msg.value()))
        return [r for r in records if r.get("ev")]

    try:
        [tomb] = wait_for(
            tombstone, 30, message=lambda: f"the run's tombstone: {records}; {h3_stack.logs()}"
        )
    finally:
        reader.close()
    assert [k[:2] for k in tomb["keys"]] == ["c#"]  # the tombstone keeps its report's mark

    h3_stack.requests.send([report])  # the same record again (a re-sent or replayed report)

    *_, again = h3_stack.decisions.wait_run(run, 3)
    # it was decided anew and counted: within_budget, spent 4.0
    assert (again.outcome, again.reason, again.spent_usd) == (
        Outcome.RECORDED,
        Reason.REPLY_NOT_KEPT,
        2,
    )


def test_a_worker_stops_a_deep_agent_that_names_no_parent_under_require_lineage(
    h3_stack: Stack,
) -> None:
    decided = {}
    for tenant in ("default", "lineage"):
        run = _run()
        h3_stack.requests.send(
            [
                handoff(run, 1, "t1", "planner", "a", tenant=tenant),
                handoff(run, 2, "t2", "a", "b", parent="t1", tenant=tenant),  # depth 2 of 2
                handoff(run, 3, "t3", "b", "c", tenant=tenant),  # no parent: depth 1
            ]
        )
        decided[tenant] = h3_stack.decisions.wait_run(run, 3)
    assert [d.outcome for d in decided["default"]] == [Outcome.ALLOW] * 3  # as before
    first, second, dodge = decided["lineage"]
    assert [first.outcome, second.outcome] == [Outcome.ALLOW, Outcome.ALLOW]
    assert (dodge.outcome, dodge.reason) == (Outcome.STOP, Reason.LINEAGE_REQUIRED)
    assert dodge.detail is not None and "names no parent_task_id" in dodge.detail
