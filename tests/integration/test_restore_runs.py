"""Run states rebuilt from a chDB audit into a Tansu changelog (what `baton up` does on a fresh
broker): byte for byte the worker's state when inputs are recorded; counters, spend and the
sticky stop when they are not (an audit from before migration 0005)."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from baton.cli.restore_runs import restore_runs
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.engine import KillSwitches
from baton.processors.held_kills import read_held_kills
from baton.processors.recorded import input_text, policy_in_force
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome, Phase
from baton.schemas.events import HandoffCompleted, HandoffRequested
from baton.schemas.policy import load_policy
from baton.schemas.settings import Settings
from baton.sinks.audit_batch import AuditBatch, write_batch
from baton.sinks.clickhouse import connect
from baton.sinks.schema import migrate
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _history(now: datetime) -> tuple[dict[bytes, RunState], list[Decision]]:
    """Two runs through the worker's batch step: one stopped over its $30 budget, one that
    locked a task to its owner."""
    policy = load_policy(None)
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(policy, PARTITIONS, states, worker="w")
    events = [
        HandoffRequested(
            request_id="o-1", run_id="over", task_id="t1", from_agent="planner",
            to_agent="researcher", estimated_usd=2.0, event_time=now,
        ),
        HandoffCompleted(
            request_id="o-1", run_id="over", task_id="t1", agent="researcher", cost_usd=40.0,
            event_time=now,
        ),
        HandoffRequested(
            request_id="w-1", run_id="owned", task_id="t1", from_agent="planner",
            to_agent="researcher", task_kind="research", event_time=now,
        ),
    ]  # fmt: skip
    published: list[Decision] = [policy_in_force(policy, now, "w")]
    for offset, ev in enumerate(events):
        key = ev.run_id.encode()
        rec = InputRecord("requests", partition_for(key, PARTITIONS), offset, key, ev.to_json())
        published += [d for _, d in proc.process([rec], now).decisions]
    return states, published


def _store(chdb: Path, decisions: list[Decision], first_offset: int = 0) -> None:
    client = connect(f"chdb://{chdb}", create=True)
    try:
        migrate(client, 3650)
        batch = AuditBatch("gov.decisions", ttl_days=3650)
        for i, d in enumerate(decisions, first_offset):
            batch.add(0, i, d.to_json())
        assert not batch.rejected
        write_batch(client, batch)
    finally:
        client.close()


def _changelog(bootstrap: str, topic: str) -> dict[bytes, RunState]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "log_level": 0,
         "enable.partition.eof": True}
    )  # fmt: skip
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    found: dict[bytes, RunState] = {}
    ends = 0
    try:
        while ends < PARTITIONS:
            msg = consumer.poll(10)
            assert msg is not None, "the changelog did not answer"
            if msg.error() is not None:
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                ends += 1
                continue
            assert msg.partition() == partition_for(msg.key(), PARTITIONS)
            found[msg.key()] = RunState.from_bytes(msg.value())
    finally:
        consumer.close()
    return found


def _settings(broker: EmbeddedBroker) -> Settings:
    return Settings(
        bootstrap=broker.bootstrap,
        partitions=PARTITIONS,
        app_id=f"restore-{uuid.uuid4().hex[:8]}",
    )


def test_recorded_runs_are_restored_as_the_worker_held_them(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    now = datetime.now(UTC) - timedelta(seconds=5)
    states, published = _history(now)
    _store(tmp_path / "chdb", published)
    settings = _settings(broker)
    said: list[str] = []
    assert restore_runs(settings, tmp_path, said.append) == 2
    restored = _changelog(broker.bootstrap, f"{settings.app_id}-runs-changelog")
    assert restored.keys() == {b"over", b"owned"}
    for key, state in states.items():  # exactly the worker's state, dedup marks and all,
        # but the positions it read: the restored runs' topics begin at offset 0 again, and a
        # position of the old topic would take a client's retry there for a redelivery
        held = state.copy()
        assert held.read_partition >= 0
        held.read_partition = held.read_requests = held.read_approvals = -1
        held.seq = restored[key].seq  # (the replay's own count of copies: the record's order)
        assert restored[key].to_bytes() == held.to_bytes(), key
    assert restored[b"over"].stopped == "shared_budget_exceeded"
    assert said == [
        "restore: WARNING: no chain key (BATON_AUDIT_CHAIN_KEY, DATA_DIR/worker/chain.key): a "
        "row forged into the audit with a correctly computed chain cannot be told from a "
        "worker's, so the restored states are only as trustworthy as whoever can write "
        "gov.decisions and the chDB directory"
    ]


def test_runs_audited_without_inputs_keep_their_counters_spend_and_stop(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    now = datetime.now(UTC) - timedelta(seconds=5)
    _, published = _history(now)
    # from before chains too (migration 0004): a chained run without inputs is one whose rows
    # were replaced (below)
    legacy = dict(input=None, chain_prev=None, chain_hash=None)
    _store(tmp_path / "chdb", [replace(d, **legacy) if d.run_id != "*" else d for d in published])
    settings = _settings(broker)
    said: list[str] = []
    assert restore_runs(settings, tmp_path, said.append) == 2
    restored = _changelog(broker.bootstrap, f"{settings.app_id}-runs-changelog")
    over = restored[b"over"]
    assert (over.stopped, over.spent_usd, over.handoff_count) == ("shared_budget_exceeded", 40.0, 1)
    assert restored[b"owned"].handoff_count == 1 and restored[b"owned"].stopped is None
    assert said[0] == "restore: 2 runs restored from their counters only (no inputs)"


def test_a_run_whose_rows_were_replaced_by_copies_without_inputs_is_restored_stopped(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """H2, session 36: a writer of gov.decisions replaced every row of a run in FINAL with a
    copy without input (chain kept or dropped), its spend zeroed and its stop turned into an
    allow: the run was restored from those counters, reopened, 49.5 USD spent of 30."""
    now = datetime.now(UTC) - timedelta(seconds=5)
    _, published = _history(now)
    _store(tmp_path / "chdb", published)
    forged = [
        replace(
            d, input=None, spent_usd=0.0, handoff_count=0, outcome=Outcome.ALLOW,
            reason="within_budget", **({"chain_prev": None, "chain_hash": None} if i else {}),
        )
        for i, d in enumerate(d for d in published if d.run_id == "over")
    ]  # fmt: skip
    _store(tmp_path / "chdb", forged, first_offset=1000)
    settings = _settings(broker)
    said: list[str] = []
    assert restore_runs(settings, tmp_path, said.append) == 2
    restored = _changelog(broker.bootstrap, f"{settings.app_id}-runs-changelog")
    assert restored[b"over"].stopped == "audit_unverified"
    assert restored[b"owned"].stopped is None  # untouched: replayed from its inputs
    assert any("did not replay exactly as recorded (over)" in line for line in said), said


def test_runs_idle_past_the_retention_are_not_restored(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = _settings(broker)
    long_ago = datetime.now(UTC) - timedelta(
        seconds=settings.run_retention_s + settings.tombstone_retention_s + 60
    )
    _, published = _history(long_ago)
    _store(tmp_path / "chdb", published)
    assert restore_runs(settings, tmp_path, lambda line: None) == 0


@pytest.mark.parametrize(
    "forgery",
    [
        pytest.param({"input": None, "chain_prev": None, "chain_hash": None}, id="no input"),
        pytest.param({"input": '{"cost_usd":0.5}'}, id="another input"),
    ],
)
def test_a_stop_replaced_in_final_by_a_forged_row_restores_the_run_stopped(
    broker: EmbeddedBroker, tmp_path: Path, forgery: dict
) -> None:
    """A writer of gov.decisions sends a copy of the budget stop under its decision id, with
    no spend and no stop (and no input, or another): the sink stores it after the original,
    so FINAL keeps the forged copy. The restore cannot verify the run and stops it."""
    now = datetime.now(UTC) - timedelta(seconds=5)
    _, published = _history(now)
    _store(tmp_path / "chdb", published)
    stop = next(d for d in published if d.reason == "shared_budget_exceeded")
    text = forgery.get("input")
    if text is not None:  # the real completion with another cost: parses, decides otherwise
        real = json.loads(stop.input or "{}")
        forgery = {"input": json.dumps({**real, **json.loads(text)})}
    forged = replace(
        stop,
        outcome=Outcome.RECORDED,
        reason="within_budget",
        spent_usd=0.0,
        fallback=None,
        **forgery,
    )
    _store(tmp_path / "chdb", [forged], first_offset=1000)
    settings = _settings(broker)
    said: list[str] = []
    assert restore_runs(settings, tmp_path, said.append) == 2
    restored = _changelog(broker.bootstrap, f"{settings.app_id}-runs-changelog")
    assert restored[b"over"].stopped == "audit_unverified"
    assert restored[b"owned"].stopped is None  # the honest run is restored as it was
    assert any("1 run did not replay exactly as recorded (over)" in line for line in said), said


def test_a_forged_command_that_does_not_parse_is_named_and_the_restore_goes_on(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """A control row whose recorded command is not one (forged into gov.decisions): before,
    the restore re-parsed it unguarded and every start of baton up ended there."""
    now = datetime.now(UTC) - timedelta(seconds=5)
    _, published = _history(now)
    record = published[0]  # the worker's policy_in_force record: a control row of run "*"
    forged = replace(
        record,
        decision_id="f" * 32,
        request_id="kill_switch:global:*:2026-11-29T10:00:00+00:00",
        reason="kill_switch",
        detail="scope=global target=* reason=",
        input='{"type":"kill_switch","scope":"global"}',
    )
    _store(tmp_path / "chdb", [*published, forged])
    settings = _settings(broker)
    said: list[str] = []
    assert restore_runs(settings, tmp_path, said.append) == 2
    assert any("a recorded command is not a control event" in line for line in said), said


def _held(data_dir: Path) -> KillSwitches:
    """The switches a restore left for the stack's workers to hold."""
    return read_held_kills(data_dir / "worker")


