"""The audit's pure parts: Decision -> row, batches and their dedup tokens, DSNs, rules, output."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.schemas.decision import (
    AUDIT_FIELDS,
    DECISION_ADAPTER,
    DECISION_FIELDS,
    Decision,
    Outcome,
    Phase,
)
from baton.schemas.errors import AuditUnavailable, ConfigError
from baton.sinks.clickhouse import parse_dsn
from baton.sinks.query import first_keyword, trailing_format
from baton.sinks.render import render
from baton.sinks.rows import (
    DECISION_COLUMNS,
    REJECTED_COLUMNS,
    DecidedWindow,
    RejectKind,
    RowRejected,
    decision_row,
    usd,
)
from baton.sinks.rules import DEFAULT_RULES, load_rules
from baton.sinks.schema import Migration, load_migrations
from baton.sinks.sink import DECISIONS_TABLE, REJECTED_TABLE, AuditBatch, write_batch
from tests.builds import interpreted_only

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def _decision(**changes: object) -> Decision:
    base = Decision(
        decision_id="d1",
        request_id="r1",
        run_id="run_742",
        tenant="acme",
        phase=Phase.PRE_HANDOFF,
        outcome=Outcome.STOP,
        reason="ownership_conflict",
        from_agent="planner",
        to_agent="researcher",
        task_id="refund_check",
        spent_usd=0.1 + 0.2,
        event_time=NOW,
        decided_at=NOW + timedelta(milliseconds=3),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_every_decision_field_is_a_column_in_record_order() -> None:
    # all but the re-emission flag: a re-emitted copy is never stored (the original is)
    assert tuple(f for f in DECISION_FIELDS if f != "reemitted") == AUDIT_FIELDS
    assert DECISION_COLUMNS[: len(AUDIT_FIELDS)] == AUDIT_FIELDS
    assert DECISION_COLUMNS[len(AUDIT_FIELDS) :] == (
        "audit_topic",
        "audit_partition",
        "audit_offset",
    )


def test_row_carries_wire_strings_exact_money_and_where_it_was_read() -> None:
    row = dict(
        zip(DECISION_COLUMNS, decision_row(_decision(), "gov.decisions", 3, 17), strict=True)
    )
    assert row["outcome"] == "stop" and type(row["outcome"]) is str
    assert row["spent_usd"] == Decimal("0.300000")  # not 0.30000000000000004
    assert (row["audit_topic"], row["audit_partition"], row["audit_offset"]) == (
        "gov.decisions",
        3,
        17,
    )


def test_a_decision_without_event_time_takes_its_decision_time() -> None:
    row = dict(
        zip(DECISION_COLUMNS, decision_row(_decision(event_time=None), "t", 0, 0), strict=True)
    )
    assert row["event_time"] == row["decided_at"] == NOW + timedelta(milliseconds=3)


def test_times_are_stored_in_utc_and_naive_times_are_taken_as_utc() -> None:
    paris = timezone(timedelta(hours=1))
    row = dict(
        zip(
            DECISION_COLUMNS,
            decision_row(
                _decision(
                    event_time=datetime(2026, 11, 25, 10, 0, tzinfo=paris),
                    decided_at=datetime(2026, 11, 25, 9, 0),
                ),
                "t",
                0,
                0,
            ),
            strict=True,
        )
    )
    assert row["event_time"] == NOW and row["event_time"].tzinfo == UTC
    assert row["decided_at"] == NOW


def test_a_decision_with_no_time_at_all_is_refused_by_name() -> None:
    with pytest.raises(RowRejected, match="decision 'd1': neither event_time nor decided_at") as e:
        decision_row(_decision(event_time=None, decided_at=None), "t", 0, 0)
    assert e.value.kind == RejectKind.INVALID_RECORD


@pytest.mark.parametrize(
    ("amount", "stored"),
    [
        (0.1, "0.100000"),
        (1234.5678901, "1234.567890"),
        (0.0000005, "0.000000"),
        (0.0000015, "0.000002"),
        (0.0, "0.000000"),
        (999999999999.9999, "999999999999.999900"),  # the largest float below the limit
        (-999999999999.9999, "-999999999999.999900"),
    ],
)
def test_usd_rounds_to_micro_dollars_half_even(amount: float, stored: str) -> None:
    assert str(usd(amount)) == stored


# --------------------------------------------------------------------------- column ranges

_FAR_EAST = timezone(timedelta(hours=-5))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"spent_usd": 1e308}, r"spent_usd: 1e\+308 is not an amount Decimal\(18, 6\) holds"),
        ({"spent_usd": 1e20}, r"spent_usd: 1e\+20 is not an amount"),
        ({"spent_usd": 1e12}, r"spent_usd: 1000000000000.0 is not an amount"),
        ({"spent_usd": -1e12}, r"spent_usd: -1000000000000.0 is not an amount"),
        ({"spent_usd": math.nan}, r"spent_usd: nan is not an amount .*finite"),
        ({"reserved_usd": math.inf}, r"reserved_usd: inf is not an amount"),
        pytest.param(
            {"reserved_usd": 10**400},
            r"reserved_usd: inf is not an amount",
            # (a record's 1e400 or 10**400 arrives as inf: a float, both builds)
            marks=interpreted_only("a compiled Decision holds only a float in reserved_usd"),
        ),
        ({"tool_calls": 2**63}, r"tool_calls: 9223372036854775808 is outside UInt32's range"),
        ({"tool_calls": 2**32}, r"tool_calls: 4294967296 is outside UInt32's range"),
        ({"tool_calls": -1}, r"tool_calls: -1 is outside UInt32's range \[0, 4294967295\]"),
        ({"handoff_count": -5}, r"handoff_count: -5 is outside UInt32's range"),
        ({"depth": 70000}, r"depth: 70000 is outside UInt16's range \[0, 65535\]"),
        ({"partition": 2**31}, r"partition: 2147483648 is outside Int32's range"),
        ({"offset": -(2**63) - 1}, r"offset: -9223372036854775809 is outside Int64's range"),
        (
            {"event_time": datetime(9999, 1, 1, tzinfo=UTC)},
            r"event_time: 9999-01-01T00:00:00\+00:00 is outside DateTime64's range "
            r"\[1900-01-01, 2299-12-31 23:59:59\] UTC",
        ),
        ({"event_time": datetime(1899, 12, 31, 23, 59, tzinfo=UTC)}, r"event_time: 1899-12-31"),
        ({"event_time": datetime(1, 1, 1)}, r"event_time: 0001-01-01T00:00:00 is outside"),
        (  # past datetime's own end once converted to UTC (OverflowError inside)
            {"event_time": datetime(9999, 12, 31, 23, tzinfo=_FAR_EAST)},
            r"event_time: 9999-12-31T23:00:00-05:00 is outside DateTime64's range",
        ),
        (
            {"approval_expires_at": datetime(2300, 1, 1, tzinfo=UTC)},
            r"approval_expires_at: 2300-01-01T00:00:00\+00:00 is outside",
        ),
    ],
)
def test_a_value_its_column_cannot_hold_rejects_the_row_naming_field_value_and_range(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(RowRejected, match=message) as e:
        decision_row(_decision(**changes), "t", 0, 0)
    assert e.value.kind == RejectKind.OUT_OF_RANGE


@pytest.mark.parametrize(
    "changes",
    [
        {"depth": 65535, "tool_calls": 2**32 - 1, "handoff_count": 2**32 - 1},
        {"partition": -(2**31), "offset": 2**63 - 1},
        {"spent_usd": 999999999999.9999, "reserved_usd": -999999999999.9999},
        {"event_time": datetime(1900, 1, 1, tzinfo=UTC)},
        {"event_time": datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)},
        {"event_time": datetime(1971, 1, 1, tzinfo=UTC)},  # a client's odd time is kept
        {"reason": "x" * 60_000, "tenant": "t" * 60_000, "detail": "\x00" * 10},
    ],
)
def test_values_at_the_edge_of_their_columns_are_kept(changes: dict[str, object]) -> None:
    row = dict(zip(DECISION_COLUMNS, decision_row(_decision(**changes), "t", 0, 0), strict=True))
    for name, value in changes.items():
        if name in ("spent_usd", "reserved_usd"):
            assert row[name] == usd(value)  # type: ignore[arg-type]
        else:
            assert row[name] == value, name


# --------------------------------------------------------------------------- decided_at window

WINDOW = DecidedWindow.around(NOW, ttl_days=30)


@pytest.mark.parametrize(
    "decided_at",
    [
        NOW,
        NOW - timedelta(days=30),
        NOW + timedelta(hours=23),
        NOW + timedelta(days=1),
    ],
)
def test_decided_at_within_retention_and_a_day_ahead_is_accepted(decided_at: datetime) -> None:
    row = dict(
        zip(
            DECISION_COLUMNS,
            decision_row(_decision(decided_at=decided_at), "t", 0, 0, WINDOW),
            strict=True,
        )
    )
    assert row["decided_at"] == decided_at


@pytest.mark.parametrize(
    "decided_at",
    [
        datetime(1971, 1, 1, tzinfo=UTC),
        NOW - timedelta(days=30, seconds=1),
        NOW + timedelta(days=1, seconds=1),
        datetime(2299, 12, 31, tzinfo=UTC),
    ],
)
def test_decided_at_outside_the_window_is_rejected_not_clamped(decided_at: datetime) -> None:
    with pytest.raises(RowRejected, match=r"decided_at: .* is outside the audit's window") as e:
        decision_row(_decision(decided_at=decided_at), "t", 0, 0, WINDOW)
    assert e.value.kind == RejectKind.DECIDED_AT_OUT_OF_WINDOW
    assert "audit_ttl_days=30" in str(e.value)


def test_a_decision_without_decided_at_is_judged_by_its_event_time() -> None:
    with pytest.raises(RowRejected) as e:
        decision_row(
            _decision(decided_at=None, event_time=datetime(1971, 1, 1, tzinfo=UTC)),
            "t",
            0,
            0,
            WINDOW,
        )
    assert e.value.kind == RejectKind.DECIDED_AT_OUT_OF_WINDOW


# --------------------------------------------------------------------------- batches


def test_batch_token_names_each_partitions_offset_range() -> None:
    batch = AuditBatch("p.gov.decisions")
    for partition, offset in [(2, 10), (0, 5), (2, 11), (0, 6), (2, 12)]:
        batch.add(partition, offset, _decision(decision_id=f"d{offset}").to_json())
    assert batch.token().startswith("p.gov.decisions/0:5-6,2:10-12/")
    assert batch.commit_offsets() == {0: 7, 2: 13}
    assert len(batch) == 5


def test_a_token_names_exactly_one_set_of_rows() -> None:
    batch = AuditBatch("t")
    for offset in range(10):
        batch.add(0, offset, _decision(decision_id=f"d{offset}").to_json())
    other = AuditBatch("t")  # same span 0:0-9, but offset 4 was rejected: other rows
    for offset in range(10):
        other.add(0, offset, b"bad" if offset == 4 else _decision().to_json())
    assert batch.token() == batch.token(0, 10)  # a retry of the same rows: same token
    assert batch.token().split("/")[1] == other.token().split("/")[1] == "0:0-9"
    assert batch.token() != other.token()
    slices = {batch.token(lo, hi) for lo in range(10) for hi in range(lo + 1, 11)}
    assert len(slices) == 55  # every slice its own token


def test_a_restarted_broker_reusing_offsets_gets_new_tokens_for_new_decisions() -> None:
    """The embedded broker of a restarted `baton up` numbers partitions from 0 again: a new
    decision at an offset an earlier start used must not carry that start's token (ClickHouse
    would drop its insert as a repeat); the same decision read again keeps its token."""
    before, after, again = AuditBatch("t"), AuditBatch("t"), AuditBatch("t")
    before.add(3, 0, _decision(decision_id="run_K-decision").to_json())
    after.add(3, 0, _decision(decision_id="run_L-decision").to_json())
    again.add(3, 0, _decision(decision_id="run_K-decision").to_json())
    assert before.token() != after.token()
    assert before.token() == again.token()
    before.add(3, 1, b"bad")
    after.add(3, 1, b"worse")
    assert before.rejected_token() != after.rejected_token()


def test_a_record_that_is_not_a_decision_is_kept_as_rejected_with_its_bytes() -> None:
    batch = AuditBatch("gov.decisions")
    batch.add(1, 40, b'{"decision_id": "x"}')
    batch.add(1, 41, None)
    batch.add(1, 42, _decision().to_json())
    assert len(batch.rows) == 1 and len(batch.rejected) == 2
    topic, partition, offset, error, raw, kind = batch.rejected[0]
    assert (topic, partition, offset, raw) == ("gov.decisions", 1, 40, '{"decision_id": "x"}')
    assert kind == "invalid_record"
    assert "request_id: Field required" in error  # names a missing field
    assert batch.rejected[1][3].startswith("empty record (tombstone)")
    assert batch.commit_offsets() == {1: 43}  # rejects are committed too: they are stored


def _raw(**fields: object) -> bytes:
    """A decision's JSON with some fields replaced by raw JSON text (NaN, huge numbers)."""
    base = orjson.loads(_decision().to_json())
    text = orjson.dumps({k: v for k, v in base.items() if k not in fields}).decode()
    extra = ",".join(f'"{k}":{v}' for k, v in fields.items())
    return (text[:-1] + ("," + extra if extra else "") + "}").encode()


