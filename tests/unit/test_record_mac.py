"""The audit MAC: what a worker puts on each decision record, and the sink rejecting a record
without it (``forged``) on each of its parse paths, before a byte of it is parsed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from baton.schemas.decision_signing import DecisionKeys, DecisionSigner, signature_at
from baton.schemas.record_mac import FIELD, MacKeys, RecordMac
from baton.schemas.signing import new_private_key, write_private_key
from baton.sinks.audit_batch import AuditBatch
from baton.sinks.rows import RejectKind
from baton.sinks.sink_parse import ParseProcesses, parse_chunk
from tests.audit_support import hostile_records, scenario_decisions
from tests.unit.test_audit_sink_parse import DECISIONS_TABLE, TYPES, _local

pytestmark = pytest.mark.unit

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
NOW = datetime.now(UTC).replace(microsecond=0)


def _good() -> list[bytes]:
    decisions = scenario_decisions(runs=3, start=NOW - timedelta(minutes=5))
    return [replace(d, decided_at=NOW).to_json() for d in decisions]


def test_a_marked_record_holds_under_its_key_only_and_reads_as_the_same_decision() -> None:
    raw = _good()[0]
    marked = RecordMac(KEY).marked(raw)
    assert MacKeys([KEY]).holds(marked)
    assert MacKeys([OTHER, KEY]).holds(marked)  # a second key (a rotation) as well
    assert not MacKeys([OTHER]).holds(marked)
    assert not MacKeys([KEY]).holds(raw)
    read = orjson.loads(marked)
    assert len(read[FIELD]) == 32
    assert {k: v for k, v in read.items() if k != FIELD} == orjson.loads(raw)


def test_any_change_to_a_marked_record_breaks_its_mac() -> None:
    marked = RecordMac(KEY).marked(_good()[0])
    keys = MacKeys([KEY])
    altered = [
        marked.replace(b'"allow"', b'"stop"', 1) if b'"allow"' in marked else marked[1:],
        marked[:-3] + bytes([marked[-3] ^ 1]) + marked[-2:],  # a MAC digit
        marked[:-2] + b'"} ',  # something after it
        marked[:-1] + b',"x":1}',  # a member after it
        marked.upper(),
        b"",
        b'{"audit_mac":"' + b"0" * 32 + b'"}',
    ]
    for value in altered:
        assert not keys.holds(value), value[-60:]
    assert not keys.holds(None)  # type: ignore[arg-type]
    assert not MacKeys([]).holds(marked) and not MacKeys([])
    assert not MacKeys([b""])  # an empty key is none


def test_the_signature_covers_the_mac_and_the_mac_is_checked_through_it() -> None:
    raw = _good()[0]
    signer_key = new_private_key()
    value = DecisionSigner(signer_key).signed(RecordMac(KEY).marked(raw))
    assert DecisionKeys([signer_key.public_key()]).verifies(value)
    assert MacKeys([KEY]).holds(value)
    at = signature_at(value)
    assert at is not None and value[:at] + b"}" == RecordMac(KEY).marked(raw)
    assert signature_at(raw) is None
    # a signature made over a record without the MAC does not lend it one
    assert not MacKeys([KEY]).holds(DecisionSigner(signer_key).signed(raw))


def test_the_workers_publisher_puts_the_mac_before_the_signature(tmp_path: Path) -> None:
    from baton.processors.control_seal import ensure_seal_key, seal_key
    from baton.processors.publish_select import worker_publisher
    from baton.schemas.settings import Settings

    topics = dict(decisions_topic="d", stops_topic="s", deadletter_topic="x", changelog_topic="c")
    raw = _good()[0]
    bare = worker_publisher(Settings(worker_data_dir=tmp_path), **topics, transactional_id=None)
    assert bare._signed(raw) == raw  # no key: the record as written
    ensure_seal_key(tmp_path)
    key_file = tmp_path / "decision.key"
    write_private_key(signer_key := new_private_key(), key_file)
    settings = Settings(worker_data_dir=tmp_path, decision_signing_key=key_file)
    publisher = worker_publisher(settings, **topics, transactional_id=None)
    value = publisher._signed(raw)
    assert DecisionKeys([signer_key.public_key()]).verifies(value)
    assert MacKeys([seal_key(settings)]).holds(value)
    at = signature_at(value)
    assert at is not None and value[:at] + b"}" == RecordMac(seal_key(settings)).marked(raw)
    # BATON_AUDIT_CHAIN_KEY, when set, is the key (as it is the seal's)
    keyed = Settings(worker_data_dir=tmp_path, audit_chain_key="k" * 40)
    chained = worker_publisher(keyed, **topics, transactional_id=None)
    assert MacKeys([b"k" * 40]).holds(chained._signed(raw))


def _records() -> list[tuple[int, int, bytes | None]]:
    """Worker records (MACed) with forged ones (the hostile set, unMACed copies of worker
    decisions, one MACed with another key) among them, on two partitions."""
    good = [RecordMac(KEY).marked(v) for v in _good()]
    template = replace(scenario_decisions(runs=1, start=NOW)[0], decided_at=NOW)
    forged = [value for _, value, _ in hostile_records(template)]
    forged += [_good()[1], RecordMac(OTHER).marked(_good()[2])]
    values: list[bytes | None] = []
    for i, value in enumerate(good):
        values.append(value)
        if i < len(forged):
            values.append(forged[i])
    values += forged[len(good) :]
    return [(i % 2, i, v) for i, v in enumerate(values)]


def _forged_offsets(records: list[tuple[int, int, bytes | None]]) -> set[int]:
    keys = MacKeys([KEY])
    return {o for _, o, v in records if v is not None and not keys.holds(v)}


def test_the_sink_rejects_every_record_without_the_mac_and_stores_every_worker_record() -> None:
    records = _records()
    expected_forged = _forged_offsets(records)
    assert expected_forged
    batch = AuditBatch("gov.decisions", 365, lambda: NOW, mac_keys=(KEY,))
    for record in records:
        batch.add(*record)
    forged = {r[2] for r in batch.rejected if r[5] == RejectKind.FORGED}
    assert forged == expected_forged
    assert all("no audit MAC" in r[3] for r in batch.rejected if r[5] == RejectKind.FORGED)
    # the rest: every worker record a row, exactly as a sink without keys stores it
    plain = _local([(p, o, v) for p, o, v in records if o not in expected_forged])
    assert batch.rows == plain.rows
    assert [r for r in batch.rejected if r[5] != RejectKind.FORGED] == plain.rejected


def test_a_parse_chunk_rejects_the_same_records_and_keeps_the_same_rows() -> None:
    records = _records()
    expected = AuditBatch("gov.decisions", 365, lambda: NOW, mac_keys=(KEY,))
    for record in records:
        expected.add(*record)
    chunk = parse_chunk("gov.decisions", expected.window, TYPES[DECISIONS_TABLE], records, (KEY,))
    assert sorted(map(tuple, chunk.rejected)) == sorted(map(tuple, expected.rejected))
    assert chunk.rows == len(expected.rows)
    # no keys: nothing is rejected for its MAC
    open_chunk = parse_chunk("gov.decisions", expected.window, TYPES[DECISIONS_TABLE], records)
    assert not [r for r in open_chunk.rejected if r[5] == RejectKind.FORGED]


def test_parse_processes_are_given_the_keys_with_each_chunk() -> None:
    records = _records()
    parsers = ParseProcesses(1, "gov.decisions")
    parsers.start()
    try:
        batch = AuditBatch("gov.decisions", 365, lambda: NOW, mac_keys=(KEY,))
        for i in range(0, len(records), 5):
            batch.defer_chunk(records[i : i + 5])
            batch.send(parsers, TYPES[DECISIONS_TABLE])
        rejected = [row for future in batch.chunks for row in future.result(60).rejected]
    finally:
        parsers.close()
    assert {r[2] for r in rejected if r[5] == RejectKind.FORGED} == _forged_offsets(records)


def test_members_hidden_in_the_signature_s_place_do_not_pass_as_a_workers_record() -> None:
    """h45b F1: the MAC covers what comes before the signature, and the sink checks no
    signature: 88 characters there that end its string early add members after the MACed ones,
    and the parsers keep a repeated key's last value (a stop of any run with a valid MAC)."""
    raw = _good()[0]
    macked = RecordMac(KEY).marked(raw)
    signed = DecisionSigner(new_private_key()).signed(macked)
    slot = b'","outcome":"stop","reason":"step_budget_exceeded","run_id":"victim","z":"'
    slot = slot.ljust(88, b"0")
    head = b',"signature":"'
    for body in (signed[: signed.rindex(head)], macked[:-1]):  # signed, and a MAC last
        forged_value = body + head + slot + b'"}'
        assert orjson.loads(forged_value)["run_id"] == "victim"  # what the parsers read
        assert not MacKeys([KEY]).holds(forged_value)
        assert forged_value not in (signed, macked)
        batch = AuditBatch("gov.decisions", 365, lambda: NOW, mac_keys=(KEY,))
        batch.add(0, 0, forged_value)
        assert not batch.rows and batch.rejected[0][5] == RejectKind.FORGED
    # a backslash or a quote anywhere in the 88 characters is no signature either
    for bad in (b"\\", b'"', b"-", b"_", b" "):
        spelled = signed[:-10] + bad + signed[-9:]
        assert not MacKeys([KEY]).holds(spelled), bad
    assert MacKeys([KEY]).holds(signed)
