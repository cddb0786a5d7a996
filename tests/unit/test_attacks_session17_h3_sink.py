"""Session 17 (H3, F7): a record far larger than any decision, on gov.decisions.

Tansu takes a record of any size (it ignores max.message.bytes). Past 100 MB the sink's
librdkafka never received the fetch answer holding it (receive.message.max.bytes), so nothing
after it in its partition was audited again (tests/integration/
test_attacks_session17_h3_sink.py); read, a record of megabytes was parsed whole and stored
whole: as a row (a valid decision of a 2 MB detail) or as a rejected record's ``raw``.

Now the sink's consumer takes the largest answer librdkafka can, and a record past
``MAX_RECORD_BYTES`` is rejected ``oversized`` unparsed, its first ``KEPT_BYTES`` kept, on
every path (the row path, the parse processes' shortcut and columns).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from baton.sinks.audit_batch import DECISIONS_TABLE, AuditBatch
from baton.sinks.rows import KEPT_BYTES, MAX_RECORD_BYTES, RejectKind
from baton.sinks.sink_parse import parse_chunk
from baton.sinks.sink_start import audit_consumer_config
from tests.audit_support import scenario_decisions
from tests.unit.test_audit_sink_parse import TYPES

pytestmark = pytest.mark.unit

NOW = datetime.now(UTC)


def _records() -> list[tuple[int, int, bytes | None]]:
    good = [replace(d, decided_at=NOW) for d in scenario_decisions(runs=1)][:3]
    huge = replace(good[0], decision_id="huge", detail="x" * (MAX_RECORD_BYTES + 1)).to_json()
    junk = b"\x00" * (MAX_RECORD_BYTES + 1)
    values = [good[0].to_json(), huge, good[1].to_json(), junk, good[2].to_json()]
    return [(0, i, v) for i, v in enumerate(values)]


def _check(rows: int, rejected: list[list[object]]) -> None:
    assert rows == 3
    assert [(r[2], r[5]) for r in rejected] == [
        (1, RejectKind.OVERSIZED),
        (3, RejectKind.OVERSIZED),
    ]
    for r in rejected:
        assert len(str(r[4])) <= 2 * KEPT_BYTES  # its head only (escaped bytes: at most 2x)
        assert f"over the sink's bound of {MAX_RECORD_BYTES:,}" in str(r[3])


def test_a_record_past_the_bound_is_rejected_unparsed_by_the_row_path() -> None:
    batch = AuditBatch("gov.decisions", 365, lambda: NOW)
    for record in _records():
        batch.add(*record)
    _check(len(batch.rows), batch.rejected)


def test_a_record_past_the_bound_is_rejected_unparsed_by_a_parse_process() -> None:
    batch = AuditBatch("gov.decisions", 365, lambda: NOW)
    chunk = parse_chunk("gov.decisions", batch.window, TYPES[DECISIONS_TABLE], _records())
    _check(chunk.rows, chunk.rejected)


def test_the_sinks_consumer_takes_an_answer_holding_the_largest_batch_tansu_takes() -> None:
    """Session 18 (H2): not 2 GiB any more (an answer costs ~2x its size in memory), but still
    what one batch of Tansu's largest (256 MiB) after a fetch's worth of others needs."""
    conf = audit_consumer_config({"bootstrap.servers": "127.0.0.1:1"}, "g")
    assert conf["receive.message.max.bytes"] == 256 * 1024 * 1024 + conf["fetch.max.bytes"] + 512