HOSTILE: list[tuple[bytes | None, RejectKind, str]] = [
    (b"\xff\xfe\x00garbage", RejectKind.INVALID_RECORD, "Invalid JSON"),
    (b"", RejectKind.INVALID_RECORD, "Invalid JSON"),
    (None, RejectKind.INVALID_RECORD, "empty record"),
    (b"[]", RejectKind.INVALID_RECORD, "not a Decision"),
    (b"null", RejectKind.INVALID_RECORD, "not a Decision"),
    (b"42", RejectKind.INVALID_RECORD, "not a Decision"),
    (_raw(depth='"deep"'), RejectKind.INVALID_RECORD, "depth: Input should be a valid integer"),
    (_raw(phase='"nope"'), RejectKind.INVALID_RECORD, "phase: Input should be"),
    (_raw(detail="[" * 70_000 + "]" * 70_000), RejectKind.INVALID_RECORD, "recursion limit"),
    (_raw(spent_usd="NaN"), RejectKind.OUT_OF_RANGE, "spent_usd: nan"),
    (_raw(spent_usd="Infinity"), RejectKind.OUT_OF_RANGE, "spent_usd: inf"),
    (_raw(spent_usd="-1e400"), RejectKind.OUT_OF_RANGE, "spent_usd: -inf"),
    (_raw(spent_usd="1e308"), RejectKind.OUT_OF_RANGE, "spent_usd: 1e+308"),
    (_raw(tool_calls=str(2**63)), RejectKind.OUT_OF_RANGE, "tool_calls: 9223372036854775808"),
    (_raw(tool_calls=str(2**64)), RejectKind.OUT_OF_RANGE, "tool_calls: 18446744073709551616"),
    (_raw(depth="70000"), RejectKind.OUT_OF_RANGE, "depth: 70000"),
    (_raw(handoff_count="-1"), RejectKind.OUT_OF_RANGE, "handoff_count: -1"),
    (
        _raw(event_time='"9999-12-31T23:00:00-05:00"'),
        RejectKind.OUT_OF_RANGE,
        "event_time: 9999-12-31T23:00:00-05:00",
    ),
    (
        _raw(decided_at='"1971-01-01T00:00:00Z"'),
        RejectKind.DECIDED_AT_OUT_OF_WINDOW,
        "decided_at: 1971-01-01",
    ),
    (
        _raw(decided_at='"9999-01-01T00:00:00Z"'),
        RejectKind.OUT_OF_RANGE,
        "decided_at: 9999-01-01",
    ),
]


