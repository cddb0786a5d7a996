"""Session 11's attacks on session 10's changes, against the pure functions: a policy whose
YAML reads otherwise than it looks (merge keys, tags), and what the control plane and the
SDK's matcher do with records a writer of any topic makes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from baton.schemas.errors import PolicyError
from baton.schemas.policy import parse_policy

pytestmark = pytest.mark.unit

# two merged tenants' limits: the YAML spec gives a key the FIRST merged mapping's value
_ANCHORS = "  strict: &strict {max_handoffs: 1}\n  loose: &loose {max_handoffs: 1000}\n"


@pytest.mark.parametrize(
    "merge",
    [
        "    <<: [*strict, *loose]\n",  # the spec: 1; PyYAML 6.0.4: 1000
        "    <<: *strict\n    <<: *loose\n",  # a key written twice, merged in silence
    ],
    ids=["two-merged-mappings", "merge-key-twice"],
)
def test_a_key_two_merges_set_is_refused_not_read_as_the_last(merge: str) -> None:
    """``tenants.c`` read as 1,000 handoffs where the spec (and a reader) says 1: PyYAML drops
    a merged key only when it met the same *string object* before, so long keys took the last
    mapping's value, one-letter keys the first's."""
    text = "tenants:\n" + _ANCHORS + "  c:\n" + merge
    with pytest.raises(PolicyError, match=r"two merged mappings|<< is written twice"):
        parse_policy(text, "p.yaml")


def restored_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, now: Any
) -> tuple[list[Any], list[str]]:
    """`baton up`'s restore from the chDB audit in ``tmp_path`` at ``now`` (a datetime),
    nothing written to Kafka: the states it would write to the changelog, and what it said."""
    import baton.cli.restore_runs as restore
    from baton.schemas.settings import Settings

    written: list[Any] = []
    monkeypatch.setattr(restore, "write_changelog", lambda _s, states, *_: written.extend(states))
    monkeypatch.setattr(restore, "reissue", lambda _s, commands, _say: len(commands))
    said: list[str] = []
    settings = Settings(partitions=4, policy=tmp_path / "policy.yaml")
    restore.restore_runs(settings, tmp_path, said.append, now=now)
    return written, said


def test_merges_read_as_the_spec_says() -> None:
    """A mapping's own key wins over a merged one, also through a merge of a merge (PyYAML
    gave a one-letter key the innermost mapping's value there); one merged list without a
    conflict loads."""
    text = (
        "tenants:\n"
        "  a: &a {max_handoffs: 1, max_agents_per_run: 9}\n"
        "  b: &b {<<: *a, max_handoffs: 2}\n"
        "  c: {<<: *b}\n"
        "  d: {<<: [*b, {shared_max_usd: 4}]}\n"
        "  e: {<<: *b, max_handoffs: 3}\n"
    )
    tenants = parse_policy(text, "p.yaml").tenants
    assert [tenants[n].max_handoffs for n in "abcde"] == [1, 2, 2, 2, 3]
    assert tenants["c"].max_agents_per_run == 9
    assert tenants["d"].shared_max_usd == 4


@pytest.mark.parametrize(
    "text",
    [
        # billing.refund.create, which a reviewer cannot read
        "multi_agent:\n  require_approval_for: [!!binary YmlsbGluZy5yZWZ1bmQuY3JlYXRl]\n",
        "tenants:\n  !!binary YWNtZQ==: {max_handoffs: 1}\n",
    ],
    ids=["tool", "tenant"],
)
def test_a_name_written_as_binary_is_refused(text: str) -> None:
    with pytest.raises(PolicyError, match="!!binary"):
        parse_policy(text, "p.yaml")


def test_a_set_is_refused_its_order_gave_every_process_another_version() -> None:
    """``!!set`` loaded as a list in hash order: the same file had another version in each
    process (checked here across three PYTHONHASHSEEDs on the commit before the fix)."""
    text = "multi_agent:\n  require_approval_for: !!set {a.b: null, c.d: null, e.f: null}\n"
    with pytest.raises(PolicyError, match="!!set"):
        parse_policy(text, "p.yaml")
    script = (
        "from baton.schemas.policy import parse_policy\n"
        "try:\n"
        f"    print(parse_policy({text!r}, 'p').version)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in (1, 2, 3)
    }
    assert outs == {"PolicyError"}


def test_a_forged_allow_flagged_as_a_copy_of_a_stored_stop_is_kept_not_dropped(
    tmp_path: Path,
) -> None:
    """A writer of gov.decisions answers a waiting client with an ``allow`` flagged
    ``reemitted`` under the id of the worker's stored ``stop`` (the SDK cannot tell it from
    the worker's: docs/security.md). The sink dropped it as a copy of that stop: the record
    that made the client proceed left no trace in the audit. It is ``not_a_copy`` now; the
    worker's own copy (the same outcome, reason and chain hash) still folds away."""
    from baton.schemas.decision import Decision, Outcome, Reason
    from baton.sinks.audit_batch import AuditBatch, write_batch
    from tests.chdb_audit import chdb_audit
    from tests.unit.test_attacks_session9_audit import _published
    from tests.unit.test_engine_support import handoff

    (stop,) = _published([handoff("h1", "t1", "planner", "researcher", run_id="rs")], "rs")
    # as the worker stored it
    stop.outcome, stop.reason = Outcome.STOP, Reason.HANDOFF_BUDGET_EXCEEDED
    client = chdb_audit(tmp_path / "chdb", [stop])
    copy = Decision.from_json(stop.to_json())
    copy.reemitted = True
    forged = Decision.from_json(copy.to_json())
    forged.outcome, forged.reason = Outcome.ALLOW, Reason.OK
    batch = AuditBatch("gov.decisions", 365)
    for offset, d in enumerate([copy, forged]):
        batch.add(0, offset, d.to_json())
    write_batch(client, batch, "chdb")
    rejected = client.query("SELECT audit_offset, error_kind FROM governance.rejected")
    stored = client.query("SELECT count() FROM governance.decisions").result_rows
    client.close()
    assert [(int(o), kind) for o, kind in rejected.result_rows] == [(1, "not_a_copy")]
    assert stored == [(1,)]


