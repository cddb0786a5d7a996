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
its record there), so a kill it lifted holds again: fail closed. The commands are those whose
record a worker sealed (``restore_sealed``; keyed with BATON_AUDIT_CHAIN_KEY or the data dir's
``worker/seal.key``): a row forged or replaced in gov.decisions is not re-issued.

Not guaranteed: a decision the sink had not stored when `baton up` stopped is not in the
audit, so its effect is not restored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from baton.cli.kill_records import kill_records, sealed_kill_records
from baton.cli.restart_notice import lost_kill_scopes
from baton.cli.restore_kills import (
    MAX_RUN_ID,
    fold_reissued,
    hold_lost_kills,
    hold_reopened,
    keep_killed,
    last_kill_stop,
    refused_before,
    releases_undone,
    replaced_policy_records,
    unheld_kill_scopes,
)
from baton.cli.restore_sealed import read_sealed, say_unsealed
from baton.cli.restore_withhold import withhold, without_releases
from baton.cli.restore_write import reissue, write_changelog
from baton.cli.up_children import WORKER_DATA_DIR
from baton.cli.wording import counted
from baton.processors.control_seal import seal_keys, workers_chain_key
from baton.processors.engine import STICKY_REASONS, evict
from baton.processors.held_kills import write_held_kills
from baton.processors.replay import Recorded, in_chain_order, is_partial, rebuild_run, runs_of
from baton.processors.replay_order import from_first_start
from baton.processors.state import FRESH_LIMIT, SEEN_LIMIT, RunState
from baton.schemas.decision import Reason
from baton.schemas.policy import Policy
from baton.schemas.settings import Settings
from baton.sinks.render import shown, shown_refusals