@pytest.mark.parametrize(("value", "kind", "error"), HOSTILE)
def test_a_hostile_record_becomes_one_rejected_row_and_the_batch_goes_on(
    value: bytes | None, kind: RejectKind, error: str
) -> None:
    batch = AuditBatch("t", ttl_days=30, clock=lambda: NOW)
    batch.add(0, 1, _decision(decision_id="before").to_json())
    batch.add(0, 2, value)
    batch.add(0, 3, _decision(decision_id="after").to_json())
    assert [r[0] for r in batch.rows] == ["before", "after"]
    assert len(batch.rejected) == 1
    row = dict(zip(REJECTED_COLUMNS, batch.rejected[0], strict=True))
    assert (row["audit_partition"], row["audit_offset"], row["error_kind"]) == (0, 2, kind)
    assert error in row["error"]
    assert len(row["error"]) <= 2000
    assert row["raw"] == (value or b"").decode("utf-8", errors="backslashreplace")
    assert batch.commit_offsets() == {0: 4}


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.dictionaries(
            st.sampled_from([*DECISION_FIELDS, "x"]),
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(min_value=-(2**70), max_value=2**70),
                st.floats(allow_nan=True, allow_infinity=True),
                st.text(max_size=30),
                st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
            ),
        ).map(lambda d: json.dumps({**orjson.loads(_decision().to_json()), **d}).encode()),
    )
)
def test_no_record_makes_add_raise(value: bytes) -> None:
    batch = AuditBatch("t", ttl_days=30, clock=lambda: NOW)
    batch.add(0, 0, value)
    if len(batch) == 0:  # only a valid re-emitted copy is left out: the audit has its original
        assert DECISION_ADAPTER.validate_json(value).reemitted
        assert batch.commit_offsets() == {0: 1}
        return
    assert len(batch) == 1
    if batch.copies:  # a valid re-emitted copy, held to be looked up once the rows are stored
        assert DECISION_ADAPTER.validate_json(value).reemitted
        assert not batch.rows and not batch.rejected
    elif batch.rows:  # a kept row fits every column
        row = dict(zip(DECISION_COLUMNS, batch.rows[0], strict=True))
        assert 0 <= row["depth"] < 2**16 and 0 <= row["tool_calls"] < 2**32
        assert abs(row["spent_usd"]) < 10**12 and WINDOW.earliest <= row["decided_at"]
    else:
        assert batch.rejected[0][-1] in set(RejectKind)


