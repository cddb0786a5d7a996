"""`baton up` on a fresh embedded broker: every live run's state rebuilt from the audit.

The embedded broker keeps nothing across restarts, but the audit in ``<data-dir>/chdb`` does:
each decision holds the event it was decided from and names its policy (``processors.
recorded``). Before the worker starts, every run with a decision within the worker's
retention (``run_retention_s`` + ``tombstone_retention_s``) is replayed under its recorded
policies (``processors.replay.rebuild_run``), aged as the worker's sweep would age it now
(``engine.evict``: idle runs become tombstones), and written to the ``runs`` table's changelog
topic, encoded as the worker writes it (``RunState.to_bytes``, key = run id, partition = the
run's murmur2 partition). The worker's table recovery reads it before it decides anything.

A run that cannot be replayed from its start (decided before inputs were recorded, history
trimmed by retention, its policy not recorded) is restored from what its decisions say: its
counters, spend, sticky stop and finish, without owners or dedup marks. The kill switches
the workers applied, and the signed releases and policy updates, are re-issued on the fresh
control topic in their order (the workers verify and apply them again before deciding); an
unsigned release or policy update is not (anyone who can write gov.decisions could have put
its record there), so a kill it lifted holds again: fail closed.

Not guaranteed: a decision the sink had not stored when `baton up` stopped is not in the
audit, so its effect is not restored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from baton.cli.restart_notice import kill_records, lost_kill_scopes
from baton.processors.engine import STICKY_REASONS, evict, new_state
from baton.processors.replay import Recorded, is_partial, rebuild_run, runs_of
from baton.processors.state import RunState
from baton.schemas.decision import Outcome, Reason
from baton.schemas.policy import Policy
from baton.schemas.settings import Settings
from baton.streams.partitioner import partition_for

__all__ = ["restore_runs"]

#: the longest run id an event can carry (schemas.events.Id)
MAX_RUN_ID = 256

_STICKY = frozenset({*STICKY_REASONS, Reason.RUN_STATE_LIMIT})


def restore_runs(
    settings: Settings, data_dir: Path, say: Callable[[str], None], now: datetime | None = None
) -> int | None:
    """Write the live runs of ``data_dir``'s audit to the changelog; how many (None: no audit
    table to read, nothing done)."""
    from baton.sinks.clickhouse import audit_errors, connect
    from baton.sinks.replay_source import (
        ReplayScope,
        read_commands,
        read_policies,
        read_runs_rows,
    )
    from baton.sinks.schema import DATABASE

    now = now or datetime.now(UTC)
    chdb = data_dir / "chdb"
    client = connect(f"chdb://{chdb}", follow_endpoint=False)
    try:
        with audit_errors(f"chdb://{chdb}", "rebuilding run states from the audit"):
            if not client.command(f"EXISTS TABLE {DATABASE}.decisions"):
                return None
            policies, refused = read_policies(client)
            for line in refused:
                say(f"restore: {line}; not used")
            window = settings.run_retention_s + settings.tombstone_retention_s
            scope = ReplayScope(active_since=now - timedelta(seconds=window))
            rebuilt = _rebuild(runs_of(read_runs_rows(client, scope)), policies, settings, now)
            states = rebuilt.states
            counted = rebuilt.partial + rebuilt.unverified_counters
            if counted:
                states += _from_summaries(
                    client, counted, settings, now, frozenset(rebuilt.unverified_counters)
                )
            commands = read_commands(client)
            lost_kills = lost_kill_scopes(kill_records(client))
    finally:
        client.close()
    _say_what_was_not_verified(rebuilt, settings, say)
    kept = _keep_killed(states, rebuilt.killed, commands)
    if kept:
        names = ", ".join(kept[:5]) + (" ..." if len(kept) > 5 else "")
        say(
            f"restore: WARNING: {len(kept)} runs stopped last by a kill switch that this "
            f"restart cannot issue again ({names}; its command is not in the audit) are "
            "restored STOPPED (audit_unverified), never reopened"
        )
    held = _hold_lost_kills(states, lost_kills, now)
    if held:
        names = ", ".join(held[:5]) + (" ..." if len(held) > 5 else "")
        say(
            f"restore: WARNING: {len(held)} runs under a kill switch this restart cannot issue "
            f"again ({names}) are restored STOPPED (audit_unverified); a tenant or global "
            "switch among them covers only the runs the audit holds: re-issue it with "
            "`baton kill` for new runs"
        )
    _write_changelog(settings, states)
    if commands:
        sent = _reissue(settings, commands, say)
        say(
            f"restore: re-issued {sent} of {len(commands)} kill switch, release and policy "
            "commands (releases and policy updates only when signed)"
        )
    return len(states)


@dataclass
class _Rebuilt:
    """What the replay of the live runs gave: states, and the runs it could not verify."""

    states: list[RunState] = field(default_factory=list)
    #: recorded before inputs were (no row holds one): restored from their counters
    partial: list[str] = field(default_factory=list)
    #: replayed, but not as recorded: restored as replayed, stopped (audit_unverified)
    unfaithful: list[str] = field(default_factory=list)
    #: with recorded inputs, yet not replayable (a row without input, a trimmed or forged
    #: chain start, a policy not in the audit, an input that does not parse), or replayed
    #: to nothing: restored from their counters, stopped (audit_unverified)
    unverified_counters: list[str] = field(default_factory=list)
    #: runs whose last answer to a handoff was a kill switch's stop
    killed: set[str] = field(default_factory=set)
    #: run ids no event can carry (forged rows): not restored, named
    impossible: list[str] = field(default_factory=list)


def _rebuild(
    runs: Iterable[list[Recorded]], policies: dict[str, Policy], settings: Settings, now: datetime
) -> _Rebuilt:
    """Replay each run; one whose history does not replay exactly is stopped, never reopened
    (a row forged into gov.decisions, or replacing one in FINAL, must not lower a run's spend
    or lift its stop: fail closed)."""
    key_setting = settings.audit_chain_key
    key = key_setting.get_secret_value().encode() if key_setting else b""
    out = _Rebuilt()
    for run in runs:
        run_id = run[0].run_id
        if not 1 <= len(run_id) <= MAX_RUN_ID:
            # no worker decided it (events' ids are bounded): a forged run would be held by
            # the worker at whatever size its writer chose
            out.impossible.append(run_id)
            continue
        if _ends_killed(run):
            out.killed.add(run_id)
        if is_partial(run, policies) is not None:
            recorded_inputs = any(r.input is not None for r in run)
            (out.unverified_counters if recorded_inputs else out.partial).append(run_id)
            continue
        try:
            state, faithful = rebuild_run(run, policies, key)
        except Exception:  # a recorded input that no longer parses
            out.unverified_counters.append(run_id)
            continue
        if not faithful:
            if state is None:  # the replay kept nothing: the counters say what is known
                out.unverified_counters.append(run_id)
                continue
            out.unfaithful.append(run_id)
            if state.stopped is None:
                state.stopped = Reason.AUDIT_UNVERIFIED
        aged = _aged(state, settings, now)
        if aged is not None:
            out.states.append(aged)
    return out


def _ends_killed(run: list[Recorded]) -> bool:
    """The run's last answer to a handoff was a kill switch's stop (no allow after it)."""
    killed = False
    for rec in run:
        if rec.reason == Reason.KILLED:
            killed = True
        elif rec.outcome == Outcome.ALLOW:
            killed = False
    return killed


def _keep_killed(states: list[RunState], killed: set[str], commands: list[str]) -> list[str]:
    """Stop (audit_unverified) every run that a kill switch stopped last when no re-issued
    command names its run, its tenant or everything: the kill that stopped it is not in the
    audit's commands (recorded before commands were, or its record was replaced by a forged
    one in FINAL), so the fresh broker would not hold it. The runs stopped so, by id."""
    if not killed:
        return []
    scopes = {(scope, target) for scope, target, _ in _parsed(commands, lambda _: None)}
    stopped: list[str] = []
    for state in states:
        if state.run_id not in killed or state.stopped is not None or state.finished:
            continue
        named = {("run", state.run_id), ("tenant", state.tenant), ("global", "*")}
        if not named & scopes:
            state.stopped = Reason.AUDIT_UNVERIFIED
            stopped.append(state.run_id)
    return stopped


def _hold_lost_kills(
    states: list[RunState], lost: list[tuple[str, str]], now: datetime
) -> list[str]:
    """Stop (audit_unverified) every restored run a lost kill switch covers (one engaged last
    whose command the audit does not hold, e.g. replaced in FINAL by a forged release): the
    fresh broker would not hold the switch, and its runs must not reopen. A run-scope switch
    on a run with no restored state gets a stopped state of its own. The run ids stopped."""
    if not lost:
        return []
    runs = {target for scope, target in lost if scope == "run"}
    tenants = {target for scope, target in lost if scope == "tenant"}
    everything = any(scope == "global" for scope, _ in lost)
    stopped: list[str] = []
    for state in states:
        covered = everything or state.run_id in runs or state.tenant in tenants
        runs.discard(state.run_id)
        if covered and state.stopped is None and not state.finished:
            state.stopped = Reason.AUDIT_UNVERIFIED
            stopped.append(state.run_id)
    for run_id in sorted(runs):
        if 1 <= len(run_id) <= MAX_RUN_ID:
            state = new_state(run_id, "default", now)
            state.stopped = Reason.AUDIT_UNVERIFIED
            states.append(state)
            stopped.append(run_id)
    return stopped


def _parsed(commands: list[str], refused: Callable[[str], None]) -> Iterator[tuple[str, str, str]]:
    """``(scope, target, text)`` of each command a restart re-issues: every kill, and the
    releases and policy updates that are signed (scope ``policy`` for those). A recorded
    command that does not parse (a forged or damaged row) is named to ``refused``."""
    from baton.schemas.events import KillSwitch, KillSwitchReleased, parse_control_event

    for text in commands:
        try:
            event = parse_control_event(text.encode())
        except Exception as exc:
            refused(f"{text[:80]!r}: {str(exc)[:200]}")
            continue
        if not isinstance(event, KillSwitch) and not event.signature:
            # whoever can write gov.decisions could have put it there: only a command that
            # can only tighten (a kill) or that a worker verifies (a signed one) is re-issued
            continue
        if isinstance(event, (KillSwitch, KillSwitchReleased)):
            yield event.scope, event.target, text
        else:
            yield "policy", "*", text


def _say_what_was_not_verified(
    rebuilt: _Rebuilt, settings: Settings, say: Callable[[str], None]
) -> None:
    """One line per kind of run the audit could not vouch for, and the missing chain key."""
    if rebuilt.impossible:
        shown = rebuilt.impossible[0][:40]
        say(
            f"restore: WARNING: {len(rebuilt.impossible)} runs in the audit have ids no event "
            f"can carry (1 to {MAX_RUN_ID} characters; first: {shown!r}...): forged rows, not "
            "restored"
        )
    unverified = rebuilt.unfaithful + rebuilt.unverified_counters
    if unverified:
        names = ", ".join(unverified[:5]) + (" ..." if len(unverified) > 5 else "")
        say(
            f"restore: WARNING: {len(unverified)} runs did not replay exactly as recorded "
            f"({names}): each is restored STOPPED (audit_unverified), never reopened. Their "
            "audit rows may be forged or altered (check `baton audit verify --run RUN`), or "
            "BATON_AUDIT_CHAIN_KEY is not the workers', or another Baton version decided them"
        )
    if rebuilt.partial:
        say(f"restore: {len(rebuilt.partial)} runs restored from their counters only (no inputs)")
    if settings.audit_chain_key is None and (rebuilt.states or unverified):
        say(
            "restore: WARNING: BATON_AUDIT_CHAIN_KEY is not set: a row forged into the audit "
            "with a correctly computed chain cannot be told from a worker's, so the restored "
            "states are only as trustworthy as whoever can write gov.decisions and the chDB "
            "directory"
        )


def _aged(state: RunState | None, settings: Settings, now: datetime) -> RunState | None:
    if state is None:
        return None
    return evict(state, now, settings.run_retention_s, settings.tombstone_retention_s)


_SUMMARY = """
SELECT run_id, any(tenant), min(decided_at), max(decided_at), max(handoff_count),
       max(spent_usd), max(tool_calls),
       argMinIf(reason, decided_at, outcome = 'stop' AND reason IN {sticky:Array(String)}),
       countIf(reason = 'run_finished') > 0
