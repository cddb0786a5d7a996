"""Attacks on the restore of `baton up` and on `baton replay`: forged audit rows must never make
a restart fail open (a restored run with less spend or without its stop than reality).

The history is made by the worker's own batch step; the audit rows are its published copies,
as the sink stores them; an attacker who can write gov.decisions (or the chDB directory)
then replaces a row in ``FINAL`` (same tenant, run and decision id: the later copy wins)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from pydantic import SecretStr

from baton.cli.restore_kills import ends_killed, keep_killed, reissued_commands
from baton.cli.restore_rebuild import rebuild_runs as _rebuild
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.replay import Recorded, is_partial, rebuild_run, replay_runs, runs_of
from baton.processors.state import RunState
from baton.schemas.decision import Decision
from baton.schemas.events import HandoffCompleted, HandoffRequested
from baton.schemas.policy import Policy, load_policy, parse_policy
from baton.schemas.settings import Settings
from baton.streams.partitioner import partition_for

pytestmark = pytest.mark.unit

PARTITIONS = 4
KEY = "the-workers-chain-key"


def _history(now: datetime, key: str | None) -> tuple[Policy, list[Decision]]:
    """Run ``over``: one handoff, then a completion of $40 against $30 (stopped for good)."""
    policy = load_policy(None)
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(
        policy, PARTITIONS, states, worker="w", chain_key=key.encode() if key else b""
    )
    events = [
        HandoffRequested(
            request_id="o-1", run_id="over", task_id="t1", from_agent="planner",
            to_agent="researcher", estimated_usd=2.0, event_time=now,
        ),
        HandoffCompleted(
            request_id="o-1", run_id="over", task_id="t1", agent="researcher", cost_usd=40.0,
            event_time=now,
        ),
    ]  # fmt: skip
    published: list[Decision] = []
    for offset, ev in enumerate(events):
        key_bytes = ev.run_id.encode()
        rec = InputRecord(
            "requests", partition_for(key_bytes, PARTITIONS), offset, key_bytes, ev.to_json()
        )
        published += [d for _, d in proc.process([rec], now + timedelta(seconds=offset)).decisions]
    return policy, published


def _forged_cheap(original: Decision) -> Decision:
    """The completion's row again, its input reporting $0.50, decided by the attacker's own
    worker (no key: the attacker does not hold it): a consistent row of a cheap completion."""
    policy = load_policy(None)
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(policy, PARTITIONS, states, worker="w")
    cheap = orjson.loads(original.input or "{}")
    first = HandoffRequested(
        request_id="o-1", run_id="over", task_id="t1", from_agent="planner",
        to_agent="researcher", estimated_usd=2.0, event_time=original.event_time,
    )  # fmt: skip
    cheap["cost_usd"] = 0.5
    done = HandoffCompleted.model_validate(cheap)
    out: list[Decision] = []
    for offset, ev in enumerate([first, done]):
        k = ev.run_id.encode()
        rec = InputRecord("requests", partition_for(k, PARTITIONS), offset, k, ev.to_json())
        at = original.decided_at - timedelta(seconds=1 - offset)
        out += [d for _, d in proc.process([rec], at).decisions]
    # the id digests the request: the attacker writes the original's id, so that the forged
    # row replaces the original in FINAL (same tenant, run and decision id)
    return replace(out[-1], decision_id=original.decision_id)


def _settings(key: str | None) -> Settings:
    return Settings(partitions=PARTITIONS, audit_chain_key=SecretStr(key) if key else None)


def _restore(rows: list[Recorded], policy: Policy, key: str | None, now: datetime):
    return _rebuild(
        runs_of(rows), {policy.version: policy}, _settings(key), (key or "").encode(), now
    )


def test_an_honest_history_restores_the_stopped_run() -> None:
    now = datetime.now(UTC)
    policy, published = _history(now, KEY)
    rebuilt = _restore([Recorded.of(d) for d in published], policy, KEY, now)
    assert (rebuilt.partial, rebuilt.unfaithful, rebuilt.unverified_counters) == ([], [], [])
    [state] = rebuilt.states
    assert state.stopped == "shared_budget_exceeded" and state.spent_usd == 40.0


def test_a_forged_cheaper_completion_is_named_unfaithful_with_the_key() -> None:
    """The forged row is linked without the workers' key: its hash is not theirs."""
    now = datetime.now(UTC)
    policy, published = _history(now, KEY)
    forged = _forged_cheap(published[-1])
    rows = [Recorded.of(d) for d in published[:-1]] + [Recorded.of(forged)]
    assert _restore(rows, policy, KEY, now).unfaithful == ["over"]


