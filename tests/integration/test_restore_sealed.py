"""A `baton up` restart with BATON_AUDIT_CHAIN_KEY re-issues the commands whose record a worker
sealed (``cli/restore_sealed``, session 40): a row forged into gov.decisions is not issued again
whatever it copies, and a sealed record replaced in ``decisions`` is still issued from the
control log. Without seals (an audit from before them) the rules for unsealed rows hold."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from baton.cli.restore_kills import fold_reissued
from baton.cli.restore_runs import restore_runs
from baton.processors.control_seal import seal
from baton.processors.engine import NO_KILLS, apply_control, apply_policy_update
from baton.processors.recorded import input_text
from baton.schemas.decision import Decision, Outcome
from baton.schemas.events import KillSwitch, KillSwitchReleased, PolicyUpdated
from baton.schemas.policy import Policy, parse_policy
from baton.schemas.signing import (
    control_payload,
    new_private_key,
    policy_hash,
    public_key_text,
    sign,
)
from baton.streams.embedded import EmbeddedBroker
from tests.integration.test_restore_runs import _reissued, _settings, _store

pytestmark = pytest.mark.integration


def _store_before_seals(chdb: Path, decisions: list[Decision]) -> None:
    """``decisions`` stored by a sink from before migration 0010, which is applied after."""
    from baton.sinks.audit_batch import AuditBatch, write_batch
    from baton.sinks.clickhouse import connect
    from baton.sinks.schema import load_migrations, migrate

    client = connect(f"chdb://{chdb}", create=True)
    try:
        migrate(client, 3650, [m for m in load_migrations() if m.version < 10])
        batch = AuditBatch("gov.decisions", ttl_days=3650)
        for i, d in enumerate(decisions):
            batch.add(0, i, d.to_json())
        write_batch(client, batch)
        assert migrate(client, 3650) == [10, 11]
    finally:
        client.close()


KEY = "the workers' chain key"


class _Story:
    """Start {oncall, mallory}; oncall kills tenant acme, then revokes mallory; every record
    as the worker made it, sealed with KEY (``sealed=False``: as an older worker, unsealed)."""

    def __init__(self, tmp_path: Path, sealed: bool = True) -> None:
        self.oncall, self.mallory = new_private_key(), new_private_key()
        both = (
            f'operators: {{oncall: "{public_key_text(self.oncall)}", '
            f'mallory: "{public_key_text(self.mallory)}"}}\n'
        )
        self.only = f'operators: {{oncall: "{public_key_text(self.oncall)}"}}\n'
        (tmp_path / "policy.yaml").write_text(both)
        self.policy: Policy = parse_policy(both, "p")
        self.key = KEY.encode() if sealed else b""
        self.base = datetime.now(UTC) - timedelta(minutes=30)
        when = self.base + timedelta(minutes=1)
        self.kills, self.kill = self._kill_command(KillSwitch, "oncall", self.oncall, when)
        when = self.base + timedelta(minutes=10)
        payload = control_payload(
            "policy_updated", "global", "*", "oncall", "", when, policy_hash(self.only)
        )
        revoke = PolicyUpdated(
            policy_yaml=self.only, operator="oncall", signature=sign(self.oncall, payload),
            event_time=when,
        )  # fmt: skip
        step = apply_policy_update(self.policy, None, revoke, when)
        assert step.applied and step.record is not None
        self.revoke = seal(replace(step.record, input=input_text(revoke)), self.key)

    def _kill_command(
        self, kind: type, name: str, key: Any, when: datetime, policy: Policy | None = None
    ) -> tuple[Any, Decision]:
        signed = sign(key, control_payload(kind.model_fields["type"].default, "tenant", "acme",
                                           name, "", when))  # fmt: skip
        event = kind(scope="tenant", tenant="acme", operator=name, signature=signed,
                     event_time=when)  # fmt: skip
        kills, record = apply_control(
            getattr(self, "kills", NO_KILLS), event, policy or self.policy, when
        )
        record.input = input_text(event)
        return kills, seal(record, self.key)

    def release(self, name: str, minutes: int, policy: Policy | None = None) -> Decision:
        key = self.oncall if name == "oncall" else self.mallory
        when = self.base + timedelta(minutes=minutes)
        return self._kill_command(KillSwitchReleased, name, key, when, policy)[1]


def _restore(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], list[str]]:
    sent = _reissued(monkeypatch)
    said: list[str] = []
    settings = _settings(broker).model_copy(
        update={"policy": str(tmp_path / "policy.yaml"), "audit_chain_key": SecretStr(KEY)}
    )
    restore_runs(settings, tmp_path, said.append)
    return sent, said


def test_a_forged_release_is_not_issued_again_whatever_it_copies(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the revocation, mallory's release was refused live. A writer of gov.decisions
    writes it as applied, with the seal of a real record copied: the rules for unsealed rows
    would have to find it out (five rounds of them, session 39); the seal does not verify."""
    story = _Story(tmp_path)
    refused = story.release("mallory", 20, parse_policy(story.only, "p2"))
    assert refused.reason == "unknown_operator"
    forged = story.release("mallory", 20)  # its shape under the start policy: applied
    forged.request_digest = story.kill.request_digest
    _store(tmp_path / "chdb", [story.kill, story.revoke, refused])
    _store(tmp_path / "chdb", [forged], 100)
    sent, said = _restore(broker, tmp_path, monkeypatch)
    assert sent == [story.kill.input, story.revoke.input]
    assert fold_reissued(sent, story.policy, datetime.now(UTC))[0].tenants == {"acme"}
    (line,) = [ln for ln in said if "carry no worker's seal" in ln]
    assert forged.request_id in line, line


