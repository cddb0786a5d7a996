"""The parse processes' column path: for any chunk of records, the Native block, rows, token
material, rejected records and copies the row path makes, whatever the records hold."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import baton.sinks.sink_parse as sink_parse
from baton.schemas.decision import DECISION_FIELDS
from baton.sinks.audit_batch import AuditBatch, token_material
from baton.sinks.audit_insert import one_native_block
from baton.sinks.json_columns import encoded_chunk
from baton.sinks.json_rows import shortcut_row
from baton.sinks.rows import DecidedWindow
from tests.audit_support import hostile_records, scenario_decisions
from tests.unit.test_audit_sink_parse import TYPES, single_block

pytestmark = pytest.mark.unit

NOW = datetime.now(UTC).replace(microsecond=0)
WINDOW = DecidedWindow.around(NOW, 365)
DECISION_TYPES = TYPES["governance.decisions"]
Record = tuple[int, int, bytes | None]


def _row_path(records: list[Record], window: DecidedWindow | None = WINDOW) -> tuple[Any, ...]:
    """What ``parse_chunk`` made before the column path, its rows in one Native block."""
    batch = AuditBatch("gov.decisions")
    batch.window = window
    for partition, offset, value in records:
        row = (
            None
            if value is None
            else shortcut_row(value, "gov.decisions", partition, offset, window)
        )
        if row is None:
            batch.add(partition, offset, value)
        else:
            batch.rows.append(row)
    spans, material = token_material(batch.rows)
    block = single_block(batch.rows)
    return block, len(batch.rows), spans, material, batch.rejected, batch.copies


def _worker_records(n: int = 40, start: int = 0) -> list[bytes]:
    good = scenario_decisions(runs=4, start=NOW - timedelta(minutes=5))
    return [replace(d, decided_at=NOW).to_json() for d in good][start : start + n]


def _chunk(values: list[bytes | None]) -> list[Record]:
    return [(i % 3, 100 + i, value) for i, value in enumerate(values)]


def _same(records: list[Record], window: DecidedWindow | None = WINDOW) -> None:
    found = encoded_chunk("gov.decisions", window, DECISION_TYPES, records)
    assert found is not None
    expected = _row_path(records, window)
    assert found[1:6] == expected[1:]
    assert found[0] == expected[0]


def test_worker_records_make_the_row_paths_block_rows_and_token() -> None:
    _same(_chunk(_worker_records()))


def test_hostile_records_among_good_ones_end_as_the_row_path_ends_them() -> None:
    good = _worker_records(30)
    template = scenario_decisions(runs=1, start=NOW - timedelta(minutes=5))[0]
    values: list[bytes | None] = list(good)
    for i, (_, value, _) in enumerate(hostile_records(replace(template, decided_at=NOW))):
        values.insert(2 * i + 1, value)
    _same(_chunk(values))
    _same(_chunk(values), None)  # no TTL: no window (a decided_at of 1971 is a row)


def _with(raw: bytes, **fields: str) -> bytes:
    """``raw`` with some fields replaced by raw JSON text."""
    record = orjson.loads(raw)
    text = orjson.dumps({k: v for k, v in record.items() if k not in fields}).decode()
    extra = ",".join(f'"{k}":{v}' for k, v in fields.items())
    return (text[:-1] + ("," + extra if extra else "") + "}").encode()


def test_the_attackers_records_of_the_brief_are_rows_rejections_or_copies_as_before() -> None:
    good = _worker_records(12)
    values: list[bytes | None] = [
        good[0],
        _with(good[1], reason=json.dumps("r" * 60_000)),  # a 60 KB reason: a row
        good[2][:-10] + b"\xff\xfe" + good[2][-10:],  # invalid UTF-8: rejected
        _with(good[3], tenant="17"),  # a number where a string goes: rejected
        good[4],
        good[4],  # the same decision twice in one chunk: two rows (FINAL folds them)
        _with(good[5], decision_id=json.dumps(orjson.loads(good[4])["decision_id"])),
        b"not json at all",
        None,
        _with(good[6], spent_usd='"0.5"'),  # lax: the general path makes it a row
        _with(good[7], reemitted="true"),  # a copy: looked up after the rows are stored
        _with(good[8], event_time="null"),  # decided_at fills it in
        _with(good[9], outcome='"maybe"'),
        good[10],
    ]
    records = _chunk(values)
    _same(records)
    found = encoded_chunk("gov.decisions", WINDOW, DECISION_TYPES, records)
    assert found is not None
    rows, rejected, copies = found[1], found[4], found[5]
    assert rows == 8 and len(rejected) == 5 and len(copies) == 1


def test_a_chunk_of_records_the_column_path_cannot_read_at_all_is_the_row_paths() -> None:
    _same(_chunk([b"[]", None, b"\xff", _with(_worker_records(1)[0], spent_usd='"1.5"')]))
    _same([])


def test_column_types_it_does_not_write_leave_the_chunk_to_the_row_path() -> None:
    types = list(DECISION_TYPES)
    types[DECISION_FIELDS.index("decided_at")] = "DateTime64(3, 'UTC')"
    records = _chunk(_worker_records(5))
    assert encoded_chunk("gov.decisions", WINDOW, tuple(types), records) is None
    parsed = sink_parse.parse_chunk("gov.decisions", WINDOW, tuple(types), records)
    assert parsed.rows == 5 and parsed.native  # the row path, with the table's types


def test_a_failure_in_the_column_path_leaves_the_chunk_to_the_row_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = _chunk(_worker_records(6))
    expected = sink_parse.parse_chunk("gov.decisions", WINDOW, DECISION_TYPES, records)

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(sink_parse, "encoded_chunk", broken)
    parsed = sink_parse.parse_chunk("gov.decisions", WINDOW, DECISION_TYPES, records)
    assert (parsed.rows, parsed.material, parsed.spans) == (
        expected.rows,
        expected.material,
        expected.spans,
    )


def test_the_token_material_is_the_batch_tokens() -> None:
    ids = ["a", "é€", "", "a"]
    parts, offs = [2, 0, 2, 0], [5, 7, 9, 8]
    rows = [[i, p, o] for i, p, o in zip(ids, parts, offs, strict=True)]
    # the bytes stored tokens were made of (one part a row, each id encoded on its own), so a
    # retried batch keeps its token across versions; the column path and the rows share it
    stored = b"".join(
        b"%d:%d:%d:%s," % (p, o, len(i), i.encode())
        for i, p, o in zip(ids, parts, offs, strict=True)
    )
    assert token_material(rows) == ({2: (5, 9), 0: (7, 8)}, stored)
    assert list(token_material(rows)[0]) == [2, 0]


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["stop", "allow", "pre_handoff", "constrained", "", "0.5", "1", "acme"]),
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes(
        min_value=(NOW - timedelta(days=2)).replace(tzinfo=None),
        max_value=NOW.replace(tzinfo=None),
        timezones=st.none(),
    ).map(lambda d: d.replace(tzinfo=UTC).isoformat()),
)
_BASE = orjson.loads(_worker_records(1)[0])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.sampled_from([*DECISION_FIELDS, "extra"]), _VALUES, max_size=4),
            st.sets(st.sampled_from(DECISION_FIELDS), max_size=2),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_any_chunk_makes_the_row_paths_block_rows_rejections_and_token(
    changes: list[tuple[dict[str, Any], set[str]]],
) -> None:
    values: list[bytes | None] = []
    for k, (changed, dropped) in enumerate(changes):
        record = {**_BASE, "decision_id": f"d{k % 5}", **changed}
        for name in dropped:
            record.pop(name, None)
        values.append(json.dumps(record).encode())
    _same(_chunk(values))


def test_a_parse_process_reads_worker_records_by_columns_not_row_by_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = _chunk(_worker_records(8))

    def row_by_row(*args: object) -> None:
        raise AssertionError("a worker record went through the row path")

    monkeypatch.setattr(sink_parse, "shortcut_row", row_by_row)
    parsed = sink_parse.parse_chunk("gov.decisions", WINDOW, DECISION_TYPES, records)
    assert parsed.rows == 8 and parsed.native == _row_path(records)[0]


def _blocks(records: list[Record], step: int) -> list[tuple[bytes, int, tuple[int, ...] | None]]:
    out = []
    for i in range(0, len(records), step):
        found = encoded_chunk("gov.decisions", WINDOW, DECISION_TYPES, records[i : i + step])
        assert found is not None
        out.append((found[0], found[1], found[6]))
    return out


def test_a_batchs_chunks_go_to_clickhouse_as_one_block_of_all_their_rows() -> None:
    records = _chunk(_worker_records(40))
    records[5] = (records[5][0], records[5][1], b"not json")  # a chunk's rejected record
    records[7:9] = [(p, o, b"[]") for p, o, _ in records[7:9]]
    blocks = _blocks(records, 7) + _blocks(_chunk([None, b"{}"]), 2)  # + a chunk of no row
    assert one_native_block(blocks) == _row_path([*records, *_chunk([None, b"{}"])])[0]


def test_blocks_it_cannot_join_column_by_column_go_one_after_the_other() -> None:
    records = _chunk(_worker_records(20))
    blocks = _blocks(records, 10)
    row_paths = [(block, rows, None) for block, rows, _ in blocks]  # the row path's blocks
    assert one_native_block([blocks[0], row_paths[1]]) == blocks[0][0] + blocks[1][0]
    types = list(DECISION_TYPES)
    types[DECISION_FIELDS.index("tenant")] = "LowCardinality(String)"  # a dictionary each
    low = encoded_chunk("gov.decisions", WINDOW, tuple(types), records[10:])
    assert low is not None and low[0] != blocks[1][0]
    assert one_native_block([blocks[0], (low[0], low[1], low[6])]) == blocks[0][0] + low[0]
    lows = [
        encoded_chunk("gov.decisions", WINDOW, tuple(types), records[i : i + 10]) for i in (0, 10)
    ]
    assert one_native_block([(b[0], b[1], b[6]) for b in lows if b]) == b"".join(
        b[0] for b in lows if b
    )