__all__ = ["restore_runs"]

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
    from baton.sinks.schema import DATABASE, migrate

    now = now or datetime.now(UTC)
    keys = seal_keys(settings, data_dir / WORKER_DATA_DIR)  # the workers' seals verify with
    chain_key = workers_chain_key(settings, data_dir / WORKER_DATA_DIR)  # ... links are keyed with
    chdb = data_dir / "chdb"
    client = connect(f"chdb://{chdb}", follow_endpoint=False)
    try:
        with audit_errors(f"chdb://{chdb}", "rebuilding run states from the audit"):
            if not client.command(f"EXISTS TABLE {DATABASE}.decisions"):
                return None
            # kill_times (0009) dates a lost kill, control_log (0010) holds the sealed
            # commands: an audit the sink of an older release wrote is migrated first (only
            # then: a lowered retention is the sink's to apply, after the commands are read
            # and issued again)
            if not client.command(f"EXISTS TABLE {DATABASE}.control_log"):
                migrate(client, settings.audit_ttl_days)
            policies, refused = read_policies(client)
            for line in shown_refusals(refused):
                say(f"restore: {line}; not used")
            window = settings.run_retention_s + settings.tombstone_retention_s
            scope = ReplayScope(active_since=now - timedelta(seconds=window))
            runs = runs_of(read_runs_rows(client, scope))
            rebuilt = _rebuild(runs, policies, settings, chain_key, now)
            chained = _chained(client, rebuilt.partial)
            if chained:  # its rows replaced by copies without inputs: not from before inputs
                rebuilt.partial = [run for run in rebuilt.partial if run not in chained]
                rebuilt.unverified_counters += sorted(chained)
            states = rebuilt.states
            counted = rebuilt.partial + rebuilt.unverified_counters
            if counted:
                states += _from_summaries(
                    client, counted, settings, now, frozenset(rebuilt.unverified_counters)
                )
            sealed = read_sealed(client, keys) if keys else None
            # no key: the rules for unsealed rows; sealed, a row forged or replaced in
            # gov.decisions is not among them
            commands = read_commands(client) if sealed is None else sealed.commands
            refused_live = refused_before(client, commands)
            # (sealed records cannot be lost to a replacing row: the log keeps each)
            unsealed = sealed is None or sealed.legacy
            replaced = replaced_policy_records(client) if unsealed else []
            if sealed is None:
                records = kill_records(client)
            else:  # a sealed kill is never lost; an unsealed kill row still holds its switch
                records = kill_records(client, sealed.sealed_ids)
                records += sealed_kill_records(client, sealed.sealed_rows)
                records.sort(key=lambda pair: pair[0])
    finally:
        client.close()
    _say_what_was_not_verified(rebuilt, bool(chain_key), say)
    if sealed is not None:
        say_unsealed(sealed, say)
    if replaced:
        say(
            f"restore: WARNING: {len(replaced)} policy record(s) of the audit were replaced by "
            f"rows no worker writes ({_first_names(replaced, 3)}): a policy update they stood "
            "for is NOT re-issued, and the workers may decide under an older policy (with "
            "operators it had removed): NO release is issued again unless a worker sealed its "
            "record (the kills hold); "
            "re-publish the policy you want with `baton policy publish`, then release"
        )
    start = _start_policy(settings)
    trusted = frozenset() if sealed is None else frozenset(sealed.commands) - set(sealed.legacy)
    commands = withhold(commands, refused_live, start, now, say, trusted)
    if replaced:  # the update lost may have revoked the signer of a later release (G2b)
        commands = without_releases(commands, trusted)
    kept = keep_killed(states, rebuilt.killed_at, commands)
    if kept:
        names = _first_names(kept)
        say(
            f"restore: WARNING: {len(kept)} runs stopped last by a kill switch that this "
            f"restart cannot issue again ({names}; its command is not in the audit) are "
            "restored STOPPED (audit_unverified), never reopened"
        )
    applied: set[str] = set()
    kills, refused = (None, []) if start is None else fold_reissued(commands, start, now, applied)
    if refused:
        say(
            f"restore: WARNING: {len(refused)} recorded policy update(s) would be refused by "
            f"the fresh workers ({'; '.join(refused[:3])}): a row altered in the audit, or a "
            "start policy whose operators are not the ones they were published under; the "
            "policy before them is in force: re-publish the policy you want with "
            "`baton policy publish`"
        )
    reopened = hold_reopened(states, rebuilt.killed_at, commands, kills)
    if reopened:
        say(
            f"restore: WARNING: {len(reopened)} runs stopped last by a kill switch that the "
            f"re-issued commands leave off, with no signed release after the stop "
            f"({_first_names(reopened)}; a kill row deleted or altered in the audit) are "
            "restored STOPPED (audit_unverified), never reopened"
        )
    lost_kills = lost_kill_scopes(record for _, record in records)
    lost_kills += [s for s in unheld_kill_scopes(records, kills, applied) if s not in lost_kills]
    held = hold_lost_kills(states, lost_kills, now)
    if held:
        names = _first_names(held)
        say(
            f"restore: WARNING: {len(held)} runs under a kill switch this restart cannot issue "
            f"again ({names}) are restored STOPPED (audit_unverified)"
        )
    # the switches themselves, for new runs too: the workers hold them from their start
    # (a tenant's brand-new run was allowed until an operator re-issued the kill: session 36)
    write_held_kills(data_dir / WORKER_DATA_DIR, lost_kills, now.timestamp(), say)
    write_changelog(settings, states, keys[0] if keys else b"")  # the key workers mark with
    if commands:
        sent = reissue(settings, commands, say)
        say(
            f"restore: re-issued {sent} of {len(commands)} kill switch, release and policy "
            "commands (releases and policy updates only when signed)"
        )
    undone = releases_undone(commands, kills)
    if undone:
        more = f" and {len(undone) - 10} more" if len(undone) > 10 else ""
        say(
            f"restore: WARNING: {len(undone)} kill switch(es) lifted by an unsigned release "
            f"hold again ({', '.join(undone[:10])}{more}): a restart issues only signed "
            "releases; lift each anew with `baton kill ... --release --as OPERATOR --key FILE` "
            "(signed: a worker refuses an unsigned release once the policy lists operators, "
            "and a signed one survives the next restart too)"
        )
    return len(states)


def _start_policy(settings: Settings) -> Policy | None:
    """The policy this start's workers begin with (None: it does not load; they will not
    start either)."""
    from baton.schemas.errors import PolicyError
    from baton.schemas.policy import load_policy

    try:
        return load_policy(settings.policy)
    except PolicyError:
        return None


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
    #: runs whose last answer to a handoff was a kill switch's stop -> when that stop was
    #: decided (POSIX seconds)
    killed_at: dict[str, float] = field(default_factory=dict)
    #: run ids no event can carry (forged rows): not restored, named
    impossible: list[str] = field(default_factory=list)
    #: "run: why" of runs whose decision chain is broken (a gap, a fork: restored stopped)
    broken: list[str] = field(default_factory=list)


def _rebuild(
    runs: Iterable[list[Recorded]],
    policies: dict[str, Policy],
    settings: Settings,
    key: bytes,
    now: datetime,
) -> _Rebuilt:
    """Replay each run; one whose history does not replay exactly is stopped, never reopened
    (a row forged into gov.decisions, or replacing one in FINAL, must not lower a run's spend
    or lift its stop: fail closed). ``key``: the one the workers link with (b"": none)."""
    out = _Rebuilt()
    for run in runs:
        run_id = run[0].run_id
        if not 1 <= len(run_id) <= MAX_RUN_ID:
            # no worker decided it (events' ids are bounded): a forged run would be held by
            # the worker at whatever size its writer chose
            out.impossible.append(run_id)
            continue
        # a gap or a fork: left in the read order, never put in a guessed one, and restored
        # stopped (its replay cannot reproduce every hash of a broken chain)
        run, broken = in_chain_order(run)
        if broken is not None:
            out.broken.append(f"{run_id}: {broken}")
        else:  # an earlier life that retention is expiring: rebuilt from the later one
            run = from_first_start(run)
        killed_at = last_kill_stop(run)
        if killed_at is not None:
            out.killed_at[run_id] = killed_at
        if is_partial(run, policies) is not None:
            recorded_inputs = any(r.input is not None for r in run)
            (out.unverified_counters if recorded_inputs else out.partial).append(run_id)
            continue
        try:
            state, faithful = rebuild_run(
                run, policies, key, settings.run_retention_s, settings.tombstone_retention_s
            )
        except Exception:  # a recorded input that no longer parses
            out.unverified_counters.append(run_id)
            continue
        if not faithful or broken is not None:
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