FROM {db}.decisions FINAL
WHERE run_id IN {runs:Array(String)}
GROUP BY run_id
"""


def _from_summaries(
    client: Any,
    run_ids: list[str],
    settings: Settings,
    now: datetime,
    unverified: frozenset[str] = frozenset(),
) -> list[RunState]:
    """States of runs that cannot be replayed: what their decisions say (counters, stop);
    those in ``unverified`` stopped (audit_unverified) unless their decisions say a stop."""
    from baton.sinks.schema import DATABASE

    states: list[RunState] = []
    for i in range(0, len(run_ids), 1000):
        rows = client.query(
            _SUMMARY.replace("{db}", DATABASE),
            parameters={"runs": run_ids[i : i + 1000], "sticky": sorted(_STICKY)},
        ).result_rows
        for run_id, tenant, first, last, handoffs, spent, calls, stop, finished in rows:
            state = RunState.new(run_id, tenant, first.replace(tzinfo=UTC).timestamp())
            state.last_event_at = last.replace(tzinfo=UTC).timestamp()
            state.handoff_count, state.tool_calls = int(handoffs), int(calls)
            state.spent_usd = float(spent)
            state.stopped = stop or (Reason.AUDIT_UNVERIFIED if run_id in unverified else None)
            state.finished = bool(finished)
            aged = _aged(state, settings, now)
            if aged is not None:
                states.append(aged)
    return states


def _write_changelog(settings: Settings, states: list[RunState]) -> None:
    """Write ``states`` to the runs table's changelog, each partition's last record alone
    (Tansu answers ListOffsets with the start of the last batch + 1, and Faust's recovery
    reads only up to it: see docs/architecture.md)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from baton.schemas.errors import BrokerUnavailable

    if not states:
        return
    topic = f"{settings.app_id}-runs-changelog"
    config = settings.kafka_config()
    admin = AdminClient(config)
    futures = admin.create_topics(
        [
            NewTopic(
                topic,
                settings.partitions,
                settings.replication_factor,
                config={"cleanup.policy": "compact"},
            )
        ]
    )
    for future in futures.values():
        try:
            future.result(settings.connect_timeout_s)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerUnavailable(f"cannot create {topic}: {exc}") from None
    producer = Producer({**config, "linger.ms": 5})
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    last: dict[int, tuple[bytes, bytes]] = {}
    for state in states:
        key = state.run_id.encode()
        partition = partition_for(key, settings.partitions)
        if partition in last:
            _produce(producer, topic, partition, *last[partition], delivered)
        last[partition] = (key, state.to_bytes())
    _flush(producer, errors, topic)
    for partition, (key, value) in last.items():
        _produce(producer, topic, partition, key, value, delivered)
        _flush(producer, errors, topic)


