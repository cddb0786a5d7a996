"""Session 18 (H2, F7): the audit sink's receive bound, and a partition stalled behind it.

Session 17 let the sink's librdkafka receive fetch answers of up to 2 GiB so that one record
of 101 MB no longer stalled a partition; but an answer costs the sink about twice its size in
memory (librdkafka's buffer and Python's copy of the record), so a writer of gov.decisions
could make it take ~4 GiB. The bound is now ``BATON_SINK_MAX_RECEIVE_BYTES`` (default: the
largest batch Tansu takes after a fetch's worth of others). A batch past it is not skipped
(Tansu puts readable records and the oversized batch into one answer, so the sink cannot tell
which offset to skip: docs/audit.md): the stall is counted, logged and exported instead.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from baton.processors.metrics_audit import SinkMetrics
from baton.schemas.settings import Settings
from baton.sinks.rows import MAX_RECORD_BYTES, RejectKind
from baton.sinks.sink_loop import AuditSink
from baton.sinks.sink_start import DEFAULT_MAX_RECEIVE_BYTES, audit_consumer_config
from baton.sinks.sink_stats import SinkStats
from tests.audit_support import scenario_decisions
from tests.unit.test_audit_sink_parse import TYPES

pytestmark = pytest.mark.unit

NOW = datetime.now(UTC)

#: librdkafka's error_cb text for an answer past receive.message.max.bytes (measured)
REFUSED = (
    'KafkaError{code=_BAD_MSG,val=-199,str="127.0.0.1:60939/111: Receive failed: Invalid '
    "response size 25000592 (0..20000000): increase receive.message.max.bytes (after 120ms in "
    'state UP)"}'
)


def test_the_receive_bound_is_far_below_2_gib_and_a_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().sink_max_receive_bytes == DEFAULT_MAX_RECEIVE_BYTES < 400 * 1024 * 1024
    monkeypatch.setenv("BATON_SINK_MAX_RECEIVE_BYTES", "20000000")
    bound = Settings().sink_max_receive_bytes
    conf = audit_consumer_config({"bootstrap.servers": "127.0.0.1:1"}, "g", None, bound)
    assert conf["receive.message.max.bytes"] == 20_000_000
    # librdkafka refuses a consumer whose fetch.max.bytes is within 512 B of the bound
    assert conf["fetch.max.bytes"] == 20_000_000 - 512


def test_an_answer_past_the_bound_is_counted_named_and_exported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = SinkStats()
    with caplog.at_level(logging.WARNING, logger="baton.sinks.sink"):
        stats.kafka_error('KafkaError{code=_TRANSPORT,str="Disconnected"}')
        stats.kafka_error(REFUSED)
        stats.kafka_error(REFUSED)
    assert stats.oversized_answers == 2
    assert "2 fetch answers past the receive bound, a partition stalled" in stats.describe()
    assert "Invalid response size 25000592" in stats.describe()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    # the first refusal is logged, the next within a minute only counted (one a second for
    # as long as the stall lasts filled the sink's log)
    assert len(errors) == 1 and "BATON_SINK_MAX_RECEIVE_BYTES" in errors[0]
    assert any("Disconnected" in r.getMessage() for r in caplog.records)  # still logged
    metrics = {m.name: m for m in SinkMetrics(lambda: stats).collect()}
    assert metrics["baton_audit_oversized_answers"].samples[0].value == 2


def test_a_stall_logs_its_error_once_a_minute_with_the_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("baton.sinks.sink_stats.time.monotonic", lambda: clock[0])
    stats = SinkStats()
    with caplog.at_level(logging.ERROR, logger="baton.sinks.sink"):
        for _ in range(120):  # two minutes of one refused answer a second
            stats.kafka_error(REFUSED)
            clock[0] += 1.0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "(60 since the last line)" in errors[1]
    assert stats.oversized_answers == 120
    assert "120 fetch answers past" in stats.describe()


class _Parsers:
    """Parse processes that only note what they are sent."""

    alive = True

    def __init__(self) -> None:
        self.sent: list[list[tuple[int, int, bytes | None]]] = []

    def submit(self, window: object, types: object, records: list[Any], *keys: object) -> object:
        self.sent.append(list(records))
        return object()


def test_a_record_past_the_bound_is_never_copied_whole_to_a_parse_process() -> None:
    """Measured at 13:02 (260 MB record, the default bound): the sink's process peaked at
    870 MiB and a parse process at 615 MiB (~2x the record each); a chunk holding a record
    past MAX_RECORD_BYTES is now parsed in the sink's process, where it is cut to its head."""
    sink = AuditSink({}, None, "gov.decisions", group_id="g")  # type: ignore[arg-type]
    parsers = _Parsers()
    sink._parsers, sink._types = parsers, TYPES  # type: ignore[assignment]
    good = [replace(d, decided_at=NOW) for d in scenario_decisions(runs=1)][:2]
    sink._take([(0, 0, good[0].to_json())])  # a chunk of small records goes to a parse process
    sink._take([(0, 1, good[1].to_json()), (0, 2, b"x" * (MAX_RECORD_BYTES + 1))])
    assert [[offset for _, offset, _ in chunk] for chunk in parsers.sent] == [[0]]
    assert [(r[2], r[5]) for r in sink._batch.rejected] == [(2, RejectKind.OVERSIZED)]
    assert len(sink._batch.rows) == 2  # the whole batch parsed here, offset 0's row too