def _chained(client: Any, run_ids: list[str]) -> set[str]:
    """Of runs no stored row holds an input of, those a worker linked decisions of onto a
    chain (``decision_variants`` keeps every chain hash said under an id): an audit from before
    inputs were recorded has none. A writer of gov.decisions who replaced every row of a run in
    FINAL with copies without input or chain, its spend zeroed or its stop turned into an
    allow, had the run restored from those counters, reopened (H2, session 36)."""
    from baton.sinks.schema import DATABASE

    if not run_ids or not client.command(f"EXISTS TABLE {DATABASE}.decision_variants"):
        return set()
    found: set[str] = set()
    for i in range(0, len(run_ids), 1000):
        found.update(
            str(row[0])
            for row in client.query(
                f"SELECT DISTINCT run_id FROM {DATABASE}.decision_variants "
                "WHERE run_id IN {runs:Array(String)} AND chain_hash != ''",
                parameters={"runs": run_ids[i : i + 1000]},
            ).result_rows
        )
    return found


def _say_what_was_not_verified(rebuilt: _Rebuilt, keyed: bool, say: Callable[[str], None]) -> None:
    """One line per kind of run the audit could not vouch for, and the missing chain key."""
    if rebuilt.impossible:
        first = rebuilt.impossible[0][:40]
        say(
            f"restore: WARNING: {len(rebuilt.impossible)} runs in the audit have ids no event "
            f"can carry (1 to {MAX_RUN_ID} characters; first: {first!r}...): forged rows, not "
            "restored"
        )
    unverified = rebuilt.unfaithful + rebuilt.unverified_counters
    if unverified:
        names = _first_names(unverified)
        say(
            f"restore: WARNING: {counted(len(unverified), 'run', commas=False)} did not replay "
            "exactly as recorded "
            f"({names}): each is restored STOPPED (audit_unverified), never reopened. Their "
            "audit rows may be forged or altered (check `baton audit verify --run RUN`), or "
            "the chain key (BATON_AUDIT_CHAIN_KEY, else DATA_DIR/worker/chain.key) is not the "
            "workers', or another Baton version decided them"
        )
    if rebuilt.broken:
        say(
            f"restore: WARNING: the decision chains of "
            f"{counted(len(rebuilt.broken), 'run', commas=False)} are broken "
            f"(first: {shown(rebuilt.broken[0])}): rows were deleted, inserted or altered; each is "
            "restored STOPPED (audit_unverified)"
        )
    if rebuilt.partial:
        say(
            f"restore: {counted(len(rebuilt.partial), 'run', commas=False)} restored from their "
            "counters only (no inputs)"
        )
    if not keyed and (rebuilt.states or unverified):
        say(
            "restore: WARNING: no chain key (BATON_AUDIT_CHAIN_KEY, DATA_DIR/worker/chain.key): "
            "a row forged into the audit with a correctly computed chain cannot be told from a "
            "worker's, so the restored states are only as trustworthy as whoever can write "
            "gov.decisions and the chDB directory"
        )


def _first_names(runs: list[str], first: int = 5) -> str:
    """The first five run ids of a warning, and `...` when there are more; escaped: run ids
    are any text (a client's, a forged row's), and an ESC in one reached the terminal."""
    return ", ".join(shown(run) for run in runs[:first]) + (" ..." if len(runs) > first else "")


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
            # it has forgotten every key it decided, as a long run past its window has: its
            # ids then carry the input's position (decision_builder.id_phase), so a copy of
            # an old request never takes (and replaces in the audit) a recorded id. A
            # multiple of FRESH_LIMIT: no key is pending a fold (RunState.remember)
            state.marks = SEEN_LIMIT + FRESH_LIMIT
            state.last_event_at = last.replace(tzinfo=UTC).timestamp()
            state.handoff_count, state.tool_calls = int(handoffs), int(calls)
            state.spent_usd = float(spent)
            state.stopped = stop or (Reason.AUDIT_UNVERIFIED if run_id in unverified else None)
            state.finished = bool(finished)
            aged = _aged(state, settings, now)
            if aged is not None:
                states.append(aged)
    return states
