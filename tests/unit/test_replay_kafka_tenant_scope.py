"""`baton replay --from-kafka --tenant T` takes a run by the tenant of its first event the
worker decided as the run's (session 18 H6): in_scope took it from the first record under the
run's key that parsed, in the order the records came from Kafka (partitions interleaved as
they come), whatever its topic or partition. A writer of a topic put one record under a
run's key naming another tenant where the worker decided nothing for it (a completion on
gov.approvals: a dead letter; the run's event on a hand-picked partition: forwarded), or a
grant read before the run's requests: the run left the tenant's scope, its change hidden,
exit 0 (the tenant's other runs replayed)."""

from __future__ import annotations

import pytest

from baton.cli.replay_kafka import in_scope
from baton.processors.batch import InputRecord
from baton.streams.partitioner import partition_for
from tests.unit.test_engine_support import completed, granted, handoff

pytestmark = pytest.mark.unit

REQUESTS, APPROVALS = "gov.handoff.requests", "gov.approvals"


def _acme_run() -> list:
    """Run ra of tenant acme: two handoffs on its own partition (0 of 2)."""
    assert partition_for(b"ra", 2) == 0
    events = [handoff(f"ra-h{n}", f"t{n}", "p", "r", run_id="ra", tenant="acme") for n in (0, 1)]
    return [
        (100 + n, REQUESTS, InputRecord(REQUESTS, 0, n, b"ra", e.to_json()))
        for n, e in enumerate(events)
    ]


@pytest.mark.parametrize(
    "first",
    [
        InputRecord(
            APPROVALS,
            0,
            0,
            b"ra",
            completed("ra-h0", "t0", "r", run_id="ra", tenant="other").to_json(),
        ),
        InputRecord(
            REQUESTS,
            1,
            0,
            b"ra",
            handoff("ra-x", "t9", "p", "r", run_id="ra", tenant="other").to_json(),
        ),
        InputRecord(
            APPROVALS,
            0,
            0,
            b"ra",
            granted("ap-x", "amy", run_id="ra").model_copy(update={"tenant": "other"}).to_json(),
        ),
    ],
    ids=["wrong-topic", "hand-picked-partition", "grant"],
)
def test_a_record_naming_another_tenant_read_first_keeps_a_run_in_its_tenants_scope(
    first: InputRecord,
) -> None:
    run = _acme_run()
    records = [(50, first.topic, first), *run]  # polled first
    scoped = in_scope(records, {}, None, "acme", partitions=2, approvals=APPROVALS)
    assert [r for r in scoped if r[2].topic == REQUESTS and r[2].partition == 0] == run