def test_the_workers_own_copies_of_a_retry_still_fold_away(tmp_path: Path) -> None:
    """A retry (the request stamped anew) answered from the run's state: the worker's copy
    repeats its original's outcome, reason and chain hash, so it is not ``not_a_copy``."""
    from baton.processors.batch import BatchProcessor, InputRecord
    from baton.sinks.audit_batch import AuditBatch, write_batch
    from tests.chdb_audit import chdb_audit
    from tests.unit.test_engine_support import at, handoff, seed_policy

    proc = BatchProcessor(seed_policy(), 1, {}, worker="w", approvals_topic="gov.approvals")
    out = []
    for offset in range(3):  # the request, then two retries of it
        event = handoff("h1", "t1", "planner", "researcher", run_id="rc")
        raw = event.model_copy(update={"event_time": at(offset)}).to_json()
        batch = proc.process(
            [InputRecord("gov.handoff.requests", 0, offset, b"rc", raw)], at(offset)
        )
        out += [d for _, d in batch.decisions]
    assert [d.reemitted for d in out] == [False, True, True]
    client = chdb_audit(tmp_path / "chdb", [])
    sink = AuditBatch("gov.decisions", 365)
    for offset, d in enumerate(out):
        sink.add(0, offset, d.to_json())
    write_batch(client, sink, "chdb")
    rejected = client.query("SELECT count() FROM governance.rejected").result_rows
    stored = client.query("SELECT count() FROM governance.decisions").result_rows
    client.close()
    assert (rejected, stored) == ([(0,)], [(1,)])