def test_revoked_partitions_leave_the_batch() -> None:
    batch = AuditBatch("t")
    batch.add(0, 1, _decision(decision_id="a").to_json())
    batch.add(1, 1, _decision(decision_id="b").to_json())
    batch.add(1, 2, b"garbage")
    batch.drop_partitions({1})
    assert [r[0] for r in batch.rows] == ["a"] and batch.rejected == []
    assert len(batch.raws) == 1
    assert batch.commit_offsets() == {0: 2}


# --------------------------------------------------------------------------- write_batch


class FakeClickHouse:
    """Stands in for clickhouse-connect's client in front of ClickHouse: refuses any insert
    holding a row of tenant "evil" (as a CHECK constraint would: code 469), or - with
    ``max_block`` - any block larger than that (as "too many partitions", code 252); fails as
    unreachable for the next ``down`` calls; drops an insert whose token it has seen."""

    def __init__(self, max_block: int = 0) -> None:
        self.max_block = max_block
        self.down = 0
        self.fail_at_call = 0
        self.calls = 0
        self.sent: list[str] = []  # the token of every insert tried
        self.tokens: set[str] = set()
        self.stored: dict[str, list[list[object]]] = {DECISIONS_TABLE: [], REJECTED_TABLE: []}

    def insert(
        self, table: str, rows: list[list[object]], column_names: list[str], settings: dict
    ) -> None:
        self.calls += 1
        self.sent.append(settings["insert_deduplication_token"])
        if self.down or self.calls == self.fail_at_call:
            self.down = max(0, self.down - 1)
            raise OperationalError("HTTPConnectionPool(host='ch', port=8123): Connection refused")
        if self.max_block and len(rows) > self.max_block:
            raise DatabaseError(
                "Code: 252. DB::Exception: Too many partitions for single INSERT block "
                "(more than 100). (TOO_MANY_PARTS)",
                code=252,
            )
        if table == DECISIONS_TABLE and any(r[3] == "evil" for r in rows):
            raise DatabaseError(
                "Code: 469. DB::Exception: Constraint `no_evil` is violated",
                code=469,
            )
        token = settings["insert_deduplication_token"]
        if token not in self.tokens:
            self.tokens.add(token)
            self.stored[table].extend(rows)

    def query(self, sql: str, parameters: dict[str, Any]) -> Any:
        """The lookup of a batch's re-emitted copies (``audit_copies``): every decision is
        held here (these tests are not about copies)."""
        return SimpleNamespace(result_rows=list(parameters["keys"]))

    def decision_ids(self) -> list[str]:
        return [str(r[0]) for r in self.stored[DECISIONS_TABLE]]


