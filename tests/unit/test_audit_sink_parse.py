"""The sink's parse processes: the rows, rejections, Native block and token its own parse makes,
and every failure of theirs (death, a refused block, a revoke, new types) ends in the row path."""

from __future__ import annotations

import copy
import os
import re
import signal
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from types import SimpleNamespace
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from baton.schemas.errors import AuditUnavailable
from baton.sinks.audit_batch import DECISIONS_TABLE, REJECTED_TABLE, AuditBatch, write_batch
from baton.sinks.audit_insert import _driver_types, native_block, times_as_ticks
from baton.sinks.rows import DECISION_COLUMNS, RejectKind
from baton.sinks.sink_parse import ParseProcesses, parse_chunk
from tests.audit_support import hostile_records, scenario_decisions
from tests.helpers import wait_for

pytestmark = pytest.mark.unit

NOW = datetime.now(UTC).replace(microsecond=0)


def _column_types() -> dict[str, str]:
    """governance.decisions' column types as the migrations declare them (no server here)."""
    folder = resources.files("baton.sinks").joinpath("migrations")
    text = "\n".join(
        folder.joinpath(name).read_text()
        for name in sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    )
    table = text[text.index("CREATE TABLE IF NOT EXISTS governance.decisions\n") :]
    body = table[: table.index("\n)\n")]
    found = dict(re.findall(r"^\s+`?(\w+)`?\s+([A-Z][\w(), ']*?)(?: DEFAULT .*)?,?$", body, re.M))
    found.update(
        re.findall(r"ADD COLUMN IF NOT EXISTS (\w+) ([\w(), ']+?)(?: CODEC\(.*\))?;", text)
    )
    return found


def _plain(kind: str) -> str:
    return kind[len("LowCardinality(") : -1] if kind.startswith("LowCardinality(") else kind


KINDS = _column_types()
TYPES = {
    DECISIONS_TABLE: tuple(_plain(KINDS[c]) for c in DECISION_COLUMNS),
    REJECTED_TABLE: ("String", "UInt32", "UInt64", "String", "String", "String"),
}


def single_block(rows: list[list[Any]]) -> bytes:
    """``rows`` as one Native block, as the row path sends them (the driver cuts a block of
    big rows in several; ClickHouse reads either the same)."""
    from clickhouse_connect.driver.insert import InsertContext
    from clickhouse_connect.driver.transform import NativeTransform

    if not rows:
        return b""
    rows = _as_sent(rows)
    types = _driver_types(TYPES[DECISIONS_TABLE])
    context = InsertContext("t", list(DECISION_COLUMNS), types, rows, block_size=len(rows))
    first, *rest = NativeTransform.build_insert(context)
    return b"".join([first[first.index(b"\n") + 1 :], *rest])


def _records() -> list[tuple[int, int, bytes | None]]:
    """Good decisions with every hostile record among them, on two partitions."""
    good = scenario_decisions(runs=6, start=NOW - timedelta(minutes=5))
    good = [replace(d, decided_at=NOW) for d in good]
    values: list[bytes | None] = [d.to_json() for d in good]
    for i, (_, value, _) in enumerate(hostile_records(good[0])):
        values.insert(3 * i + 1, value)
    values.append(replace(good[1], reemitted=True).to_json())  # read, never stored
    return [(i % 2, i, value) for i, value in enumerate(values)]


def _as_sent(rows: list[list[Any]]) -> list[list[Any]]:
    """``rows`` as the row path sends them (times as ticks)."""
    sent = copy.deepcopy(rows)
    times_as_ticks(sent, TYPES[DECISIONS_TABLE])
    return sent


def _local(records: list[tuple[int, int, bytes | None]]) -> AuditBatch:
    batch = AuditBatch("gov.decisions", 365, lambda: NOW)
    for partition, offset, value in records:
        batch.add(partition, offset, value)
    return batch


def _deferred(
    records: list[tuple[int, int, bytes | None]], parsers: ParseProcesses, step: int = 7
) -> AuditBatch:
    """The records deferred as the sink defers them (a consume's records at a time), sent in
    chunks of ``step``; the last chunk one record at a time."""
    batch = AuditBatch("gov.decisions", 365, lambda: NOW)
    last = len(records) - len(records) % step
    for i in range(0, last, step):
        batch.defer_chunk(records[i : i + step])
        batch.send(parsers, TYPES[DECISIONS_TABLE])
    for record in records[last:]:
        batch.defer(*record)
    batch.send(parsers, TYPES[DECISIONS_TABLE])
    return batch