def test_a_flood_sent_once_the_worker_is_fresh_is_handed_over_within_a_bound(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 32 MiB bound held only while the follower was not fresh: a flood of junk sent
    just after it was (a writer of gov.control) was all handed to the publisher at once, for
    as long as the follower was still judged fresh (its batches full, positions are not
    judged: up to the staleness bound, 15 s, at 128-600 MB/s of dead letters). Now at most
    MAX_HELD_BYTES a second while fresh; a kill switch amid the flood is applied and recorded."""
    import logging

    from baton.processors import control
    from baton.processors.control import MAX_HELD_BYTES
    from tests.unit.test_control_follower import (
        _FakeAdmin,
        _FakeConsumer,
        _follower,
        _kill,
        _run,
    )

    # one window for the whole run: at load ~12 the run took over a second, a second window
    # of MAX_HELD_BYTES opened and 45 MB were handed over (the bound a second, as designed)
    monkeypatch.setattr(control, "HELD_WINDOW_S", 3600.0)
    junk = b"x" * 60_000
    records: list[bytes | None] = [_kill("r0"), *[junk] * 600, _kill("r1"), *[junk] * 600]
    letters: list[Any] = []
    decisions: list[Any] = []
    f = _follower(on_decision=decisions.append, on_dead_letter=letters.append)
    consumer = _FakeConsumer(records, batches=[1, 0, 0, 0, 0, 0, 500, 500, 500])
    with caplog.at_level(logging.ERROR, "baton.processors.control"):
        _run(f, consumer, _FakeAdmin(high=1))
    assert f.is_fresh() and consumer.next == len(records)  # read, fresh all along
    assert [d.reason for d in decisions] == ["kill_switch", "kill_switch"]
    assert f.kills.runs == frozenset({"r0", "r1"})
    held = sum(len(letter.value) for letter in letters)
    assert 0 < held <= MAX_HELD_BYTES, f"{held:,} bytes of dead letters handed over at once"
    assert "the next are not published, only counted" in caplog.text


def test_a_record_larger_than_any_decision_is_never_parsed_by_the_client() -> None:
    """The SDK's reader parsed every record of its partitions to find its key: a 50 MB
    record on gov.decisions (Tansu takes any size) cost every client reading that partition
    0.8 s of its reader and +570 MB at its peak, and a forged answer padded past what any
    worker publishes was taken. Now a record past MAX_DECISION_BYTES is skipped unread; the
    worker's answer after it is the one taken."""
    import dataclasses

    import orjson

    from baton.schemas.decision import Decision, Outcome, Reason
    from tests.unit.test_attacks_session9_worker import (
        GATED,
        Run,
        _as_published,
        _checked_while_read,
        _offline_client,
    )
    from tests.unit.test_engine_support import handoff

    run = Run(GATED, run_id="run-9")
    own = handoff("h1", "t1", "planner", "researcher", run_id="run-9")
    decided = _as_published(run, own)
    padded = orjson.loads(decided.to_json())
    padded["detail"] = "x" * 1_000_000  # past what Kafka takes from a worker
    forged = Decision.from_json(orjson.dumps(padded))
    forged.outcome, forged.reason = Outcome.STOP, Reason.HANDOFF_BUDGET_EXCEEDED
    client = _offline_client()
    client.options = dataclasses.replace(client.options, timeout_s=30.0)
    assert _checked_while_read(client, own, [forged, decided]) == decided


@pytest.mark.parametrize("tampered", [False, True], ids=["as-signed", "signature-altered"])
def test_a_kill_whose_recorded_command_a_writer_of_the_audit_altered_holds_on_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tampered: bool
) -> None:
    """`baton up` re-issues the audit's recorded kill commands; one whose signature a writer
    of the audit altered (one byte) was re-issued, refused by the fresh workers
    (``bad_signature``) and its run reopened: neither lost (its command is recorded) nor
    named. Now the re-issued commands are folded as the workers will fold them, and a switch
    they leave off holds its runs (``audit_unverified``), with the restore's warning."""
    import base64
    from datetime import UTC, datetime

    import orjson

    from baton.processors.batch import BatchProcessor, InputRecord
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.processors.recorded import input_text, policy_in_force
    from baton.schemas.events import KillSwitch
    from baton.schemas.signing import control_payload, new_private_key, public_key_text, sign
    from baton.streams.partitioner import partition_for
    from tests.chdb_audit import chdb_audit
    from tests.unit.test_engine_support import handoff

    key = new_private_key()
    text = f'operators:\n  oncall: "{public_key_text(key)}"\n'
    (tmp_path / "policy.yaml").write_text(text)
    policy = parse_policy(text, "p")
    now = datetime.now(UTC)
    proc = BatchProcessor(policy, 4, {}, worker="w", approvals_topic="gov.approvals")
    ev = handoff("h1", "t1", "planner", "researcher", run_id="rk").model_copy(
        update={"event_time": now}
    )
    part = partition_for(b"rk", 4)
    out = proc.process([InputRecord("gov.handoff.requests", part, 0, b"rk", ev.to_json())], now)
    assert [d.outcome for _, d in out.decisions] == ["allow"]
    payload = control_payload("kill_switch", "run", "rk", "oncall", "", now)
    kill = KillSwitch(
        scope="run", run_id="rk", operator="oncall", signature=sign(key, payload), event_time=now
    )
    _, record = apply_control(NO_KILLS, kill, policy, now)
    record.input = input_text(kill)
    if tampered:
        command = orjson.loads(record.input)
        raw = bytearray(base64.b64decode(command["signature"]))
        raw[5] ^= 1
        command["signature"] = base64.b64encode(bytes(raw)).decode()
        record.input = orjson.dumps(command).decode()
    recorded = [policy_in_force(policy, now, "w"), *(d for _, d in out.decisions), record]
    chdb_audit(tmp_path / "chdb", recorded).close()
    written, said = restored_offline(tmp_path, monkeypatch, now)
    (state,) = [s for s in written if s.run_id == "rk"]
    if tampered:
        assert state.stopped == "audit_unverified"
        assert any("cannot issue again (rk)" in line for line in said), said
    else:
        assert state.stopped is None  # the re-issued kill holds it on the fresh broker


