"""Control decisions are stored once: the first row of an id (``sinks.audit_controls``).

Session 29 (H2) found that a `baton up` restart re-issues every recorded kill switch, signed
release and policy update, and the worker records each again under the same decision id with
the restart's ``decided_at``: ``FINAL`` kept the re-issue, so the audit said a kill engaged
at 07:10:25 was engaged at the restart, after the stops it caused. The sink now keeps a
control decision's first row when a later one repeats its id, outcome and reason, on every
path a record takes (in-process rows, the parse processes' columns and rows).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from baton.sinks.audit_batch import DECISIONS_TABLE, AuditBatch, write_batch
from baton.sinks.audit_insert import insert_types
from baton.sinks.json_rows import shortcut_row
from baton.sinks.rows import DECISION_COLUMNS
from baton.sinks.sink_parse import ParseProcesses, parse_chunk
from tests.chdb_audit import chdb_audit

pytestmark = pytest.mark.unit

_ENGAGED = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
_RESTART = _ENGAGED + timedelta(minutes=20)


def _kill(decided_at: datetime, *, reason: str = "kill_switch", offset: int = 7) -> bytes:
    """A kill switch's decision as the worker records it (the id is the command's)."""
    return orjson.dumps(
        {
            "decision_id": "k" * 32,
            "request_id": "kill_switch:run:r1:2026-12-03T07:10:25+00:00",
            "run_id": "r1",
            "tenant": "default",
            "phase": "control",
            "outcome": "recorded",
            "reason": reason,
            "detail": f"scope=run target=r1 (control offset {offset})",
            "worker": "w-1",
            "event_time": _ENGAGED.isoformat(),
            "decided_at": decided_at.isoformat(),
        }
    )


def _handoff_row(n: int) -> bytes:
    return orjson.dumps(
        {
            "decision_id": f"{n:032x}",
            "request_id": f"h{n}",
            "run_id": "r1",
            "tenant": "default",
            "phase": "pre_handoff",
            "outcome": "stop",
            "reason": "killed",
            "event_time": _RESTART.isoformat(),
            "decided_at": _RESTART.isoformat(),
        }
    )


def _write(client: Any, records: list[tuple[int, bytes]]) -> AuditBatch:
    batch = AuditBatch("gov.decisions", 365)
    for offset, value in records:
        batch.add(0, offset, value)
    write_batch(client, batch, "chdb")
    return batch


def _stored(client: Any) -> tuple[list[tuple[Any, ...]], int]:
    final = client.query(
        "SELECT reason, decided_at FROM governance.decisions FINAL WHERE phase = 'control'"
    ).result_rows
    plain = client.query(
        "SELECT count() FROM governance.decisions WHERE phase = 'control'"
    ).result_rows[0][0]
    return [(r, d.replace(tzinfo=UTC)) for r, d in final], int(plain)


def test_a_restarts_re_issue_of_a_stored_kill_keeps_the_first_row(tmp_path: Path) -> None:
    client = chdb_audit(tmp_path / "chdb", [])
    first = _write(client, [(0, _kill(_ENGAGED))])
    assert first.stored_rows() == 1
    # the restart: a new broker numbers from 0 again; the re-issue, then the stop it causes
    again = _write(client, [(0, _kill(_RESTART, offset=0)), (1, _handoff_row(1))])
    stored = _stored(client)
    kept = client.query("SELECT count() FROM governance.decisions WHERE reason = 'killed'")
    client.close()
    assert stored == ([("kill_switch", _ENGAGED)], 1)
    assert kept.result_rows == [(1,)]
    assert again.stored_rows() == 1  # the stop only
    assert not again.rejected


def test_a_redelivered_batch_stores_its_control_row_once(tmp_path: Path) -> None:
    client = chdb_audit(tmp_path / "chdb", [])
    records = [(0, _handoff_row(1)), (1, _kill(_ENGAGED)), (2, _handoff_row(2))]
    _write(client, records)
    _write(client, records)  # the sink crashed before its commit: read again
    stored = _stored(client)
    rows = client.query("SELECT count() FROM governance.decisions").result_rows
    client.close()
    assert stored == ([("kill_switch", _ENGAGED)], 1)
    assert rows == [(3,)]


def test_two_rows_of_one_control_decision_in_one_batch_store_the_first(tmp_path: Path) -> None:
    client = chdb_audit(tmp_path / "chdb", [])
    _write(client, [(0, _kill(_ENGAGED)), (1, _kill(_RESTART, offset=8))])
    stored = _stored(client)
    client.close()
    assert stored == ([("kill_switch", _ENGAGED)], 1)


def test_a_control_decision_saying_something_new_under_a_stored_id_is_stored(
    tmp_path: Path,
) -> None:
    """A command refused before (say, unsigned) and applied now is news: stored, and FINAL
    shows the later row, as for every other decision."""
    client = chdb_audit(tmp_path / "chdb", [])
    _write(client, [(0, _kill(_ENGAGED, reason="control_unsigned"))])
    _write(client, [(0, _kill(_RESTART))])
    stored = _stored(client)
    client.close()
    assert stored == ([("kill_switch", _RESTART)], 2)


def test_control_records_take_the_general_path_in_every_parser(tmp_path: Path) -> None:
    """The shortcut and the parse processes' columns leave a control record to the batch,
    which keeps it apart: through real parse processes, a re-issue is not stored either."""
    assert shortcut_row(_kill(_ENGAGED), "gov.decisions", 0, 0) is None
    assert shortcut_row(_handoff_row(1), "gov.decisions", 0, 1) is not None
    finished = orjson.loads(_kill(_ENGAGED))  # a run's finished record: one a run, a row
    finished.update(request_id="r1:finished", reason="run_finished")
    assert shortcut_row(orjson.dumps(finished), "gov.decisions", 0, 2) is not None
    client = chdb_audit(tmp_path / "chdb", [])
    types = insert_types(client, DECISIONS_TABLE, DECISION_COLUMNS)
    records = [(0, 0, _handoff_row(1)), (0, 1, _kill(_ENGAGED)), (0, 2, _handoff_row(2))]
    chunk = parse_chunk("gov.decisions", None, types, records)
    assert chunk.rows == 2 and not chunk.rejected and chunk.marks is not None  # columns
    assert [(row[-2], row[-1]) for row, _ in chunk.controls] == [(0, 1)]
    assert chunk.controls[0][1] == records[1][2]
    parsers = ParseProcesses(1, "gov.decisions")
    parsers.start()
    try:
        for batch_records in (records, [(0, 3, _kill(_RESTART, offset=3))]):
            batch = AuditBatch("gov.decisions", 365)
            batch.defer_chunk(batch_records)
            batch.send(parsers, types)
            write_batch(client, batch, "chdb", {DECISIONS_TABLE: types})
            assert batch.encoded_rows is not None  # the parse processes' path
    finally:
        parsers.close()
    stored = _stored(client)
    client.close()
    assert stored == ([("kill_switch", _ENGAGED)], 1)


def test_a_policy_in_force_record_keeps_its_latest_row(tmp_path: Path) -> None:
    """Each worker start restates the policy it decides under (one id a version): the latest
    row says since when, and `baton up`'s restart notice reads the last one (a restart on the
    policy file after a publication the restart could not re-issue must read the file's)."""
    from baton.processors.recorded import policy_in_force
    from tests.unit.test_engine_support import seed_policy

    policy = seed_policy()
    client = chdb_audit(tmp_path / "chdb", [])
    for offset, when in enumerate((_ENGAGED, _RESTART)):
        _write(client, [(offset, policy_in_force(policy, when, "w-1").to_json())])
    final = client.query(
        "SELECT decided_at FROM governance.decisions FINAL WHERE reason = 'policy_in_force'"
    ).result_rows
    client.close()
    assert [d.replace(tzinfo=UTC) for (d,) in final] == [_RESTART]


def test_a_flood_of_control_records_with_long_ids_never_holds_the_sink(tmp_path: Path) -> None:
    """A writer of gov.decisions floods it with control records: ids of 250 characters are
    looked up in parts of about 64 KiB, an id no worker writes (past 256) is not looked up
    and is stored (as any forged row is); the batch completes."""
    client = chdb_audit(tmp_path / "chdb", [])
    doc = orjson.loads(_kill(_ENGAGED))
    records = []
    for n in range(600):
        doc["run_id"] = f"{n:04d}" + "r" * (246 if n else 60_000)
        records.append((n, orjson.dumps(doc)))
    batch = _write(client, records)
    again = _write(client, [(600 + n, v) for n, v in records[1:]])  # each held now
    rows = client.query("SELECT count() FROM governance.decisions").result_rows
    client.close()
    assert batch.stored_rows() + len(batch.rejected) == 600
    assert again.stored_rows() == 0 and not again.rejected
    assert rows == [(batch.stored_rows(),)]