def test_a_forged_unchained_last_row_is_named_unfaithful_with_the_key() -> None:
    """The forged completion leaves its chain columns empty (chain verify skips unchained
    rows, and a last row names no successor): the replay links that step, so it must not
    match an unchained record on outcome and reason alone."""
    now = datetime.now(UTC)
    policy, published = _history(now, KEY)
    forged = replace(_forged_cheap(published[-1]), chain_prev=None, chain_hash=None)
    rows = [Recorded.of(d) for d in published[:-1]] + [Recorded.of(forged)]
    assert _restore(rows, policy, KEY, now).unfaithful == ["over"]


def test_replay_names_a_forged_unchained_row_unfaithful() -> None:
    now = datetime.now(UTC)
    policy, published = _history(now, KEY)
    forged = replace(_forged_cheap(published[-1]), chain_prev=None, chain_hash=None)
    rows = [Recorded.of(d) for d in published[:-1]] + [Recorded.of(forged)]
    report = replay_runs(runs_of(rows), policy, {policy.version: policy}, KEY.encode())
    assert [r.run_id for r in report.unfaithful_runs] == ["over"]


@pytest.mark.parametrize("key", [KEY, None], ids=["with the chain key", "without"])
def test_a_forged_cheaper_completion_does_not_lift_the_stop_on_restore(key: str | None) -> None:
    """The forged completion reports $0.50 under the real decision id (it replaces the stop
    in FINAL). Replayed, the run would hold $0.50 and no stop; it is restored stopped. The
    decision id digests the request, so this holds without the chain key too."""
    now = datetime.now(UTC)
    policy, published = _history(now, key)
    forged = _forged_cheap(published[-1])
    rows = [Recorded.of(d) for d in published[:-1]] + [Recorded.of(forged)]
    rebuilt = _restore(rows, policy, key, now)
    assert rebuilt.unfaithful == ["over"]
    [state] = rebuilt.states
    assert state.stopped == "audit_unverified"


def test_a_forged_policy_version_on_a_stop_is_named_unfaithful_with_the_key() -> None:
    """The stop rewritten as an allowed completion under a laxer policy the attacker also
    recorded (its document hashes to its version, so it is read): with the key its chain
    hash is not the workers', and the run is restored stopped."""
    now = datetime.now(UTC)
    policy, published = _history(now, KEY)
    lax = parse_policy("multi_agent:\n  shared_max_usd: 1000000\n")
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(lax, PARTITIONS, states, worker="w")  # the attacker's: no key
    forged: list[Decision] = []
    for d in published:
        ev = orjson.loads(d.input or "{}")
        k = d.run_id.encode()
        raw = orjson.dumps(ev)
        rec = InputRecord("requests", d.partition or 0, d.offset or 0, k, raw)
        forged += [x for _, x in proc.process([rec], d.decided_at).decisions]
    assert forged[-1].reason == "within_budget"
    rows = [Recorded.of(published[0]), Recorded.of(forged[-1])]
    rebuilt = _rebuild(
        runs_of(rows), {policy.version: policy, lax.version: lax}, _settings(KEY), KEY.encode(), now
    )
    assert rebuilt.unfaithful == ["over"]
    assert rebuilt.states[0].stopped == "audit_unverified"


def test_a_forged_row_without_input_makes_the_run_partial() -> None:
    """A row whose input is NULL (a forged copy of the stop) sends the whole run to the
    counters-only path (cli.restore_rebuild.from_summaries), which reads FINAL: the forged
    row's counters. A run with recorded inputs that cannot be replayed is unverified: its
    summary is restored stopped (audit_unverified; test_restore_runs reads it in chDB)."""
    now = datetime.now(UTC)
    policy, published = _history(now, KEY)
    forged = replace(published[-1], input=None, spent_usd=0.0, chain_prev=None, chain_hash=None)
    run = [Recorded.of(d) for d in published[:-1]] + [Recorded.of(forged)]
    assert is_partial(run, {policy.version: policy}) is not None
    rebuilt = _restore(run, policy, KEY, now)
    assert rebuilt.unverified_counters == ["over"] and rebuilt.partial == []


