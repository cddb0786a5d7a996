"""Session 11 (H3): tests/unit/test_attacks_session11_rules.py's breaks through a real `baton
worker` over Tansu: a deep agent naming no parent under ``require_lineage`` (allowed at
depth 1)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from baton.schemas.decision import Outcome, Reason
from baton.streams.embedded import EmbeddedBroker
from tests.helpers import handoff
from tests.stack import Collector, EventSender, WorkerProcess, fresh_topics, wait_deciding

from .conftest import PARTITIONS, Stack

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
    prefix = f"l{uuid.uuid4().hex[:8]}."
    policy_path = workdir / "policy.yaml"
    policy_path.write_text(POLICY)
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    s = Stack(
        broker.bootstrap,
        prefix,
        catalog,
        workdir,
        [],
        Collector(broker.bootstrap, catalog.decisions),
        Collector(broker.bootstrap, catalog.stops),
        Collector(broker.bootstrap, catalog.deadletter, decisions=False),
        EventSender(broker.bootstrap, catalog.requests),
        policy_path,
    )
    try:
        worker = WorkerProcess(
            broker.bootstrap,
            prefix,
            workdir,
            partitions=PARTITIONS,
            policy=policy_path,
            extra_env=RETENTION,
        )
        s.workers.append(worker)
        try:
            wait_deciding(broker.bootstrap, catalog)
        except Exception as exc:
            raise AssertionError(f"worker did not start: {exc}\n{worker.log()}") from exc
        yield s
    finally:
        for w in s.workers:
            w.stop()
        s.decisions.close()
        s.stops.close()
        s.deadletters.close()


def _run() -> str:
    return f"run_{uuid.uuid4().hex[:8]}"


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
