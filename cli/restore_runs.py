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

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from baton.cli.kill_records import kill_records, sealed_kill_records
from baton.cli.restart_notice import lost_kill_scopes
from baton.cli.restore_kills import (
    fold_reissued,
    hold_lost_kills,
    hold_reopened,
    keep_killed,
    refused_before,
    releases_undone,
    replaced_policy_records,
    unheld_kill_scopes,
)
from baton.cli.restore_rebuild import first_names, rebuild_from_audit, say_what_was_not_verified
from baton.cli.restore_sealed import read_sealed, say_unsealed
from baton.cli.restore_withhold import withhold, without_releases
from baton.cli.restore_write import reissue, write_changelog
from baton.cli.up_children import WORKER_DATA_DIR
from baton.processors.control_seal import seal_keys, workers_chain_key
from baton.processors.held_kills import write_held_kills
from baton.processors.replay import runs_of
from baton.schemas.policy import Policy
from baton.schemas.settings import Settings
from baton.sinks.render import shown_refusals

__all__ = ["restore_runs"]


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
            rebuilt = rebuild_from_audit(client, runs, policies, settings, chain_key, now)
            states = rebuilt.states
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
    say_what_was_not_verified(rebuilt, bool(chain_key), say)
    if sealed is not None:
        say_unsealed(sealed, say)
    if replaced:
        say(
            f"restore: WARNING: {len(replaced)} policy record(s) of the audit were replaced by "
            f"rows no worker writes ({first_names(replaced, 3)}): a policy update they stood "
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
        names = first_names(kept)
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
            f"({first_names(reopened)}; a kill row deleted or altered in the audit) are "
            "restored STOPPED (audit_unverified), never reopened"
        )
    lost_kills = lost_kill_scopes(record for _, record in records)
    lost_kills += [s for s in unheld_kill_scopes(records, kills, applied) if s not in lost_kills]
    held = hold_lost_kills(states, lost_kills, now)
    if held:
        names = first_names(held)
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