def _acme_command(kind: type, key: object, when: datetime) -> Any:
    """``kind`` (a kill or its release) of tenant acme, signed by oncall's ``key`` at ``when``."""
    from baton.schemas.signing import control_payload, sign

    name = kind.model_fields["type"].default
    signed = sign(key, control_payload(name, "tenant", "acme", "oncall", "r", when))
    return kind(
        scope="tenant", tenant="acme", operator="oncall", reason="r", signature=signed,
        event_time=when,
    )  # fmt: skip


def test_a_forged_release_that_replaced_a_kill_in_final_is_held_for_new_runs_too(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """A writer of gov.decisions sends a kill_switch_released record under a tenant kill's
    decision id: FINAL keeps it instead of the kill. The restore held only the runs the
    audit held; a brand-new run of the tenant was allowed (session 36's "not fixed"). Now
    the workers hold the switch from their start, dated at the restart: a release signed
    before it is a replay."""
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.schemas.events import KillSwitch

    now = datetime.now(UTC) - timedelta(seconds=5)
    kill = KillSwitch(scope="tenant", tenant="acme", operator="oncall", event_time=now)
    _, record = apply_control(NO_KILLS, kill, load_policy(None), now)
    record.input = input_text(kill)  # as the worker records it (processors/control_apply.py)
    _store(tmp_path / "chdb", [record])
    settings = _settings(broker)
    restore_runs(settings, tmp_path, [].append)
    assert _held(tmp_path) == NO_KILLS  # its command is recorded: issued again, not held
    forged = replace(record, reason="kill_switch_released", input=None)
    _store(tmp_path / "chdb", [forged], first_offset=1000)
    restarted = datetime.now(UTC)
    restore_runs(settings, tmp_path, [].append, now=restarted)
    held = _held(tmp_path)
    assert held.tenants == {"acme"} and held.killed("a-run-never-seen", "acme")
    assert held.latest.get("tenant:acme") == restarted.timestamp()


@pytest.mark.parametrize(
    "forgery",
    [{"reason": "control_unsigned", "input": None}, {"phase": Phase.PRE_HANDOFF}],
    ids=["another reason", "another phase"],
)
def test_a_kill_replaced_in_final_by_a_row_of_another_reason_or_phase_is_held(
    broker: EmbeddedBroker, tmp_path: Path, forgery: dict
) -> None:
    """H2, session 36: the kill's row replaced under its id by one the kill records' query
    did not read (another reason, or the same row under another phase): the kill was neither
    re-issued nor named, and the run's handoffs were allowed after the restart."""
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.schemas.events import KillSwitch

    now = datetime.now(UTC) - timedelta(seconds=5)
    _, published = _history(now)
    kill = KillSwitch(scope="run", run_id="owned", operator="oncall", event_time=now)
    _, record = apply_control(NO_KILLS, kill, load_policy(None), now)
    _store(tmp_path / "chdb", [*published, record])
    _store(tmp_path / "chdb", [replace(record, **forgery)], first_offset=1000)
    settings = _settings(broker)
    said: list[str] = []
    restore_runs(settings, tmp_path, said.append)
    assert _held(tmp_path).runs == {"owned"}
    restored = _changelog(broker.bootstrap, f"{settings.app_id}-runs-changelog")
    assert restored[b"owned"].stopped == "audit_unverified"  # held (or, a row of the run's
    # own phase now, no longer replaying as recorded): never reopened
    assert any("owned" in s and "STOPPED (audit_unverified)" in s for s in said), said


def test_a_policy_update_replaced_under_its_id_is_named(tmp_path: Path) -> None:
    """H2, session 36: a signed policy update's row replaced under its id by one of another
    request id or phase passed the replaced-records check, and the restart ran the policy
    before it in silence."""
    from baton.cli.restore_kills import replaced_policy_records
    from baton.processors.engine import apply_policy_update
    from baton.schemas.events import PolicyUpdated

    now = datetime.now(UTC) - timedelta(seconds=5)
    update = PolicyUpdated(policy_yaml="multi_agent: {}\n", operator="oncall", event_time=now)
    step = apply_policy_update(load_policy(None), None, update, now)
    assert step.applied and step.record is not None
    _store(tmp_path / "chdb", [step.record])
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    try:
        assert replaced_policy_records(client) == []
    finally:
        client.close()
    for n, forgery in enumerate(({"phase": Phase.PRE_HANDOFF}, {"request_id": "x"})):
        _store(tmp_path / "chdb", [replace(step.record, **forgery)], first_offset=1000 + n)
        client = connect(f"chdb://{tmp_path / 'chdb'}")
        try:
            (named,) = replaced_policy_records(client)
        finally:
            client.close()
        assert named.startswith("policy_updated (id "), named


def test_runs_under_a_lost_kill_switch_are_restored_stopped(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Kills of run "owned" (which had no stopped handoff) and of run "ghost" (no other row),
    each replaced in FINAL by a forged release: naming them as lost is not enough, the
    restore holds them (stopped, audit_unverified) so a handoff after the restart is not
    allowed."""
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.schemas.events import KillSwitch

    now = datetime.now(UTC) - timedelta(seconds=5)
    _, published = _history(now)
    kills = []
    for run in ("owned", "ghost"):
        kill = KillSwitch(scope="run", run_id=run, operator="oncall", event_time=now)
        _, record = apply_control(NO_KILLS, kill, load_policy(None), now)
        kills.append(record)
    _store(tmp_path / "chdb", [*published, *kills])
    forged = [replace(k, reason="kill_switch_released", input=None) for k in kills]
    _store(tmp_path / "chdb", forged, first_offset=1000)
    settings = _settings(broker)
    said: list[str] = []
    assert restore_runs(settings, tmp_path, said.append) == 3
    restored = _changelog(broker.bootstrap, f"{settings.app_id}-runs-changelog")
    assert restored[b"owned"].stopped == "audit_unverified"
    assert restored[b"ghost"].stopped == "audit_unverified"
    assert any("2 runs under a kill switch this restart cannot issue" in s for s in said), said


@pytest.mark.parametrize(
    "forgery",
    [
        "dated before the release",
        "then a release row",
        "an altered command, then a release row",
        "a detail naming another scope",
        "a row under its id with another tenant",
    ],
)
def test_a_lost_kill_after_a_signed_release_is_held_whatever_time_its_forger_gives_it(
    broker: EmbeddedBroker, tmp_path: Path, forgery: str
) -> None:
    """Session 38, A2: kill t0, signed release t5, kill t10; a writer of gov.decisions replaces
    the t10 kill under its id with a release row dated before t5 (and a copy of the kill's
    variant dated there too), or after it plus a release row of its own id. The restart
    re-issued t0 and t5, which fold to off, read the lost kill as released by t5, held
    nothing, and a new run of the tenant was allowed. The lost kill is dated by the latest
    time ``kill_times`` recorded under its id; only a release signed after it lifts it."""
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.schemas.decision import Reason, decision_id_for
    from baton.schemas.events import KillSwitch, KillSwitchReleased
    from baton.schemas.policy import parse_policy
    from baton.schemas.signing import new_private_key, public_key_text

    key = new_private_key()
    text = f'operators: {{oncall: "{public_key_text(key)}"}}\n'
    (tmp_path / "policy.yaml").write_text(text)
    policy = parse_policy(text, "p")
    base = datetime.now(UTC) - timedelta(minutes=30)

    def command(kind: type, minutes: float) -> KillSwitch | KillSwitchReleased:
        return _acme_command(kind, key, base + timedelta(minutes=minutes))  # type: ignore[no-any-return]

    kills, records = NO_KILLS, []
    for kind, minutes in ((KillSwitch, 0), (KillSwitchReleased, 5), (KillSwitch, 10)):
        event = command(kind, minutes)
        kills, record = apply_control(kills, event, policy, event.event_time)
        record.input = input_text(event)
        records.append(record)
    assert [r.reason for r in records] == ["kill_switch", "kill_switch_released", "kill_switch"]
    _store(tmp_path / "chdb", records)
    lost = records[2]
    if forgery == "dated before the release":
        early = records[1].decided_at - timedelta(seconds=30)
        forged = [
            # the kill's variant, dated earlier (another phase: a command's id is stored once)
            replace(lost, decided_at=early, input=None, phase=Phase.PRE_HANDOFF),
            replace(lost, reason=Reason.KILL_SWITCH_RELEASED, input=None, decided_at=early),
        ]
    elif forgery == "an altered command, then a release row":
        # session 39: a kill row under its id whose command does not parse (another outcome:
        # the sink stores it as news) was taken as a command re-issued, and so not lost
        own = "kill_switch_released:tenant:acme:" + (base + timedelta(minutes=11)).isoformat()
        forged = [
            replace(lost, outcome=Outcome.STOP, input="x"),
            replace(lost, reason=Reason.KILL_SWITCH_RELEASED, request_id=own, input=None,
                    decision_id=decision_id_for("*", own, Phase.CONTROL),
                    decided_at=lost.decided_at + timedelta(minutes=1)),
        ]  # fmt: skip
    elif forgery == "a detail naming another scope":  # session 39: the scope read from detail
        forged = [replace(lost, outcome=Outcome.STOP, input="x", detail="scope=bogus")]
    elif forgery == "a row under its id with another tenant":
        # session 39: decision_variants grouped by id alone and any(tenant) named tenant "0"
        forged = [
            replace(lost, phase=Phase.PRE_HANDOFF, input=None),
            replace(lost, phase=Phase.PRE_HANDOFF, input=None, tenant="0"),
        ]
    else:
        own = "kill_switch_released:tenant:acme:" + (base + timedelta(minutes=11)).isoformat()
        forged = [
            replace(lost, reason=Reason.KILL_SWITCH_RELEASED, input=None,
                    decided_at=lost.decided_at + timedelta(seconds=1)),
            replace(lost, reason=Reason.KILL_SWITCH_RELEASED, request_id=own, input=None,
                    decision_id=decision_id_for("*", own, Phase.CONTROL),
                    decided_at=lost.decided_at + timedelta(minutes=1)),
        ]  # fmt: skip
    _store(tmp_path / "chdb", forged, first_offset=100)
    settings = _settings(broker).model_copy(update={"policy": str(tmp_path / "policy.yaml")})
    restore_runs(settings, tmp_path, [].append)
    assert _held(tmp_path).killed("a-run-never-seen", "acme")
    # a release signed after the lost kill lifts it, at this restart and the next (after it
    # was stored too: the sink's clock dates a kill no writer of the topic can move earlier)
    release = command(KillSwitchReleased, (datetime.now(UTC) - base).total_seconds() / 60)
    _, record = apply_control(kills, release, policy, release.event_time)
    record.input = input_text(release)
    _store(tmp_path / "chdb", [record], first_offset=200)
    restore_runs(settings, tmp_path, [].append)
    assert not _held(tmp_path).killed("a-run-never-seen", "acme")  # (tenant "0": still held)


def test_a_lost_kill_is_compared_with_a_release_on_the_operators_clock(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Session 39: the lost kill was dated on the worker's and the sink's clocks and the
    re-issued release on the operator's, which a worker accepts up to 60 s ahead: with it
    50 s ahead, a release signed 30 s (worker time) before the kill read as after it, and the
    lost kill as lifted. The kill's own command time (its request id) is compared too."""
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.schemas.decision import Phase, Reason, decision_id_for
    from baton.schemas.events import KillSwitch, KillSwitchReleased
    from baton.schemas.policy import parse_policy
    from baton.schemas.signing import new_private_key, public_key_text

    key = new_private_key()
    text = f'operators: {{oncall: "{public_key_text(key)}"}}\n'
    (tmp_path / "policy.yaml").write_text(text)
    policy = parse_policy(text, "p")
    now, ahead = datetime.now(UTC), timedelta(seconds=50)
    kills, records = NO_KILLS, []
    for kind, worker_at in (
        (KillSwitch, now - timedelta(seconds=100)),
        (KillSwitchReleased, now - timedelta(seconds=40)),
        (KillSwitch, now - timedelta(seconds=10)),
    ):
        event = _acme_command(kind, key, worker_at + ahead)
        kills, record = apply_control(kills, event, policy, worker_at)
        record.input = input_text(event)
        records.append(record)
    assert [r.reason for r in records] == ["kill_switch", "kill_switch_released", "kill_switch"]
    _store(tmp_path / "chdb", records)
    lost = records[2]
    own = "kill_switch_released:tenant:acme:" + (lost.decided_at + ahead).isoformat()
    _store(
        tmp_path / "chdb",
        [
            replace(lost, reason=Reason.KILL_SWITCH_RELEASED, input=None),
            replace(
                lost,
                reason=Reason.KILL_SWITCH_RELEASED,
                request_id=own,
                input=None,
                decision_id=decision_id_for("*", own, Phase.CONTROL),
                decided_at=lost.decided_at + timedelta(seconds=40),
            ),  # after it was stored
        ],
        first_offset=100,
    )
    settings = _settings(broker).model_copy(update={"policy": str(tmp_path / "policy.yaml")})
    restore_runs(settings, tmp_path, [].append)
    assert _held(tmp_path).killed("a-run-never-seen", "acme")


def _reissued(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The commands the restore issues again, caught instead of sent."""
    from baton.cli import restore_runs as module

    sent: list[str] = []
    monkeypatch.setattr(module, "reissue", lambda _s, commands, _say: sent.extend(commands) or 0)
    return sent


@pytest.mark.parametrize("copy", ["as refused", "with a run id its signature does not cover"])
def test_a_refused_release_copied_as_applied_is_not_issued_again(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copy: str
) -> None:
    """Session 39, C1: a release the live workers refused (signed on a clock 5 min ahead:
    signature_expired) keeps its signed text in its refusal record; a writer of gov.decisions
    copied it into a row of an applied release. Once its time had passed the restart issued it
    again, the fresh workers applied it, and the kill the live workers held was lifted. (A1:
    the copy with a field its signature does not cover had another refusal id.)"""
    from baton.cli.restore_kills import fold_reissued
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.schemas.decision import Phase, Reason, decision_id_for
    from baton.schemas.events import KillSwitch, KillSwitchReleased
    from baton.schemas.policy import parse_policy
    from baton.schemas.signing import new_private_key, public_key_text

    key = new_private_key()
    text = f'operators: {{oncall: "{public_key_text(key)}"}}\n'
    (tmp_path / "policy.yaml").write_text(text)
    policy = parse_policy(text, "p")
    base = datetime.now(UTC) - timedelta(minutes=30)
    kills, records = NO_KILLS, []
    for kind, signed_at, worker_at in (
        (KillSwitch, base, base),
        (KillSwitchReleased, base + timedelta(minutes=7), base + timedelta(minutes=2)),
    ):
        event = _acme_command(kind, key, signed_at)
        kills, record = apply_control(kills, event, policy, worker_at)
        record.input = input_text(event)
        records.append(record)
    refused = records[1]
    assert refused.reason == Reason.SIGNATURE_EXPIRED and kills.tenants == {"acme"}
    _store(tmp_path / "chdb", records)
    own = refused.request_id.split(":refused:")[0]
    forged = replace(
        refused, reason=Reason.KILL_SWITCH_RELEASED, request_id=own,
        decision_id=decision_id_for("*", own, Phase.CONTROL),
    )  # fmt: skip
    if copy != "as refused":
        from baton.schemas.events import parse_control_event

        event = parse_control_event(str(refused.input).encode())
        forged.input = input_text(event.model_copy(update={"run_id": "zz"}))
    _store(tmp_path / "chdb", [forged], first_offset=100)
    sent = _reissued(monkeypatch)
    said: list[str] = []
    settings = _settings(broker).model_copy(update={"policy": str(tmp_path / "policy.yaml")})
    restore_runs(settings, tmp_path, said.append)
    assert sent == [records[0].input]  # the kill alone
    assert fold_reissued(sent, policy, datetime.now(UTC))[0].tenants == {"acme"}
    assert any("were refused by a worker before this restart" in line for line in said), said


def test_a_signed_release_no_operator_can_verify_is_not_issued_again(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Session 39, C2: with no operators listed, a release row whose command carries any
    signature was issued again as "signed", and the fresh workers (which verify nothing then)
    lifted the kill. No key verifies it: it is as anyone's as an unsigned one."""
    from baton.cli.restore_kills import fold_reissued
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.schemas.events import KillSwitch, KillSwitchReleased

    base = datetime.now(UTC) - timedelta(minutes=30)
    policy = load_policy(None)
    kill = KillSwitch(scope="tenant", tenant="acme", operator="oncall", event_time=base)
    kills, record = apply_control(NO_KILLS, kill, policy, base)
    record.input = input_text(kill)
    later = base + timedelta(minutes=3)
    release = KillSwitchReleased(
        scope="tenant", tenant="acme", operator="nobody", signature="A" * 86 + "==",
        event_time=later,
    )  # fmt: skip
    _, forged = apply_control(kills, release, policy, later)  # its shape; never on gov.control
    forged.input = input_text(release)
    _store(tmp_path / "chdb", [record, forged])
    sent = _reissued(monkeypatch)
    said: list[str] = []
    restore_runs(_settings(broker), tmp_path, said.append)
    assert sent == [record.input]
    assert fold_reissued(sent, policy, datetime.now(UTC))[0].tenants == {"acme"}
    (line,) = [ln for ln in said if "signed release(s) or policy update(s) NOT issued" in ln]
    assert "release of tenant acme by nobody at " in line, line  # which switch stays held


def test_a_kill_row_without_its_command_is_held_whatever_its_detail_says(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Session 39, C3: a kill's row replaced under its id by one of another outcome (stored as
    news), no command, and `detail` naming a scope no switch has: its scope was read from the
    detail, the switch ("bogus", "*") dropped as unholdable, nothing held, nothing said."""
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.schemas.events import KillSwitch

    now = datetime.now(UTC) - timedelta(seconds=5)
    kill = KillSwitch(scope="tenant", tenant="acme", operator="oncall", event_time=now)
    _, record = apply_control(NO_KILLS, kill, load_policy(None), now)
    record.input = input_text(kill)
    _store(tmp_path / "chdb", [record])
    forged = replace(record, outcome=Outcome.STOP, input=None, detail="scope=bogus")
    _store(tmp_path / "chdb", [forged], first_offset=100)
    restore_runs(_settings(broker), tmp_path, [].append)
    assert _held(tmp_path).killed("a-run-never-seen", "acme")


def test_a_tenant_kill_carrying_a_run_id_is_held_for_its_tenant(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Session 39 (round 3, K1): a tenant's kill whose event also carried a run id (a raw
    producer may send one; its signature does not cover it) has key columns run x, tenant
    acme; its row replaced by one without its command was held as run x only, acme open.
    Its scope is its request id's, which its id is made from."""
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.schemas.events import KillSwitch

    now = datetime.now(UTC) - timedelta(seconds=5)
    kill = KillSwitch(scope="tenant", tenant="acme", run_id="x", operator="o", event_time=now)
    _, record = apply_control(NO_KILLS, kill, load_policy(None), now)
    record.input = input_text(kill)
    assert (record.run_id, record.tenant) == ("x", "acme")
    _store(tmp_path / "chdb", [record])
    _store(tmp_path / "chdb", [replace(record, input=None, outcome=Outcome.STOP)], 100)
    restore_runs(_settings(broker), tmp_path, [].append)
    assert _held(tmp_path).killed("a-run-never-seen", "acme")


def test_an_audit_an_older_sink_wrote_is_migrated_before_the_restore(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The restore dates lost kills by kill_times (0009): an audit whose sink predates it is
    migrated first, its kills copied in, and a replaced kill is held."""
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.schemas.events import KillSwitch
    from baton.sinks.schema import load_migrations

    now = datetime.now(UTC) - timedelta(seconds=5)
    kill = KillSwitch(scope="tenant", tenant="acme", operator="oncall", event_time=now)
    _, record = apply_control(NO_KILLS, kill, load_policy(None), now)
    record.input = input_text(kill)
    client = connect(f"chdb://{tmp_path / 'chdb'}", create=True)
    try:
        migrate(client, 3650, [m for m in load_migrations() if m.version < 9])
        for n, row in enumerate([record, replace(record, input=None, outcome=Outcome.STOP)]):
            batch = AuditBatch("gov.decisions", ttl_days=3650)
            batch.add(0, n, row.to_json())
            write_batch(client, batch)
        assert not client.command("EXISTS TABLE governance.kill_times")
    finally:
        client.close()
    restore_runs(_settings(broker), tmp_path, [].append)
    assert _held(tmp_path).killed("a-run-never-seen", "acme")
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    try:
        assert client.command("EXISTS TABLE governance.kill_times")
    finally:
        client.close()


@pytest.mark.parametrize("forgery", ["another outcome after it", "the same, stored first"])
def test_a_replaced_policy_update_lets_no_release_through(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forgery: str
) -> None:
    """Session 39, round 5 (G2, G2b): start {oncall, mallory}; oncall kills acme and then
    revokes mallory. A row under the revocation's id without its command (another outcome,
    stored as news; or the same one written before the worker's, which the sink then kept
    out) read as an update recorded before commands were: the revocation was not issued
    again, unsaid, and mallory's own release row lifted the kill. Now the record is named as
    replaced and no release is issued again; and the sink no longer keeps the worker's row out
    for one without its command (session 41), so the revocation itself is issued again."""
    from baton.cli.restore_kills import fold_reissued
    from baton.processors.engine import NO_KILLS, apply_control, apply_policy_update
    from baton.schemas.events import KillSwitch, KillSwitchReleased, PolicyUpdated
    from baton.schemas.policy import parse_policy
    from baton.schemas.signing import (
        control_payload,
        new_private_key,
        policy_hash,
        public_key_text,
        sign,
    )

    oncall, mallory = new_private_key(), new_private_key()
    both = (
        f'operators: {{oncall: "{public_key_text(oncall)}", '
        f'mallory: "{public_key_text(mallory)}"}}\n'
    )
    only = f'operators: {{oncall: "{public_key_text(oncall)}"}}\n'
    (tmp_path / "policy.yaml").write_text(both)
    policy = parse_policy(both, "p")
    base = datetime.now(UTC) - timedelta(minutes=30)
    when = base + timedelta(minutes=1)
    signed = sign(oncall, control_payload("kill_switch", "tenant", "acme", "oncall", "", when))
    kill = KillSwitch(scope="tenant", tenant="acme", operator="oncall", signature=signed,
                      event_time=when)  # fmt: skip
    kills, kill_row = apply_control(NO_KILLS, kill, policy, when)
    kill_row.input = input_text(kill)
    when = base + timedelta(minutes=10)
    payload = control_payload("policy_updated", "global", "*", "oncall", "", when,
                              policy_hash(only))  # fmt: skip
    revoke = PolicyUpdated(policy_yaml=only, operator="oncall", signature=sign(oncall, payload),
                           event_time=when)  # fmt: skip
    step = apply_policy_update(policy, None, revoke, when)
    assert step.applied and step.record is not None
    update_row = replace(step.record, input=input_text(revoke))
    when = base + timedelta(minutes=20)
    signed = sign(mallory, control_payload("kill_switch_released", "tenant", "acme", "mallory",
                                           "", when))  # fmt: skip
    release = KillSwitchReleased(scope="tenant", tenant="acme", operator="mallory",
                                 signature=signed, event_time=when)  # fmt: skip
    _, release_row = apply_control(kills, release, policy, when)  # as under the start policy
    release_row.input = input_text(release)
    if forgery == "another outcome after it":
        _store(tmp_path / "chdb", [kill_row, update_row])
        _store(tmp_path / "chdb", [replace(update_row, outcome=Outcome.STOP, input=None)], 50)
    else:
        _store(tmp_path / "chdb", [kill_row])
        _store(tmp_path / "chdb", [replace(update_row, input=None)], 50)
        _store(tmp_path / "chdb", [update_row], 60)  # the worker's: kept out
    _store(tmp_path / "chdb", [release_row], 100)
    sent = _reissued(monkeypatch)
    said: list[str] = []
    settings = _settings(broker).model_copy(update={"policy": str(tmp_path / "policy.yaml")})
    restore_runs(settings, tmp_path, said.append)
    assert fold_reissued(sent, policy, datetime.now(UTC))[0].tenants == {"acme"}
    if forgery == "another outcome after it":
        assert release_row.input not in sent
        assert any("NO release is issued again" in line for line in said), said
    else:  # the sink no longer keeps the worker's row out (its command differs: session 41):
        # the revocation is issued again, and the fresh workers refuse mallory's release
        assert update_row.input in sent


def test_a_flood_of_forged_policy_records_is_counted_not_printed_line_by_line(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Every policy_in_force record whose document is no policy was a line of every restart's
    output (and of `baton replay`'s): a writer of gov.decisions made 100,000 of them. The
    first ten are named, the rest counted; the runs are restored as ever."""
    from dataclasses import replace

    now = datetime.now(UTC) - timedelta(seconds=5)
    _, published = _history(now)
    record = published[0]
    forged = [
        replace(record, decision_id=f"{i:032x}", request_id=f"forged-{i}", input=f"junk {i}")
        for i in range(15)
    ]
    _store(tmp_path / "chdb", published + forged)
    said: list[str] = []
    assert restore_runs(_settings(broker), tmp_path, said.append) == 2
    named = [line for line in said if "is not a policy document" in line]
    assert len(named) == 10, said
    assert (
        "restore: 5 more policy records are not policy documents of their version; not used" in said
    )