def test_a_policy_update_whose_recorded_command_was_altered_is_named_on_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a published policy: its row kept its id, request id and reason, so it was
    not "replaced" (the restore's WARNING), and its re-issued command, one byte of its
    signature altered, was refused on the fresh broker: the policy before it in force, in
    silence. Now the restore names it."""
    import base64
    from datetime import UTC, datetime

    import orjson

    import baton.cli.restore_runs as restore
    from baton.processors.engine import apply_policy_update
    from baton.processors.recorded import input_text
    from baton.schemas.events import PolicyUpdated
    from baton.schemas.settings import Settings
    from baton.schemas.signing import (
        control_payload,
        new_private_key,
        policy_hash,
        public_key_text,
        sign,
    )
    from tests.chdb_audit import chdb_audit

    key = new_private_key()
    first = f'operators:\n  oncall: "{public_key_text(key)}"\n'
    (tmp_path / "policy.yaml").write_text(first)
    text = first + "strict_tenants: true\n"
    now = datetime.now(UTC)
    sha = policy_hash(text)
    payload = control_payload("policy_updated", "global", "*", "oncall", "", now, sha)
    update = PolicyUpdated(
        policy_yaml=text, operator="oncall", policy_sha=sha, signature=sign(key, payload),
        event_time=now,
    )  # fmt: skip
    step = apply_policy_update(parse_policy(first, "p"), None, update, now)
    assert step.applied and step.record is not None
    command = orjson.loads(input_text(update))
    raw = bytearray(base64.b64decode(command["signature"]))
    raw[0] ^= 1
    command["signature"] = base64.b64encode(bytes(raw)).decode()
    step.record.input = orjson.dumps(command).decode()
    chdb_audit(tmp_path / "chdb", [step.record]).close()
    monkeypatch.setattr(restore, "write_changelog", lambda _s, _states, *_: None)
    monkeypatch.setattr(restore, "reissue", lambda _s, commands, _say: len(commands))
    said: list[str] = []
    settings = Settings(partitions=4, policy=tmp_path / "policy.yaml")
    restore.restore_runs(settings, tmp_path, said.append, now=now)
    refused = f"policy_updated at {now.isoformat()} (bad_signature)"
    assert any("would be refused" in line and refused in line for line in said), said


@pytest.mark.parametrize("forged", [False, True], ids=["as-decided", "allow-inserted"])
def test_baton_trace_says_when_a_runs_chain_is_broken(tmp_path: Path, forged: bool) -> None:
    """A writer of gov.decisions (or of the audit) inserts an ``allow`` into a run: `baton
    trace` showed it as the run's own step, in silence (only `baton audit verify` walked the
    links). It now walks them as verify does and says the chain is broken, naming verify."""
    from click.testing import CliRunner

    from baton.cli.query_cmds import trace_cmd
    from baton.schemas.decision import Decision
    from tests.chdb_audit import chdb_audit
    from tests.unit.test_attacks_session9_audit import _published
    from tests.unit.test_engine_support import handoff

    events = [
        handoff("h1", "t1", "planner", "researcher", run_id="rt"),
        handoff("h2", "t2", "researcher", "writer", run_id="rt"),
    ]
    decisions = _published(events, "rt")
    if forged:
        extra = Decision.from_json(decisions[0].to_json())
        extra.decision_id, extra.request_id = "f" * 32, "h9"
        extra.chain_hash = "0" * 32  # a link of its own, after the run's first row
        decisions.append(extra)
    chdb_audit(tmp_path / "chdb", decisions).close()
    result = CliRunner().invoke(trace_cmd, ["rt", "--dsn", f"chdb://{tmp_path / 'chdb'}"])
    assert result.exit_code == 0, result.output
    warned = "WARNING: this run's chain is broken (" in result.output
    assert warned == forged, result.output