def _batch(n: int, evil: set[int] = frozenset()) -> AuditBatch:  # type: ignore[assignment]
    batch = AuditBatch("t")
    for i in range(n):
        tenant = "evil" if i in evil else "acme"
        batch.add(i % 2, i, _decision(decision_id=f"d{i:03d}", tenant=tenant).to_json())
    return batch


def test_rows_clickhouse_refuses_are_isolated_by_halving_and_the_rest_is_stored() -> None:
    evil = {5, 6, 40}
    batch, client = _batch(64, evil), FakeClickHouse()
    write_batch(client, batch)  # type: ignore[arg-type]
    assert client.decision_ids() == [f"d{i:03d}" for i in range(64) if i not in evil]  # in order
    rejected = [dict(zip(REJECTED_COLUMNS, r, strict=True)) for r in client.stored[REJECTED_TABLE]]
    assert [r["audit_offset"] for r in rejected] == sorted(evil)
    assert {r["error_kind"] for r in rejected} == {"refused_by_clickhouse"}
    assert "Code: 469" in rejected[0]["error"] and '"tenant":"evil"' in rejected[0]["raw"]
    assert client.calls <= 1 + 2 * len(evil) * 6 + 1  # log2(64) = 6 levels per bad row


def test_an_outage_in_the_middle_of_splitting_resumes_where_it_stopped() -> None:
    batch, client = _batch(32, {3, 20}), FakeClickHouse()
    client.fail_at_call = 6
    with pytest.raises(AuditUnavailable, match="unreachable while inserting"):
        write_batch(client, batch)  # type: ignore[arg-type]
    stored_before, failed = set(client.tokens), client.sent[-1]
    assert stored_before  # some slices were stored before the outage
    sent_before = len(client.sent)
    write_batch(client, batch)  # type: ignore[arg-type]  # the retry resumes
    resumed = client.sent[sent_before:]
    assert resumed[0] == failed  # the same slice again, with the same token
    assert not stored_before & set(resumed)  # nothing stored is sent again
    assert client.decision_ids() == [f"d{i:03d}" for i in range(32) if i not in {3, 20}]
    assert len(client.stored[REJECTED_TABLE]) == 2