def test_a_run_recorded_before_inputs_is_partial_not_unverified() -> None:
    """An audit from before migration 0005 (no row holds an input): counters only, as
    recorded, not stopped for it."""
    now = datetime.now(UTC)
    policy, published = _history(now, KEY)
    run = [Recorded.of(replace(d, input=None, chain_prev=None, chain_hash=None)) for d in published]
    rebuilt = _restore(run, policy, KEY, now)
    assert rebuilt.partial == ["over"] and rebuilt.unverified_counters == []


def test_a_run_restored_stopped_replays_as_recorded_under_any_policy() -> None:
    """The stop `baton up` put on an unverified run is not policy: `baton replay` (and the
    next restart) replays it as recorded, like a kill switch, under a laxer policy too."""
    now = datetime.now(UTC)
    policy = load_policy(None)
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(policy, PARTITIONS, states, worker="w", chain_key=KEY.encode())
    published: list[Decision] = []
    for n, task in enumerate(("t1", "t2")):
        if n == 1:  # the restart: this run's history did not verify, restored stopped
            restored = states[b"over"].copy()
            restored.stopped = "audit_unverified"
            states[b"over"] = restored
        ev = HandoffRequested(
            request_id=f"o-{n}", run_id="over", task_id=task, from_agent="planner",
            to_agent="researcher", event_time=now,
        )  # fmt: skip
        rec = InputRecord("requests", partition_for(b"over", PARTITIONS), n, b"over", ev.to_json())
        published += [d for _, d in proc.process([rec], now + timedelta(seconds=n)).decisions]
    assert [(d.outcome, d.reason) for d in published] == [
        ("allow", "ok"),
        ("stop", "audit_unverified"),
    ]
    lax = parse_policy("multi_agent:\n  max_handoffs: 100\n")
    rows = [Recorded.of(d) for d in published]
    report = replay_runs(runs_of(rows), lax, {policy.version: policy}, KEY.encode())
    assert (report.partial, report.unfaithful_runs, report.changed_runs) == ({}, [], [])
    [run] = runs_of(rows)
    state, faithful = rebuild_run(run, {policy.version: policy}, KEY.encode())
    assert faithful and state is not None and state.stopped == "audit_unverified"


def _run_state(run_id: str, tenant: str = "acme") -> RunState:
    return RunState.new(run_id, tenant, datetime.now(UTC).timestamp())


def _kill_command(scope: str, **target: str) -> str:
    event = {
        "type": "kill_switch",
        "scope": scope,
        "operator": "oncall",
        "event_time": "2026-11-29T10:00:00Z",
        **target,
    }
    return orjson.dumps(event).decode()


def test_a_run_killed_last_stays_stopped_when_no_command_re_issues_its_kill() -> None:
    """The kill's control record was replaced in FINAL by a forged release (or recorded
    before commands were): nothing re-issues it, so the run is restored stopped."""
    states = [_run_state("killed"), _run_state("other")]
    assert keep_killed(states, {"killed"}, []) == ["killed"]
    assert [s.stopped for s in states] == ["audit_unverified", None]


@pytest.mark.parametrize(
    "command",
    [
        _kill_command("run", run_id="killed"),
        _kill_command("tenant", tenant="acme"),
        _kill_command("global"),
    ],
    ids=["run", "tenant", "global"],
)
def test_a_run_whose_kill_is_re_issued_is_not_stopped_for_it(command: str) -> None:
    states = [_run_state("killed")]
    assert keep_killed(states, {"killed"}, [command]) == []
    assert states[0].stopped is None  # the re-issued kill holds it (and a release lifts it)


def test_an_unsigned_release_does_not_count_as_re_issued() -> None:
    release = orjson.loads(_kill_command("run", run_id="killed"))
    release["type"] = "kill_switch_released"
    states = [_run_state("killed")]
    assert keep_killed(states, {"killed"}, [orjson.dumps(release).decode()]) == ["killed"]


def test_a_recorded_command_that_does_not_parse_is_named_not_raised() -> None:
    """One forged control row with an input that is not a command must not end every start
    of baton up (it was re-parsed without a guard)."""
    refused: list[str] = []
    good = _kill_command("global")
    parsed = list(reissued_commands(["not json", '{"type":"kill_switch"}', good], refused.append))
    assert [(scope, target) for scope, target, _ in parsed] == [("global", "*")]
    assert len(refused) == 2 and refused[0].startswith("'not json'")