class FakeClickHouse:
    """clickhouse-connect's client as the sink uses it: ``raw_insert`` of a Native block and
    ``insert`` of rows; refuses any block holding tenant "evil" (a CHECK constraint: 469);
    unreachable for the next ``down`` calls; drops an insert whose token it has seen."""

    def __init__(self) -> None:
        self.down = 0
        self.blocks: list[tuple[str, bytes]] = []  # (token, block) of every raw insert tried
        self.tokens: set[str] = set()
        self.stored: dict[str, list[list[object]]] = {DECISIONS_TABLE: [], REJECTED_TABLE: []}

    def raw_insert(
        self, table: str, column_names: list[str], insert_block: bytes, **kw: Any
    ) -> None:
        token = kw["settings"]["insert_deduplication_token"]
        self.blocks.append((token, insert_block))
        self._check(insert_block.count(b"\x04evil") > 0)
        self.tokens.add(token)

    def insert(self, table: str, rows: list[list[object]], **kw: Any) -> None:
        self._check(table == DECISIONS_TABLE and any(r[3] == "evil" for r in rows))
        token = kw["settings"]["insert_deduplication_token"]
        if token not in self.tokens:
            self.tokens.add(token)
            self.stored[table].extend(rows)

    def query(self, sql: str, parameters: dict[str, Any]) -> Any:
        """The lookup of a batch's re-emitted copies (``audit_copies``): every decision is
        held here (these tests are not about copies); of its control decisions
        (``audit_controls``): none is."""
        return SimpleNamespace(result_rows=list(parameters.get("keys", [])))

    def _check(self, evil: bool) -> None:
        if self.down:
            self.down -= 1
            raise OperationalError("HTTPConnectionPool(host='ch', port=8123): Connection refused")
        if evil:
            raise DatabaseError(
                "Code: 469. DB::Exception: Constraint `no_evil` is violated", code=469
            )


@pytest.fixture(scope="module")
def parsers() -> Any:
    processes = ParseProcesses(1, "gov.decisions")
    processes.start()
    yield processes
    processes.close()


def test_a_parse_process_makes_the_rows_rejections_block_and_token_the_sink_would() -> None:
    records = _records()
    local = _local(records)
    chunk = parse_chunk("gov.decisions", local.window, TYPES[DECISIONS_TABLE], records)
    assert chunk.rows == len(local.rows) > 0
    assert chunk.rejected == local.rejected and len(local.rejected) >= 10
    assert chunk.native == native_block(
        copy.deepcopy(local.rows), DECISION_COLUMNS, TYPES[DECISIONS_TABLE]
    )
    batch = AuditBatch("gov.decisions")
    assert batch.chunks_token([chunk]) == local.token()


def test_chunks_through_a_real_process_store_one_block_under_the_rows_token(
    parsers: ParseProcesses,
) -> None:
    records = [r for r in _records() if b'"evil"' not in (r[2] or b"")]
    local, batch, client = _local(records), _deferred(records, parsers), FakeClickHouse()
    write_batch(client, batch, types=TYPES)  # type: ignore[arg-type]
    assert [token for token, _ in client.blocks] == [local.token()]  # one insert, same token
    # the chunks of 7 records as one Native block (audit_insert.one_native_block)
    assert client.blocks[0][1] == single_block(local.rows)
    assert batch.stored_rows() == len(local.rows) and not batch.rows  # never parsed here
    assert client.stored[REJECTED_TABLE] == local.rejected  # rejected as the sink rejects them
    assert len(batch) == len(records)


def test_a_block_clickhouse_refuses_is_parsed_here_and_split_to_find_its_row(
    parsers: ParseProcesses,
) -> None:
    records = _records()
    batch, client = _deferred(records, parsers), FakeClickHouse()
    write_batch(client, batch, types=TYPES)  # type: ignore[arg-type]
    assert len(client.blocks) == 1  # refused once, then the row path
    local = _local(records)
    evil = [r for r in local.rows if r[3] == "evil"]
    assert len(evil) == 1
    assert client.stored[DECISIONS_TABLE] == _as_sent([r for r in local.rows if r[3] != "evil"])
    kinds = [r[-1] for r in client.stored[REJECTED_TABLE]]
    assert kinds.count(RejectKind.REFUSED_BY_CLICKHOUSE) == 1
    assert len(kinds) == len(local.rejected) + 1


def test_an_outage_retries_the_same_block_under_the_same_token(parsers: ParseProcesses) -> None:
    records = [r for r in _records() if b'"evil"' not in (r[2] or b"")]
    batch, client = _deferred(records, parsers), FakeClickHouse()
    client.down = 1
    with pytest.raises(AuditUnavailable, match="unreachable while inserting"):
        write_batch(client, batch, types=TYPES)  # type: ignore[arg-type]
    write_batch(client, batch, types=TYPES)  # type: ignore[arg-type]
    assert len(client.blocks) == 2 and client.blocks[0] == client.blocks[1]


def test_revoked_partitions_leave_a_deferred_batch(parsers: ParseProcesses) -> None:
    records = _records()
    batch, client = _deferred(records, parsers), FakeClickHouse()
    batch.drop_partitions({1})
    write_batch(client, batch, types=TYPES)  # type: ignore[arg-type]
    kept = _local([r for r in records if r[0] == 0])
    assert not client.blocks  # parsed here once revoked
    assert client.stored[DECISIONS_TABLE] == _as_sent([r for r in kept.rows if r[3] != "evil"])
    assert batch.commit_offsets().keys() == {0}