def _reissue(settings: Settings, commands: list[str], say: Callable[[str], None]) -> int:
    """The applied control commands again on the fresh control topic, in their order: the
    workers apply them (and verify their signatures) before deciding, as after any start."""
    from confluent_kafka import Producer

    from baton.streams.topics import TopicCatalog

    topic = TopicCatalog(prefix=settings.topic_prefix, partitions=settings.partitions).control
    producer = Producer(settings.kafka_config())
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    def refused(line: str) -> None:
        say(f"restore: WARNING: a recorded command is not a control event, not re-issued: {line}")

    sent = 0
    for _scope, target, text in _parsed(commands, refused):
        _produce(producer, topic, 0, target.encode(), text.encode(), delivered)
        sent += 1
    _flush(producer, errors, topic)
    return sent


def _produce(
    producer: Any, topic: str, partition: int, key: bytes, value: bytes, delivered: Any
) -> None:
    while True:
        try:
            producer.produce(topic, value, key, partition=partition, on_delivery=delivered)
            break
        except BufferError:
            producer.poll(0.1)
    producer.poll(0)


def _flush(producer: Any, errors: list[str], topic: str) -> None:
    from baton.schemas.errors import BrokerUnavailable

    if producer.flush(30) or errors:
        raise BrokerUnavailable(
            f"could not write the restored run states to {topic}: "
            + ("; ".join(errors[:3]) or "not acknowledged within 30 s")
        )