def test_an_allow_after_a_kill_means_the_kill_was_lifted() -> None:
    now = datetime.now(UTC)
    rec = Recorded("r", "d1", "stop", "killed", None, "v", now, "w", 0, 0, "{}", None, None)
    assert ends_killed([rec])
    allow = rec._replace(decision_id="d2", outcome="allow", reason="ok")
    assert not ends_killed([rec, allow])


def _control_rows(*events: object) -> list[tuple[str, ...]]:
    """The engine's own control records of ``events``, as kill_switches_in_force reads them."""
    from baton.processors.engine import NO_KILLS, apply_control

    kills, rows = NO_KILLS, []
    for ev in events:
        kills, d = apply_control(kills, ev, load_policy(None), datetime.now(UTC))  # type: ignore[arg-type]
        rows.append(
            (str(d.reason), d.run_id, d.tenant, d.detail or "", "", d.decision_id, d.request_id)
        )
    return rows


def _tenant_kill(kind: type) -> object:
    return kind(
        scope="tenant",
        tenant="acme",
        operator="oncall",
        event_time=datetime(2026, 11, 29, tzinfo=UTC),
    )


def test_a_kill_and_its_release_made_by_a_worker_fold_to_nothing() -> None:
    from baton.cli.restart_notice import as_made, fold_kill_switches
    from baton.schemas.events import KillSwitch, KillSwitchReleased

    rows = _control_rows(_tenant_kill(KillSwitch), _tenant_kill(KillSwitchReleased))
    assert fold_kill_switches(as_made(r) for r in rows) == []
    assert fold_kill_switches(as_made(r) for r in rows[:1]) == ["tenant acme"]


@pytest.mark.parametrize("request_id", ["same", "a release's"])
def test_a_forged_release_replacing_a_kill_in_final_is_named_as_a_lost_kill(
    request_id: str,
) -> None:
    """The forged row keeps the kill's decision id (so FINAL keeps it instead of the kill)
    and says kill_switch_released, with the kill's request id or a release's: no worker
    made it, so the kill is named as lost, never lifted in silence."""
    from baton.cli.restart_notice import as_made, fold_kill_switches
    from baton.schemas.events import KillSwitch

    [kill] = _control_rows(_tenant_kill(KillSwitch))
    _, run_id, tenant, _, _, decision_id, req = kill
    if request_id != "same":
        req = req.replace("kill_switch:", "kill_switch_released:", 1)
    forged = ("kill_switch_released", run_id, tenant, "scope=run target=x", "", decision_id, req)
    assert fold_kill_switches([as_made(forged)]) == ["tenant acme"]


def test_a_run_restored_stopped_is_not_shadowed_into_an_allow() -> None:
    from baton.processors.engine import decide

    now = datetime.now(UTC)
    state = _run_state("r", "default")
    state.stopped = "audit_unverified"
    handoff = HandoffRequested(
        request_id="a", run_id="r", task_id="t", from_agent="p", to_agent="q", event_time=now
    )
    shadow = parse_policy("multi_agent:\n  shadow_mode: true\n")
    _, [decision] = decide(state, handoff, shadow, now)
    assert (decision.outcome, decision.reason) == ("stop", "audit_unverified")


def test_a_run_id_no_event_can_carry_is_not_restored() -> None:
    """The sink stores a decision with a 100 KB run id; the restore would have handed the
    worker a run of that size (and any number of them). Ids of events are 1-256 chars."""
    from pydantic import TypeAdapter, ValidationError

    from baton.cli.restore_kills import MAX_RUN_ID
    from baton.schemas.events import Id

    TypeAdapter(Id).validate_python("r" * MAX_RUN_ID)  # the bound mirrors the events' own
    with pytest.raises(ValidationError):
        TypeAdapter(Id).validate_python("r" * (MAX_RUN_ID + 1))
    now = datetime.now(UTC)
    policy, published = _history(now, KEY)
    huge = "r" * 100_000
    forged = [replace(d, run_id=huge, input=None) for d in published]
    rows = [Recorded.of(d) for d in published] + [Recorded.of(d) for d in forged]
    rows.sort(key=lambda r: r.run_id)
    rebuilt = _restore(rows, policy, KEY, now)
    assert rebuilt.impossible == [huge]
    assert [s.run_id for s in rebuilt.states] == ["over"] and rebuilt.partial == []