def test_a_rebalance_after_a_refusal_starts_over_without_the_refused_row() -> None:
    batch, client = _batch(16, {4}), FakeClickHouse()  # partitions 0 and 1 alternate
    client.fail_at_call = 8  # an outage after the refused row was found
    with pytest.raises(AuditUnavailable):
        write_batch(client, batch)  # type: ignore[arg-type]
    assert [r[2] for r in batch.rejected] == [4]
    batch.drop_partitions({1})  # partition 1 revoked while the sink waited
    write_batch(client, batch)  # type: ignore[arg-type]
    assert [r[2] for r in client.stored[REJECTED_TABLE]] == [4]  # once, not tried again
    assert set(client.decision_ids()) >= {f"d{i:03d}" for i in range(0, 16, 2) if i != 4}
    assert "d004" not in client.decision_ids()


def test_a_block_refused_as_too_big_is_split_and_nothing_is_rejected() -> None:
    batch, client = _batch(50), FakeClickHouse(max_block=7)
    write_batch(client, batch)  # type: ignore[arg-type]
    assert client.decision_ids() == [f"d{i:03d}" for i in range(50)]
    assert client.stored[REJECTED_TABLE] == [] and batch.rejected == []


def test_a_one_row_block_refused_as_a_block_is_retried_never_rejected() -> None:
    class AlwaysTooMany(FakeClickHouse):
        def insert(self, table: str, rows: list, column_names: list, settings: dict) -> None:
            self.calls += 1
            raise DatabaseError("Code: 252. Too many partitions for single INSERT block", code=252)

    batch, client = _batch(4), AlwaysTooMany()
    with pytest.raises(AuditUnavailable, match="refused a one-row insert"):
        write_batch(client, batch)  # type: ignore[arg-type]
    assert batch.rejected == []


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (DatabaseError("Code: 60. Table governance.decisions does not exist", code=60), "Code: 60"),
        (DatabaseError("Code: 252. Too many parts (300). Merges are slow", code=252), "parts"),
        (DatabaseError("HTTP driver received HTTP status 503", code=None), "503"),
        (OperationalError("Connection refused"), "unreachable"),
    ],
)
def test_a_server_failure_is_retried_as_a_whole_never_split_into_rejects(
    error: Exception, message: str
) -> None:
    class Failing(FakeClickHouse):
        def insert(self, *args: object, **kwargs: object) -> None:
            self.calls += 1
            raise error

    batch, client = _batch(16, {2}), Failing()
    with pytest.raises(AuditUnavailable, match=message):
        write_batch(client, batch)  # type: ignore[arg-type]
    assert client.calls == 1 and batch.rejected == [] and batch.todo == [(0, 16)]


