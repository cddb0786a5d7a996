"""The worker's seal on a command's control record (``processors/control_seal``), as the sink
stores it: what it covers, what it leaves to the restart's re-issue, and how the sink keeps a
sealed row that a forged one tried to pre-empt (session 40)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from baton.processors.control_seal import SEAL_FIELDS, is_sealed, seal
from baton.processors.engine import NO_KILLS, apply_control
from baton.processors.recorded import input_text
from baton.schemas.decision import Decision, Outcome, Phase
from baton.schemas.events import KillSwitch
from baton.schemas.policy import load_policy
from baton.sinks.audit_batch import AuditBatch, write_batch
from tests.chdb_audit import chdb_audit

pytestmark = pytest.mark.unit

KEY = b"the workers' chain key"
_AT = datetime.now(UTC).replace(microsecond=123456) - timedelta(minutes=30)


def _kill_record(key: bytes = KEY) -> Decision:
    kill = KillSwitch(scope="tenant", tenant="acme", operator="oncall", reason="r", event_time=_AT)
    _, record = apply_control(NO_KILLS, kill, load_policy(None), _AT + timedelta(seconds=1))
    record.input = input_text(kill)
    return seal(record, key)


def _values(d: Decision) -> list[Any]:
    return [getattr(d, f) for f in SEAL_FIELDS]


def test_a_seal_verifies_the_record_and_nothing_it_covers_can_change() -> None:
    record = _kill_record()
    assert record.request_digest is not None and is_sealed(
        KEY, _values(record), record.request_digest
    )
    assert not is_sealed(b"another key", _values(record), record.request_digest)
    assert not is_sealed(b"", _values(record), record.request_digest)  # no key: nothing verifies
    changes: dict[str, Any] = {
        "decision_id": "0" * 32,
        "request_id": record.request_id + "x",
        "run_id": "r1",
        "tenant": "other",
        "phase": Phase.PRE_HANDOFF,
        "outcome": Outcome.STOP,
        "reason": "kill_switch_released",
        "approver": "mallory",
        "event_time": _AT + timedelta(microseconds=1),
        "input": (record.input or "").replace("acme", "acmf"),
    }
    assert set(changes) == set(SEAL_FIELDS)
    for name, value in changes.items():
        assert not is_sealed(
            KEY, _values(replace(record, **{name: value})), record.request_digest
        ), name


def test_where_and_when_a_worker_recorded_it_is_not_sealed() -> None:
    """A restart's re-issue is recorded again by a fresh worker, later, under another policy
    (which a policy update's detail names): the same seal, so the sink keeps the first row."""
    record = _kill_record()
    again = seal(
        replace(
            record, request_digest=None, decided_at=_AT + timedelta(days=1), worker="w-9",
            partition=3, offset=77, policy_version="another", detail="policy v0 -> v1",
        ),
        KEY,
    )  # fmt: skip
    assert again.request_digest == record.request_digest


def test_without_a_key_nothing_is_sealed() -> None:
    record = _kill_record(b"")
    assert record.request_digest is None
    assert not is_sealed(b"", _values(record), "0" * 32)


def _write(client: Any, records: list[tuple[int, bytes]]) -> None:
    batch = AuditBatch("gov.decisions", 365)
    for offset, value in records:
        batch.add(0, offset, value)
    write_batch(client, batch, "chdb")
    assert not batch.rejected


def _log(client: Any) -> list[tuple[Any, ...]]:
    columns = ", ".join(SEAL_FIELDS)
    return [
        tuple(row)
        for row in client.query(
            f"SELECT {columns}, seal FROM governance.control_log ORDER BY inserted_at"
        ).result_rows
    ]


def test_the_stored_row_verifies_as_the_worker_sealed_it(tmp_path: Path) -> None:
    record = _kill_record()
    client = chdb_audit(tmp_path / "chdb", [])
    _write(client, [(0, record.to_json())])
    (row,) = _log(client)
    client.close()
    assert is_sealed(KEY, row[:-1], row[-1])


def test_a_forged_row_written_first_under_a_sealed_records_id_does_not_keep_it_out(
    tmp_path: Path,
) -> None:
    """A writer of gov.decisions who reads gov.control writes the record of a command under its
    id, outcome and reason before the worker does: the sink kept the first row and dropped the
    worker's. The seal is part of what a row says: the worker's is news, stored; its re-issue
    at a restart (the same seal) is not stored again."""
    record = _kill_record()
    forged = replace(record, request_digest=None, detail="scope=tenant target=acme reason=forged")
    client = chdb_audit(tmp_path / "chdb", [])
    _write(client, [(0, forged.to_json())])
    _write(client, [(1, record.to_json())])
    reissued = replace(record, decided_at=_AT + timedelta(minutes=5), offset=0)
    _write(client, [(0, reissued.to_json())])
    final = client.query(
        "SELECT request_digest FROM governance.decisions FINAL WHERE phase = 'control'"
    ).result_rows
    log = _log(client)
    client.close()
    assert final == [(record.request_digest,)]
    assert [row[-1] for row in log] == [None, record.request_digest]  # every record, never replaced


@pytest.mark.parametrize("where", ["an insert before", "the same insert, first"])
@pytest.mark.parametrize(
    "altered", [{"input": '{"type":"kill_switch","scope":"global"}'}, {"approver": "mallory"}]
)
def test_a_row_that_copies_a_seal_beside_another_command_does_not_keep_the_sealed_one_out(
    tmp_path: Path, where: str, altered: dict[str, str]
) -> None:
    """The sink's once-only key held the seal, not what it seals: a writer of gov.decisions who
    copied a command's seal as soon as the record appeared, beside another command text (or
    operator) under its id, outcome and reason, got that row stored first, and the worker's
    was dropped as a repeat: the control log held no copy that verifies, and a restart lost
    the command (a policy update revoking an operator: her releases counted again)."""
    record = _kill_record()
    forged = replace(record, **altered)
    assert not is_sealed(KEY, _values(forged), forged.request_digest)
    client = chdb_audit(tmp_path / "chdb", [])
    if where == "an insert before":
        _write(client, [(0, forged.to_json())])
        _write(client, [(1, record.to_json())])
    else:
        _write(client, [(0, forged.to_json()), (1, record.to_json())])
    reissued = replace(record, decided_at=_AT + timedelta(minutes=5), offset=0)
    _write(client, [(2, reissued.to_json())])
    log = _log(client)
    client.close()
    assert [is_sealed(KEY, row[:-1], row[-1]) for row in log] == [False, True]


def test_the_control_follower_seals_each_record_it_makes() -> None:
    from baton.processors.control import ControlFollower

    made: list[Decision] = []
    follower = ControlFollower(
        {"bootstrap.servers": "127.0.0.1:1"}, "gov.control", load_policy(None), worker="w",
        on_decision=made.append, on_dead_letter=lambda _: None, seal_key=KEY,
    )  # fmt: skip
    kill = KillSwitch(scope="tenant", tenant="acme", operator="oncall", event_time=_AT)
    value = kill.to_json()
    msg = SimpleNamespace(
        topic=lambda: "gov.control", partition=lambda: 0, offset=lambda: 5, key=lambda: None,
        value=lambda: value,
    )  # fmt: skip
    follower._apply(msg)
    (record,) = made
    assert record.reason == "kill_switch"
    assert is_sealed(KEY, _values(record), record.request_digest)


def test_baton_up_makes_a_private_seal_key_once_and_a_damaged_one_is_refused(
    tmp_path: Path,
) -> None:
    from baton.processors.control_seal import ensure_seal_key, read_seal_key, seal_key, seal_keys
    from baton.schemas.errors import ConfigError
    from baton.schemas.settings import Settings

    worker = tmp_path / "worker"
    assert read_seal_key(worker) == b""
    ensure_seal_key(worker)
    made = read_seal_key(worker)
    assert len(made) == 64 and (worker / "seal.key").stat().st_mode & 0o777 == 0o600
    ensure_seal_key(worker)  # the next start keeps it: earlier seals verify
    assert read_seal_key(worker) == made
    plain = Settings(worker_data_dir=worker)
    assert seal_key(plain) == made and seal_keys(plain, worker) == [made]
    keyed = Settings(worker_data_dir=worker, audit_chain_key="chain")
    assert seal_key(keyed) == b"chain" and seal_keys(keyed, worker) == [b"chain", made]
    (worker / "seal.key").write_text("not a key\n")
    with pytest.raises(ConfigError, match=r"seal\.key is not 64 hex characters"):
        seal_key(plain)  # fail closed: the worker does not start sealing nothing


@pytest.mark.parametrize("planted", ["readable by others", "a link", "another user's"])
def test_a_seal_key_others_may_read_or_a_link_is_refused(tmp_path: Path, planted: str) -> None:
    """Whoever reads the key can seal a forged command: a key file others may read, a link a
    local user planted to a key of theirs, or a private key file of another user's (planted
    where others may write, such as /tmp beside an audit copy: root reads it) is refused."""
    import os

    from baton.processors.control_seal import ensure_seal_key, read_seal_key
    from baton.schemas.errors import ConfigError

    worker = tmp_path / "worker"
    worker.mkdir()
    if planted == "another user's":
        if os.geteuid() != 0:
            pytest.skip("needs root to give a file to another user")
        (worker / "seal.key").write_text("ab" * 32 + "\n")
        (worker / "seal.key").chmod(0o600)
        os.chown(worker / "seal.key", 65534, 65534)
    elif planted == "a link":
        (tmp_path / "mine").write_text("ab" * 32 + "\n")
        (tmp_path / "mine").chmod(0o600)
        (worker / "seal.key").symlink_to(tmp_path / "mine")
    else:
        (worker / "seal.key").write_text("ab" * 32 + "\n")
        (worker / "seal.key").chmod(0o644)
    with pytest.raises(ConfigError, match="seal key"):
        read_seal_key(worker)
    with pytest.raises(ConfigError, match="seal key"):
        ensure_seal_key(worker)  # baton up does not start on it either


@pytest.mark.parametrize("said", ["é" * 32, "\udcff" * 32, "0" * 31, "0" * 33, "", None])
def test_any_text_a_forger_puts_where_a_seal_goes_is_an_answer_not_an_error(
    said: str | None,
) -> None:
    """hmac.compare_digest raises on a str with a non-ASCII character: a forged digest of 32
    accented letters made every restart (and `baton audit verify`) crash."""
    record = _kill_record()
    assert is_sealed(KEY, _values(record), said) is False


def test_baton_up_keys_the_chains_of_a_fresh_audit_only(tmp_path: Path) -> None:
    """(session 44) chain.key is made with a fresh audit and kept; a stack whose audit was
    begun unkeyed stays unkeyed (a key now would name all its runs altered and a restart
    would stop them); BATON_AUDIT_CHAIN_KEY wins; a damaged or shared file is refused."""
    from baton.processors.control_seal import ensure_chain_key, read_chain_key, workers_chain_key
    from baton.schemas.errors import ConfigError
    from baton.schemas.settings import Settings

    worker = tmp_path / "worker"
    assert ensure_chain_key(worker, fresh_audit=False) == b"" and not worker.exists()
    made = ensure_chain_key(worker, fresh_audit=True)
    assert len(made) == 64 and (worker / "chain.key").stat().st_mode & 0o777 == 0o600
    assert ensure_chain_key(worker, fresh_audit=False) == made == read_chain_key(worker)
    assert made != read_seal_key_of(worker)  # its own key, not seal.key
    plain = Settings(worker_data_dir=worker)
    assert workers_chain_key(plain, worker) == made and workers_chain_key(plain, None) == b""
    keyed = Settings(worker_data_dir=worker, audit_chain_key="chain")
    assert workers_chain_key(keyed, worker) == b"chain"
    (worker / "chain.key").chmod(0o644)
    with pytest.raises(ConfigError, match=r"chain key .*chmod 600"):
        workers_chain_key(plain, worker)
    (worker / "chain.key").chmod(0o600)
    (worker / "chain.key").write_text("damaged\n")
    with pytest.raises(ConfigError, match=r"chain\.key is not 64 hex.*restore it from a backup"):
        ensure_chain_key(worker, fresh_audit=True)  # never replaced by another


def read_seal_key_of(worker: Path) -> bytes:
    from baton.processors.control_seal import ensure_seal_key, read_seal_key

    ensure_seal_key(worker)
    return read_seal_key(worker)


@pytest.mark.parametrize("planted", ["fifo", "folder"])
def test_a_key_path_that_is_no_file_is_refused_without_waiting(
    tmp_path: Path, planted: str
) -> None:
    """(h44 F4) a FIFO at worker/chain.key hung `baton audit verify` and `replay` for ever (the
    open waited for a writer); a folder was an IsADirectoryError traceback."""
    import os

    from baton.processors.control_seal import read_chain_key, read_seal_key
    from baton.schemas.errors import ConfigError

    worker = tmp_path / "worker"
    worker.mkdir()
    for name in ("chain.key", "seal.key"):
        if planted == "fifo":
            os.mkfifo(worker / name, 0o600)
        else:
            (worker / name).mkdir(mode=0o700)
    for read in (read_chain_key, read_seal_key):
        with pytest.raises(ConfigError, match="not a regular file"):
            read(worker)


def test_a_start_whose_workers_would_chain_with_another_key_or_none_is_refused(
    tmp_path: Path,
) -> None:
    """(h44 F1, F2) stack.json records the chain key's id: a start without chain.key (removed,
    a backup restored without it) linked new decisions unkeyed and a forged row appended at a
    run's end passed `baton audit verify`; one with BATON_AUDIT_CHAIN_KEY set or unset since
    made chains of two keys. Both are refused now; --forget-audit's start is a new audit."""
    from baton.cli.up_restart import workers_chain_key_id
    from baton.processors.control_seal import chain_key_id
    from baton.schemas.errors import ConfigError
    from baton.schemas.settings import Settings
    from tests.unit.test_up_audit import _audit, _record

    said: list[str] = []
    plain, keyed = Settings(), Settings(audit_chain_key="the-workers-key")
    # a stack begun with the variable makes no chain.key (it went unused, then was taken)
    assert workers_chain_key_id(keyed, tmp_path, None, False, said.append) == chain_key_id(
        b"the-workers-key"
    )
    assert not (tmp_path / "worker" / "chain.key").exists()
    made = workers_chain_key_id(plain, tmp_path, None, False, said.append)
    assert len(made) == 16 and (tmp_path / "worker" / "chain.key").exists() and not said
    _audit(tmp_path)  # its audit holds decisions now
    earlier = _record(tmp_path, chain_key_id=made)
    assert workers_chain_key_id(plain, tmp_path, earlier, False, said.append) == made
    with pytest.raises(ConfigError, match="this start links with another"):
        workers_chain_key_id(keyed, tmp_path, earlier, False, said.append)
    (tmp_path / "worker" / "chain.key").unlink()
    with pytest.raises(ConfigError, match=r"chain\.key is gone"):
        workers_chain_key_id(plain, tmp_path, earlier, False, said.append)
    # (not made again on an audit with decisions: unkeyed, said; --forget-audit lets it start)
    assert workers_chain_key_id(plain, tmp_path, earlier, True, said.append) == ""
    assert said and "begun without a chain key" in said[-1]
    # an unkeyed stack's record ("") lets a key be set: its chains grow stronger
    unkeyed = _record(tmp_path, chain_key_id="")
    assert workers_chain_key_id(keyed, tmp_path, unkeyed, False, said.append)
