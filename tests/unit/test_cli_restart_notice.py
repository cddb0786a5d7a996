"""Which kill switches and policy a restart of `baton up` loses: the audit's control records."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.cli.restart_notice import (
    PolicyInForce,
    _deciding_rows,
    fold_kill_switches,
    fold_policy_in_force,
)


def test_the_last_applied_command_of_each_switch_decides() -> None:
    records = [
        ("kill_switch", "run_1", "*", "scope=run target=run_1 reason=x"),
        ("kill_switch", "run_2", "*", "scope=run target=run_2 reason=x"),
        ("kill_switch_released", "run_1", "*", "scope=run target=run_1 reason=ok"),
        ("kill_switch", "*", "acme", "scope=tenant target=acme reason=x"),
        ("kill_switch", "*", "*", "scope=global target=* reason=x"),
        ("kill_switch_released", "*", "*", "scope=global target=* reason=ok"),
        # a refused release (forged, replayed) lifts nothing
        ("command_unsigned", "run_2", "*", "scope=run target=run_2 reason=x; refused: ..."),
    ]
    assert fold_kill_switches(records) == ["run run_2", "tenant acme"]


def test_a_kill_whose_command_is_recorded_is_reissued_not_lost() -> None:
    records = [
        ("kill_switch", "run_1", "*", "scope=run target=run_1 reason=x", '{"type":"kill_switch"}'),
        ("kill_switch", "run_2", "*", "scope=run target=run_2 reason=x", ""),  # older audit
    ]
    assert fold_kill_switches(records) == ["run run_2"]


def test_a_run_id_is_shown_without_terminal_escapes() -> None:
    records = [("kill_switch", "run_\x1b[2Jx", "*", "scope=run target=run_\x1b[2Jx reason=")]
    assert fold_kill_switches(records) == ["run run_\\x1b[2Jx"]


def test_no_records_no_switches() -> None:
    assert fold_kill_switches([]) == []


def test_the_policy_in_force_is_the_last_recorded_with_who_published_it() -> None:
    records = [
        ("policy_in_force", "seed", "", "2026-11-29 10:00:00", ""),
        ("policy_updated", "signed", "oncall", "2026-11-29 10:05:00", '{"signature": "ed"}'),
        ("policy_in_force", "signed", "", "2026-11-29 10:05:00", ""),
        ("kill_switch", "signed", "oncall", "2026-11-29 10:06:00", ""),  # not a policy record
        ("command_unsigned", "forged", "mallory", "2026-11-29 10:07:00", "{}"),  # refused
    ]
    assert fold_policy_in_force(records) == PolicyInForce(
        "signed", "oncall", "2026-11-29 10:05:00", reissued=True
    )


def test_an_unsigned_or_unrecorded_publication_is_not_reissued() -> None:
    for command in ("", "{}", '{"signature": null}', "not json", "[1]"):
        records = [("policy_updated", "v2", "oncall", "t", command)]
        assert fold_policy_in_force(records) == PolicyInForce("v2", "oncall", "t", False)


def test_a_policy_from_the_file_names_no_publisher_and_no_records_no_policy() -> None:
    assert fold_policy_in_force([("policy_in_force", "file", "", "t", "")]) == PolicyInForce(
        "file", None, "t"
    )
    assert fold_policy_in_force([]) is None


_RECORD = st.tuples(
    st.sampled_from(["policy_in_force", "policy_updated", "kill_switch", "command_unsigned"]),
    st.sampled_from(["", "v1", "v2", "v3"]),
    st.sampled_from(["", "oncall", "mallory"]),
    st.sampled_from(["t1", "t2"]),
    st.sampled_from(["", "{}", '{"signature": "ed"}', "not json"]),
)


@given(st.lists(_RECORD, max_size=12))
def test_the_records_whose_text_is_read_fold_as_all_of_them(records: list) -> None:
    """`policy_in_force` reads the text of only the records `_deciding_rows` names (a writer of
    gov.decisions can store a megabyte under each record it forges); the fold of those is the
    fold of all (each record's own key: its index)."""
    keyed = [(*r[:4], str(i)) for i, r in enumerate(records)]
    read = _deciding_rows(keyed)
    assert len(read) <= 3
    texts = {row[4]: records[int(row[4])][4] for row in read}
    assert fold_policy_in_force((*row[:4], texts[row[4]]) for row in read) == (
        fold_policy_in_force(records)
    )


def test_a_restart_reads_the_text_of_three_policy_records_not_every_forged_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forged policy records each under a 200 KB document: the restart's read of the policy in
    force fetches the texts the answer needs, not theirs (270 MB of them took 2.2 GB at every
    restart: session 42), and answers as before."""
    from baton.cli import restart_notice
    from baton.processors.recorded import policy_in_force as record_of
    from baton.schemas.policy import Policy
    from baton.sinks import clickhouse
    from baton.sinks.audit_batch import AuditBatch, write_batch
    from baton.sinks.schema import migrate

    chdb = tmp_path / "chdb"
    client = clickhouse.connect(f"chdb://{chdb}", create=True)
    now = datetime.now(UTC)
    real = record_of(Policy(), now, "w1")
    batch = AuditBatch("gov.decisions", ttl_days=3650)
    batch.add(0, 0, real.to_json())
    for i in range(1, 21):
        version = f"forged{i:02d}"
        forged = replace(
            real,
            decision_id=f"d{i}",
            policy_version=version,
            request_id=f"policy_in_force:{version}",
            decided_at=now - timedelta(seconds=i),  # each before the worker's record
            input='{"pad": "' + "x" * 200_000 + '"}',
        )
        batch.add(0, i, forged.to_json())
    try:
        migrate(client, 3650)
        write_batch(client, batch)
    finally:
        client.close()
    fetched = []
    connect = clickhouse.connect

    def counting(*args: Any, **kwargs: Any) -> Any:
        opened = connect(*args, **kwargs)
        query = opened.query

        def counted(sql: str, **kw: Any) -> Any:
            result = query(sql, **kw)
            fetched.extend(len(str(v)) for row in result.result_rows for v in row)
            return result

        opened.query = counted
        return opened

    monkeypatch.setattr(clickhouse, "connect", counting)
    found = restart_notice.policy_in_force(chdb)
    assert found is not None and found.version == real.policy_version
    assert found.operators == ()  # the seed's document, read and verified
    assert sum(fetched) < 200_000, sum(fetched)  # every forged document: 4 MB


def test_a_recorded_command_longer_than_any_event_is_read_as_its_size(tmp_path: Path) -> None:
    """No worker records a command longer than it reads (MAX_EVENT_BYTES): a forged one is
    read as its size, never whole (a flood of megabyte rows at every restart)."""
    from baton.cli.restart_notice import recorded_commands
    from baton.processors.recorded import policy_in_force as record_of
    from baton.schemas.policy import Policy
    from tests.chdb_audit import chdb_audit

    base = record_of(Policy(), datetime.now(UTC), "w1")
    update = replace(base, reason="policy_updated", request_id="policy_updated:x")
    small = replace(update, decision_id="d1", input='{"type": "policy_updated"}')
    huge = replace(update, decision_id="d2", input='{"pad": "' + "x" * 300_000 + '"}')
    chdb_audit(tmp_path / "chdb", [small, huge]).close()
    assert sorted(recorded_commands(tmp_path / "chdb")) == [
        "oversized: 300011",
        '{"type": "policy_updated"}',
    ]