def test_a_python_error_outside_the_drivers_encoding_is_retried_not_rejected() -> None:
    class Broken(FakeClickHouse):
        def insert(self, table: str, rows: list, column_names: list, settings: dict) -> None:
            self.calls += 1
            raise ValueError("Invalid header value b'\\n'")  # say, the transport

    batch, client = _batch(8), Broken()
    with pytest.raises(AuditUnavailable, match="ValueError: Invalid header value"):
        write_batch(client, batch)  # type: ignore[arg-type]
    assert client.calls == 1 and batch.rejected == []


def test_migrations_are_numbered_and_split_into_statements() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})
    statements = migrations[0].statements(ttl_days=42)
    assert "CREATE TABLE IF NOT EXISTS governance.decisions" in statements[0]
    assert all("{ttl_days}" not in s for s in statements)
    assert any("INTERVAL 42 DAY" in s for s in statements)


def test_a_semicolon_inside_a_comment_line_does_not_split_a_statement() -> None:
    m = Migration(
        9, "x", "-- a; b\nCREATE TABLE t (x UInt8) -- note; here\nENGINE = Log;\nSELECT 1;\n"
    )
    assert m.statements(1) == [
        "-- a; b\nCREATE TABLE t (x UInt8) -- note; here\nENGINE = Log",
        "SELECT 1",
    ]


def test_migration_checksum_ignores_the_ttl_setting() -> None:
    m = load_migrations()[0]
    assert m.checksum == Migration(m.version, m.name, m.sql).checksum


@pytest.mark.parametrize(
    ("dsn", "kind", "label"),
    [
        ("http://alice:s3cret@ch.example:8123/gov", "http", "http://alice:***@ch.example:8123/gov"),
        ("https://ch.example:8443", "https", None),
        ("chdb:///var/lib/baton/chdb", "chdb", "chdb:/var/lib/baton/chdb"),
        ("chdb://memory", "chdb", "chdb (in memory)"),
    ],
)
def test_dsns_are_classified_and_never_show_the_password(
    dsn: str, kind: str, label: str | None
) -> None:
    target = parse_dsn(dsn)
    assert target.kind == ("http" if kind == "https" else kind)
    if label:
        assert target.label == label
    assert "s3cret" not in target.label


def test_a_relative_chdb_dsn_is_resolved_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_dsn("chdb:.baton/chdb").chdb_path == tmp_path / ".baton" / "chdb"
    assert parse_dsn("chdb://.baton/chdb").chdb_path == tmp_path / ".baton" / "chdb"


def test_an_unknown_dsn_is_refused_naming_the_forms() -> None:
    with pytest.raises(ConfigError, match=r"expected http\(s\)://.*got 'postgres://db'"):
        parse_dsn("postgres://db")