def test_a_sealed_update_replaced_in_decisions_is_issued_from_the_log_and_releases_go_through(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Session 39's G2b, sealed: the revocation's row replaced in decisions (another outcome)
    made the restart issue no release at all (the lost update might have revoked its signer).
    The control log keeps the sealed record: the revocation is issued again, and oncall's
    release after it too."""
    story = _Story(tmp_path)
    release = story.release("oncall", 20, parse_policy(story.only, "p2"))
    assert release.reason == "kill_switch_released"
    _store(tmp_path / "chdb", [story.kill, story.revoke])
    _store(tmp_path / "chdb", [replace(story.revoke, outcome=Outcome.STOP, input=None)], 50)
    _store(tmp_path / "chdb", [release], 100)
    sent, said = _restore(broker, tmp_path, monkeypatch)
    assert sent == [story.kill.input, story.revoke.input, release.input]
    kills, _ = fold_reissued(sent, story.policy, datetime.now(UTC))
    assert kills.tenants == set()
    assert not any("NO release is issued again" in line for line in said), said


def test_an_audit_from_before_the_seals_keeps_the_rules_for_unsealed_rows(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records an older worker wrote (no seal) are re-issued as before the seals, and their
    replaced policy record still withholds every release no worker sealed; a sealed one after
    them (a worker applied it under the policy really in force) is issued, and does not make
    the older records forgeries."""
    story = _Story(tmp_path, sealed=False)
    release = story.release("oncall", 20, parse_policy(story.only, "p2"))
    older = story.release("oncall", 5)  # an older worker's record of a release: unsealed
    forged = replace(story.revoke, outcome=Outcome.STOP, input=None)
    _store_before_seals(tmp_path / "chdb", [story.kill, older, story.revoke, forged])
    _store(tmp_path / "chdb", [seal(release, KEY.encode())], 100)
    sent, said = _restore(broker, tmp_path, monkeypatch)
    assert sent[:1] == [story.kill.input] and release.input in sent
    assert older.input not in sent
    assert any("NO release is issued again" in line for line in said), said
    assert not any("carry no worker's seal" in line for line in said), said


def test_an_unsealed_record_stored_after_the_log_was_made_is_not_issued_again(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not even one stored before the first sealed record: a forger present before the first
    real command (G1's forged update dated before the first publication) gains nothing."""
    story = _Story(tmp_path)
    unsealed = replace(story.revoke, request_digest=None)
    _store(tmp_path / "chdb", [unsealed])
    _store(tmp_path / "chdb", [story.kill], 100)
    sent, said = _restore(broker, tmp_path, monkeypatch)
    assert sent == [story.kill.input]
    assert any("1 command record(s) of the audit carry no worker's seal" in ln for ln in said)


def test_seals_no_key_verifies_are_said_and_their_kill_is_held(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers sealed with a key this restart lacks: nothing it can tell from a forgery is
    issued, and the kill is held (fail closed), said with the hint about the keys."""
    story = _Story(tmp_path, sealed=False)
    _store(tmp_path / "chdb", [seal(story.kill, b"another key")])
    sent, said = _restore(broker, tmp_path, monkeypatch)
    assert sent == []
    assert _held(tmp_path).killed("a-new-run", "acme")
    assert any("no key here verifies, and none does" in line for line in said), said


def test_a_forged_policy_update_on_a_stack_that_never_listed_operators_is_not_issued_again(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Session 39's G1 (documented, not covered by the rules for unsealed rows): under a policy
    without operators, a forged applied update listing mallory, and mallory's signed release,
    were issued again: the fresh workers applied the update (no operator to verify it), then
    her release under it, and lifted the kill. Neither carries a worker's seal."""
    from baton.schemas.policy import load_policy

    (tmp_path / "policy.yaml").write_text("budgets: {max_steps: 50}\n")
    mallory = new_private_key()
    start = load_policy(str(tmp_path / "policy.yaml"))
    base = datetime.now(UTC) - timedelta(minutes=30)
    kill = KillSwitch(scope="tenant", tenant="acme", operator="oncall", event_time=base)
    kills, kill_row = apply_control(NO_KILLS, kill, start, base)
    kill_row.input = input_text(kill)
    listed = f'operators: {{mallory: "{public_key_text(mallory)}"}}\n'
    when = base + timedelta(minutes=5)
    payload = control_payload(
        "policy_updated", "global", "*", "mallory", "", when, policy_hash(listed)
    )
    update = PolicyUpdated(policy_yaml=listed, operator="mallory",
                           signature=sign(mallory, payload), event_time=when)  # fmt: skip
    step = apply_policy_update(start, None, update, when)
    assert step.applied and step.record is not None
    forged_update = replace(step.record, input=input_text(update))
    when = base + timedelta(minutes=6)
    signed = sign(mallory, control_payload("kill_switch_released", "tenant", "acme", "mallory",
                                           "", when))  # fmt: skip
    release = KillSwitchReleased(scope="tenant", tenant="acme", operator="mallory",
                                 signature=signed, event_time=when)  # fmt: skip
    _, forged_release = apply_control(kills, release, parse_policy(listed, "m"), when)
    forged_release.input = input_text(release)
    _store(tmp_path / "chdb", [seal(kill_row, KEY.encode())])
    _store(tmp_path / "chdb", [forged_update, forged_release], 100)
    sent, said = _restore(broker, tmp_path, monkeypatch)
    assert sent == [kill_row.input]
    assert fold_reissued(sent, start, datetime.now(UTC))[0].tenants == {"acme"}
    assert any("2 command record(s) of the audit carry no worker's seal" in ln for ln in said)


def test_the_key_baton_up_made_verifies_the_seals_without_any_setting(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from baton.processors.control_seal import ensure_seal_key, read_seal_key

    ensure_seal_key(tmp_path / "worker")
    story = _Story(tmp_path, sealed=False)
    story.key = read_seal_key(tmp_path / "worker")
    kill = seal(story.kill, story.key)
    forged = replace(story.revoke, request_digest="0" * 32)
    _store(tmp_path / "chdb", [kill, forged])
    sent = _reissued(monkeypatch)
    said: list[str] = []
    settings = _settings(broker).model_copy(update={"policy": str(tmp_path / "policy.yaml")})
    restore_runs(settings, tmp_path, said.append)
    assert sent == [kill.input]
    assert any("1 command record(s) of the audit carry no worker's seal" in ln for ln in said)


def test_a_sealed_release_refused_once_and_applied_later_is_issued_again(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Session 39's C1 rule withholds a release whose refusal is in the audit (a forged copy
    of a refused release as applied lifted a kill). Signed on a clock 5 min ahead, it was
    refused live, then applied by a worker started once its time had passed (the control
    topic is read again at every worker start): both records sealed, the restart gives it back
    instead of holding the kill again."""
    story = _Story(tmp_path)
    when = story.base + timedelta(minutes=7)
    signed = sign(story.oncall, control_payload("kill_switch_released", "tenant", "acme",
                                                "oncall", "", when))  # fmt: skip
    event = KillSwitchReleased(scope="tenant", tenant="acme", operator="oncall",
                               signature=signed, event_time=when)  # fmt: skip
    _, refused = apply_control(story.kills, event, story.policy, story.base + timedelta(minutes=2))
    _, applied = apply_control(story.kills, event, story.policy, when + timedelta(minutes=1))
    assert (refused.reason, applied.reason) == ("signature_expired", "kill_switch_released")
    for record in (refused, applied):
        record.input = input_text(event)
        seal(record, story.key)
    _store(tmp_path / "chdb", [story.kill, refused, applied])
    sent, said = _restore(broker, tmp_path, monkeypatch)
    assert sent == [story.kill.input, applied.input]
    assert fold_reissued(sent, story.policy, datetime.now(UTC))[0].tenants == set()
    assert not any("were refused by a worker before" in line for line in said), said


def test_a_sealed_release_no_operator_orders_is_still_withheld(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sealed is not enough while no operators are listed: the live workers applied every
    command in the topic's order, and a restart re-issues in the order of the times commands
    carry. A signed release, then a kill produced after it on a clock 10 s behind (dated
    before it): live, the kill holds; issued again in time order, the release would lift it.
    Such a release is withheld (session 39's C2 rule), the kill holds."""
    from baton.schemas.policy import load_policy

    (tmp_path / "policy.yaml").write_text("budgets: {max_steps: 50}\n")
    policy = load_policy(str(tmp_path / "policy.yaml"))
    oncall = new_private_key()
    base = datetime.now(UTC) - timedelta(minutes=30)
    signed = sign(oncall, control_payload("kill_switch_released", "tenant", "acme", "oncall",
                                          "", base))  # fmt: skip
    release = KillSwitchReleased(scope="tenant", tenant="acme", operator="oncall",
                                 signature=signed, event_time=base)  # fmt: skip
    kills, release_row = apply_control(NO_KILLS, release, policy, base)
    release_row.input = input_text(release)
    kill = KillSwitch(scope="tenant", tenant="acme", operator="oncall",
                      event_time=base - timedelta(seconds=10))  # fmt: skip
    kills, kill_row = apply_control(kills, kill, policy, base + timedelta(seconds=2))
    kill_row.input = input_text(kill)
    assert kills.tenants == {"acme"}  # live: the kill, read after the release, holds
    _store(tmp_path / "chdb", [seal(release_row, KEY.encode()), seal(kill_row, KEY.encode())])
    sent, said = _restore(broker, tmp_path, monkeypatch)
    assert release_row.input not in sent
    assert fold_reissued(sent, policy, datetime.now(UTC))[0].tenants == {"acme"}
    assert any("NOT issued again" in line for line in said), said


def _held(data_dir: Path) -> Any:
    from baton.processors.held_kills import read_held_kills

    return read_held_kills(data_dir / "worker")


def test_a_replaced_sealed_kill_is_not_lost_and_a_forged_kill_row_still_holds(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules for unsealed rows took a sealed kill whose row a forger replaced in
    `decisions` as lost: held from the restart, so the sealed release after it was refused as
    a replay. The log says what the workers applied: kill, then release. A kill row no key
    here verifies still holds its switch (it may be the workers' under a key this restart
    lacks: fail closed)."""
    story = _Story(tmp_path)
    release = story.release("oncall", 5)
    forged_kill = replace(
        story.kill, tenant="globex", request_digest=None, decision_id="f" * 32,
        request_id=story.kill.request_id.replace("acme", "globex"),
    )  # fmt: skip
    _store(tmp_path / "chdb", [story.kill, release])
    _store(tmp_path / "chdb", [replace(story.kill, reason="control_unsigned"), forged_kill], 50)
    sent, said = _restore(broker, tmp_path, monkeypatch)
    assert sent == [story.kill.input, release.input]
    assert fold_reissued(sent, story.policy, datetime.now(UTC))[0].tenants == set()
    held = _held(tmp_path)
    assert not held.killed("a-new-run", "acme") and held.killed("a-new-run", "globex")
    assert any("carry no worker's seal" in line for line in said), said


def test_a_sealed_kill_the_fresh_workers_refuse_is_held(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sealed is not applied: this start's policy no longer lists the kill's signer, the fresh
    workers refuse it, and the switch is held from their start (fail closed)."""
    story = _Story(tmp_path)
    _store(tmp_path / "chdb", [story.kill])
    only_mallory = f'operators: {{mallory: "{public_key_text(story.mallory)}"}}\n'
    (tmp_path / "policy.yaml").write_text(only_mallory)
    _restore(broker, tmp_path, monkeypatch)
    assert _held(tmp_path).killed("a-new-run", "acme")


def test_a_forged_digest_of_any_text_is_named_and_the_restart_goes_on(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A digest of 32 non-ASCII letters raised in hmac.compare_digest: the restart stopped."""
    story = _Story(tmp_path)
    forged = replace(story.release("oncall", 5), request_digest="é" * 32)
    _store(tmp_path / "chdb", [story.kill, forged])
    sent, said = _restore(broker, tmp_path, monkeypatch)
    assert sent == [story.kill.input]
    assert any("1 command record(s) of the audit carry no worker's seal" in ln for ln in said)


@pytest.mark.parametrize(
    ("run_id", "why", "micros"),
    [
        ("run-🚀-\u2028", "emoji \u2029 \t\r\n", 999_999),
        ("Ω" * 256, "ü" * 1024, 0),
        ('a\\b"c', "'; DROP TABLE x; --", 123_456),
        ("\ufeffbom", "\x7f\x1b[31m", 500_000),
    ],
)
def test_a_sealed_command_of_any_text_verifies_once_stored(
    tmp_path: Path, run_id: str, why: str, micros: int
) -> None:
    """What the worker seals is read back from chDB's columns (LowCardinality, DateTime64,
    Nullable text) and sealed again: a command whose text or time did not survive the trip
    would not be issued again at a restart, its kill held in silence."""
    from baton.cli.restore_sealed import read_sealed
    from baton.sinks.clickhouse import connect

    when = datetime.now(UTC).replace(microsecond=micros) - timedelta(minutes=3)
    event = KillSwitch(scope="run", run_id=run_id, operator="oncall", reason=why, event_time=when)
    _, record = apply_control(NO_KILLS, event, parse_policy("{}", "p"), when)
    record.input = input_text(event)
    _store(tmp_path / "chdb", [seal(record, KEY.encode())])
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    try:
        sealed = read_sealed(client, [KEY.encode()])
    finally:
        client.close()
    assert sealed.commands == [record.input] and not sealed.unsealed


def test_the_log_is_read_a_page_at_a_time_and_an_insert_s_rows_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restart and verify hold a page of the log, never all of it (a flood of refusals is
    stored and kept across restarts): pages of one row give what one page gives, every row of
    an insert read together in the order the workers decided them, whatever its size."""
    from baton.cli import restore_sealed
    from baton.sinks.clickhouse import connect

    story = _Story(tmp_path)
    release = story.release("oncall", 20)
    forged = replace(story.release("mallory", 25), request_digest=None)
    refused = story.release("mallory", 26, parse_policy(story.only, "p2"))
    # one insert: the release first in the batch, decided after the kill
    _store(tmp_path / "chdb", [release, story.kill, refused])
    _store(tmp_path / "chdb", [story.revoke], 50)
    _store(tmp_path / "chdb", [forged, refused], 100)

    def read(rows: int) -> restore_sealed.SealedCommands:
        for name in ("PAGE_ROWS", "MIN_PAGE_ROWS", "PAGE_BYTES"):
            monkeypatch.setattr(restore_sealed, name, rows)
        client = connect(f"chdb://{tmp_path / 'chdb'}")
        try:
            return restore_sealed.read_sealed(client, [KEY.encode()])
        finally:
            client.close()

    whole, paged = read(10 << 20), read(1)
    assert paged == whole
    assert whole.commands == [story.kill.input, release.input, story.revoke.input]
    assert whole.unsealed == [forged.request_id] and whole.unsealed_count == 1
    assert whole.any_sealed and whole.foreign == 0


def test_a_sealed_record_stored_between_the_two_reads_is_not_named_forged(tmp_path: Path) -> None:
    """`baton audit verify` against a server whose sink is storing: the log is read twice (a
    page at a time), and a sealed command stored between the reads was unknown to the first;
    the second ends where the first did, so it is left to the next verify, never FORGED."""
    from baton.cli import restore_sealed
    from baton.processors.control_seal import SEAL_FIELDS
    from baton.sinks.clickhouse import connect

    story = _Story(tmp_path)
    release = story.release("oncall", 20)
    _store(tmp_path / "chdb", [story.kill])
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    query = client.query

    def storing(sql: str, **kw: Any) -> Any:
        if "inserted_at <=" in sql and not storing.done:  # type: ignore[attr-defined]
            storing.done = True  # type: ignore[attr-defined]
            columns = [*SEAL_FIELDS, "seal", "decided_at", "audit_partition", "audit_offset"]
            values = [getattr(release, f) for f in SEAL_FIELDS]
            row = [*values, release.request_digest, release.decided_at, 0, 9]
            client.insert("governance.control_log", [row], column_names=columns)
        return query(sql, **kw)

    storing.done = False  # type: ignore[attr-defined]
    try:
        client.query = storing  # type: ignore[method-assign]
        sealed = restore_sealed.read_sealed(client, [KEY.encode()])
        assert storing.done  # type: ignore[attr-defined]
        assert sealed.commands == [story.kill.input] and sealed.unsealed_count == 0, sealed
        client.query = query  # type: ignore[method-assign]
        again = restore_sealed.read_sealed(client, [KEY.encode()])
        assert again.commands == [story.kill.input, release.input]
    finally:
        client.close()


def test_a_revocation_whose_seal_a_forger_copied_first_is_still_issued(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forger copied the revocation's seal, id, outcome and reason beside another policy
    text, stored before the worker's row: the sink dropped the worker's as a repeat, so no
    copy of the revocation verified, and the restart's workers listed mallory again (her next
    release would count). Both are stored now, and the sealed one is issued."""
    story = _Story(tmp_path)
    forged = replace(story.revoke, input=story.revoke.input.replace("oncall", "mallory", 1))
    assert forged.input != story.revoke.input
    _store(tmp_path / "chdb", [story.kill])
    _store(tmp_path / "chdb", [forged], 10)
    _store(tmp_path / "chdb", [story.revoke], 20)
    sent, said = _restore(broker, tmp_path, monkeypatch)
    assert sent == [story.kill.input, story.revoke.input], said
    ended: list[Policy] = []
    fold_reissued(sent, story.policy, datetime.now(UTC), ended=ended)
    assert set(ended[0].operators) == {"oncall"}


def test_a_kill_row_with_a_command_longer_than_any_event_is_held_not_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer of gov.decisions made kill rows of a megabyte each; every restart read each
    command whole. No worker records one past twice MAX_EVENT_BYTES (it dead-letters such an
    event): read as no command, its switch held as a lost kill (fail closed)."""
    from baton.cli import kill_records as module
    from baton.sinks.clickhouse import connect

    read: list[str] = []  # the commands as read from the audit
    as_made = module._kill_as_made
    monkeypatch.setattr(module, "_kill_as_made", lambda row: read.append(row[4]) or as_made(row))

    story = _Story(tmp_path, sealed=False)
    padded = story.kill.input.replace('"reason":""', '"reason":"' + "x" * 300_000 + '"')
    assert len(padded) > 300_000
    _store(tmp_path / "chdb", [replace(story.kill, input=padded)])
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    try:
        ((_, record),) = module.kill_records(client)
    finally:
        client.close()
    assert record == ("kill_switch", "*", "acme", "scope=tenant", "")
    assert read == [""]