def test_new_column_types_since_encoding_make_the_batch_parse_here(
    parsers: ParseProcesses,
) -> None:
    records = [r for r in _records() if b'"evil"' not in (r[2] or b"")]
    batch, client = _deferred(records, parsers), FakeClickHouse()
    changed = {**TYPES, DECISIONS_TABLE: tuple(KINDS[c] for c in DECISION_COLUMNS)}
    write_batch(client, batch, types=changed)  # type: ignore[arg-type]
    assert not client.blocks
    assert len(client.stored[DECISIONS_TABLE]) == len(_local(records).rows)


def _written_after_losing_the_helper(
    records: list[tuple[int, int, bytes | None]],
    lose: Callable[[list[int]], object],
    timeout: float,
    noticed: str,
) -> FakeClickHouse:
    """``records`` written through one parse process that ``lose(pids)`` (or its own start)
    took away: once the sink has noticed (``noticed`` within ``timeout`` s)."""
    processes = ParseProcesses(1, "gov.decisions")
    processes.start()
    try:
        lose(processes.pids())
        wait_for(lambda: not processes.alive, timeout=timeout, message=noticed)
        batch, client = _deferred(records, processes), FakeClickHouse()
        write_batch(client, batch, types=TYPES)  # type: ignore[arg-type]
    finally:
        processes.close()
    return client


def test_a_parse_process_that_dies_leaves_its_records_to_the_sink() -> None:
    records = [r for r in _records() if b'"evil"' not in (r[2] or b"")]
    client = _written_after_losing_the_helper(
        records, lambda pids: os.kill(pids[0], signal.SIGKILL), 10, "the death is noticed"
    )
    assert not client.blocks
    assert client.stored[DECISIONS_TABLE] == _as_sent(_local(records).rows)


def test_a_record_parsed_here_after_deferred_ones_takes_them_along(
    parsers: ParseProcesses,
) -> None:
    """A parse process lost mid-batch: the rest of the batch is parsed here, and so are the
    records deferred before (never a batch whose insert leaves one kind out)."""
    records = [r for r in _records() if b'"evil"' not in (r[2] or b"")]
    batch, client = _deferred(records[:-5], parsers), FakeClickHouse()
    for partition, offset, value in records[-5:]:
        batch.add(partition, offset, value)
    batch.defer(*records[0])  # and a later deferral stays here too
    batch.defer_chunk([records[1]])
    write_batch(client, batch, types=TYPES)  # type: ignore[arg-type]
    assert not client.blocks
    expected = _local([*records, records[0], records[1]])
    assert client.stored[DECISIONS_TABLE] == _as_sent(expected.rows)


def test_a_parse_process_running_other_code_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another checkout on the helper's path would parse and reject by other rules."""
    import baton.sinks.sink_parse as sink_parse

    monkeypatch.setattr(sink_parse, "_same_code", lambda: ("/elsewhere/sink_parse.py", "x"))
    records = [r for r in _records() if b'"evil"' not in (r[2] or b"")]
    client = _written_after_losing_the_helper(
        records, lambda pids: None, 20, "the mismatch is noticed"
    )
    assert not client.blocks
    assert client.stored[DECISIONS_TABLE] == _as_sent(_local(records).rows)


def test_a_hung_parse_process_is_killed_and_its_batch_parsed_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import baton.sinks.audit_batch as audit_batch

    monkeypatch.setattr(audit_batch, "_CHUNK_WAIT_S", 0.5)
    records = [r for r in _records() if b'"evil"' not in (r[2] or b"")]
    processes = ParseProcesses(1, "gov.decisions")
    processes.start()
    try:
        os.kill(processes.pids()[0], signal.SIGSTOP)  # alive, never answering
        batch, client = _deferred(records, processes), FakeClickHouse()
        write_batch(client, batch, types=TYPES)  # type: ignore[arg-type]
        wait_for(lambda: not processes.alive, timeout=10, message="the hung process is gone")
    finally:
        processes.close()
    assert not client.blocks
    assert client.stored[DECISIONS_TABLE] == _as_sent(_local(records).rows)


def test_two_parse_processes_store_the_rows_in_order_under_the_rows_token() -> None:
    """Chunks alternate between the processes; the block keeps the records' order."""
    records = [r for r in _records() if b'"evil"' not in (r[2] or b"")]
    processes = ParseProcesses(2, "gov.decisions")
    processes.start()
    try:
        batch, client = _deferred(records, processes, step=3), FakeClickHouse()
        write_batch(client, batch, types=TYPES)  # type: ignore[arg-type]
    finally:
        processes.close()
    local = _local(records)
    assert [token for token, _ in client.blocks] == [local.token()]
    assert client.blocks[0][1] == single_block(local.rows)  # one block, the records' order