def test_rules_yaml_tunes_a_builtin_and_adds_a_rule(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - name: tenant_stop_rate\n"
        "    params: {max_stop_rate: 0.5}\n"
        "  - name: refunds_stopped\n"
        "    sql: SELECT 1\n"
    )
    rules = {r.name: r for r in load_rules(path)}
    assert rules["tenant_stop_rate"].params["max_stop_rate"] == 0.5
    assert rules["tenant_stop_rate"].params["min_decisions"] == 20  # the rest stays
    assert rules["refunds_stopped"].sql == "SELECT 1"
    assert set(rules) == {r.name for r in DEFAULT_RULES} | {"refunds_stopped"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules:\n  - name: nope\n", r"rules\[0\] \(nope\): not a built-in rule"),
        (
            "rules:\n  - name: x\n    sql: SELECT 1\n    treshold: 3\n",
            r"unknown keys \['treshold'\]",
        ),
        ("rulez: []\n", r"unknown keys \['rulez'\]"),
        ("rules: [\n", "not valid YAML"),
    ],
)
def test_bad_rules_yaml_is_refused_naming_the_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_rules(path)


def test_table_output_aligns_and_counts_rows() -> None:
    out = render(("reason", "stops"), [("ownership_conflict", 12), ("killed", 3)], "table")
    assert out.splitlines() == [
        "reason              stops",
        "------------------  -----",
        "ownership_conflict     12",
        "killed                  3",
        "(2 rows)",
    ]


def test_csv_and_json_output() -> None:
    rows = [("acme", Decimal("0.250000"), NOW, None)]
    cols = ("tenant", "spent_usd", "at", "owner")
    assert (
        render(cols, rows, "csv") == "tenant,spent_usd,at,owner\nacme,0.25,2026-11-25 09:00:00.000,"
    )
    assert render(cols, rows, "json") == (
        '{"tenant":"acme","spent_usd":0.25,"at":"2026-11-25T09:00:00Z","owner":null}'
    )


@pytest.mark.parametrize(
    ("sql", "keyword"),
    [
        ("  -- who stopped\nSELECT 1", "SELECT"),
        ("/* x */ (WITH a AS (SELECT 1) SELECT *)", "WITH"),
        ("insert into t values (1)", "INSERT"),
        ("", ""),
    ],
)
def test_first_keyword_skips_comments_and_parentheses(sql: str, keyword: str) -> None:
    assert first_keyword(sql) == keyword


def test_trailing_format_is_found_only_at_the_end() -> None:
    assert trailing_format("SELECT 1 FORMAT JSONEachRow;") == "JSONEachRow"
    assert trailing_format("SELECT 'FORMAT CSV' AS x") is None


def test_reading_a_chdb_directory_that_does_not_exist_is_an_error_not_an_empty_audit(
    tmp_path: Path,
) -> None:
    from baton.schemas.errors import AuditUnavailable
    from baton.sinks.clickhouse import connect

    missing = tmp_path / "nope" / "chdb"
    with pytest.raises(AuditUnavailable, match=f"no audit at {missing}: the chDB directory"):
        connect(f"chdb://{missing}")
    assert not missing.exists()


def test_chdb_without_the_embedded_extra_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from baton.schemas.errors import MissingExtra
    from baton.sinks.clickhouse import connect

    monkeypatch.setitem(sys.modules, "chdb", None)  # as if not installed: import fails
    with pytest.raises(MissingExtra, match=r"pip install 'baton\[embedded\]'"):
        connect(f"chdb://{tmp_path}")


def test_a_reemitted_copy_is_not_stored_and_its_offset_is_committed() -> None:
    batch = AuditBatch("t", ttl_days=30, clock=lambda: NOW)
    original = _decision(decision_id="a")
    batch.add(0, 7, original.to_json())
    batch.add(0, 9, replace(original, reemitted=True).to_json())
    assert [r[0] for r in batch.rows] == ["a"] and batch.rejected == []
    assert batch.rows[0][-1] == 7  # the original's place in the audit
    assert batch.commit_offsets() == {0: 10}
