"""`baton up` stops in order: a terminal's Ctrl-C reaches `baton up` alone (its children run in
process groups of their own), which stops the worker, then the sink, which reads the decisions
to their end first, then the broker. Every child got the signal at once before, and a stop at
3,000 decisions/s left 294-425 decisions clients had received out of the audit, forgotten with
the embedded broker: a restart restored their runs with less spend and fewer handoffs
(session 35)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.up_load import stop_under_load

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_a_ctrl_c_under_load_leaves_no_decision_a_client_got_out_of_the_audit(
    tmp_path: Path,
) -> None:
    lines = stop_under_load(tmp_path / "stack", None)
    sink_log = (tmp_path / "stack" / "logs" / "sink.log").read_text()
    assert "reading the decisions to their end first" in sink_log
    assert "baton up: stopping" in "\n".join(lines)
    assert not any("not in the audit" in ln or "could not tell" in ln for ln in lines), lines


def test_the_decisions_the_sink_group_has_not_committed_are_counted(
    broker: Any, topic_prefix: str
) -> None:
    """What `baton up` says before its broker goes when the audit did not get everything:
    records past the sink group's committed offsets, each partition's end as a read finds it
    (Tansu's ListOffsets answers a record batch's start + 1)."""
    from baton.cli.up_stop import unaudited
    from baton.schemas.settings import Settings
    from tests.audit_support import create_topic, produce_records

    settings = Settings(bootstrap=broker.bootstrap, topic_prefix=topic_prefix, app_id="stopcount")
    topic = f"{topic_prefix}gov.decisions"
    create_topic(broker.bootstrap, topic, partitions=2)
    assert unaudited(settings) == 0
    landed = produce_records(broker.bootstrap, topic, [(b"k1", b"x")] * 7 + [(b"k2", b"y")] * 5)
    assert unaudited(settings) == 12  # a sink that never committed
    first = landed[0][0]
    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": "stopcount-audit", "log_level": 0}
    )
    try:
        consumer.commit(offsets=[TopicPartition(topic, first, 4)], asynchronous=False)
    finally:
        consumer.close()
    assert unaudited(settings) == 12 - 4
