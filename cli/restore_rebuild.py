"""Run states rebuilt from the audit: each run's recorded history replayed under its recorded
policies (``processors.replay.rebuild_run``), aged as the worker's sweep would age it now.

Shared by `baton up`'s restart (``restore_runs``: every live run, onto a fresh broker) and
`baton runs rebuild` (``runs_rebuild``: the runs a Kafka changelog's restore refuses). A run
whose history does not replay exactly as recorded is restored STOPPED (audit_unverified),
never reopened; one recorded before inputs were is restored from its counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from baton.cli.restore_kills import MAX_RUN_ID, last_kill_stop
from baton.cli.wording import counted
from baton.processors.engine import STICKY_REASONS, evict
from baton.processors.replay import Recorded, in_chain_order, is_partial, rebuild_run
from baton.processors.replay_order import from_first_start
from baton.processors.state import FRESH_LIMIT, SEEN_LIMIT, RunState
from baton.schemas.decision import Reason
from baton.schemas.policy import Policy
from baton.schemas.settings import Settings
from baton.sinks.render import shown

__all__ = [
    "Rebuilt",
    "first_names",
    "from_summaries",
    "rebuild_from_audit",
    "rebuild_runs",
    "say_what_was_not_verified",
]

_STICKY = frozenset({*STICKY_REASONS, Reason.RUN_STATE_LIMIT})


@dataclass
class Rebuilt:
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
    #: runs the sweep would have forgotten by now, as the tombstones it forgot (a restore on
    #: a fresh broker leaves them out; a refused run's rebuild writes one, due: its record
    #: lifts the refusal and the workers' sweep forgets it)
    forgotten: list[RunState] = field(default_factory=list)


def rebuild_runs(
    runs: Iterable[list[Recorded]],
    policies: dict[str, Policy],
    settings: Settings,
    key: bytes,
    now: datetime,
) -> Rebuilt:
    """Replay each run; one whose history does not replay exactly is stopped, never reopened
    (a row forged into gov.decisions, or replacing one in FINAL, must not lower a run's spend
    or lift its stop: fail closed). ``key``: the one the workers link with (b"": none)."""
    out = Rebuilt()
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
        aged, forgotten = _age(state, settings, now)
        if aged is not None:
            out.states.append(aged)
        elif forgotten is not None:
            out.forgotten.append(forgotten)
    return out


def chained_runs(client: Any, run_ids: list[str]) -> set[str]:
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


def say_what_was_not_verified(rebuilt: Rebuilt, keyed: bool, say: Callable[[str], None]) -> None:
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
        names = first_names(unverified)
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


def first_names(runs: list[str], first: int = 5) -> str:
    """The first five run ids of a warning, and `...` when there are more; escaped: run ids
    are any text (a client's, a forged row's), and an ESC in one reached the terminal."""
    return ", ".join(shown(run) for run in runs[:first]) + (" ..." if len(runs) > first else "")


def _aged(state: RunState | None, settings: Settings, now: datetime) -> RunState | None:
    """``state`` as the worker's sweep leaves it at ``now`` (None: forgotten): see ``_age``."""
    return _age(state, settings, now)[0]


def _age(
    state: RunState | None, settings: Settings, now: datetime
) -> tuple[RunState | None, RunState | None]:
    """``state`` as the worker's sweep leaves it at ``now``, and when that is nothing (the
    run forgotten) the tombstone it forgot. A run idle past the retention became a tombstone
    when its retention ended (the sweep runs every second), not at ``now``: a tombstone made
    at ``now`` held the run id a whole tombstone retention more, and a run due to be forgotten
    came back as one (h49c F2)."""
    if state is None:
        return None, None
    retention, tombstone = settings.run_retention_s, settings.tombstone_retention_s
    due = state.last_event_at + retention + 0.001  # (past the float sum's rounding)
    if state.evicted_at is None and due < now.timestamp():
        state = evict(state, datetime.fromtimestamp(due, UTC), retention, tombstone)
        if state is None:  # (a tombstone is made there, never forgotten)
            return None, None
    aged = evict(state, now, retention, tombstone)
    return aged, (state if aged is None else None)


_SUMMARY = """
SELECT run_id, any(tenant), min(decided_at), max(decided_at), max(handoff_count),
       max(spent_usd), max(tool_calls),
       argMinIf(reason, decided_at, outcome = 'stop' AND reason IN {sticky:Array(String)}),
       countIf(reason = 'run_finished') > 0
FROM {db}.decisions FINAL
WHERE run_id IN {runs:Array(String)}
GROUP BY run_id
"""


def from_summaries(
    client: Any,
    run_ids: list[str],
    settings: Settings,
    now: datetime,
    unverified: frozenset[str] = frozenset(),
    forgotten: list[RunState] | None = None,
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
            aged, gone = _age(state, settings, now)
            if aged is not None:
                states.append(aged)
            elif gone is not None and forgotten is not None:
                forgotten.append(gone)
    return states


def rebuild_from_audit(
    client: Any,
    runs: Iterable[list[Recorded]],
    policies: dict[str, Policy],
    settings: Settings,
    chain_key: bytes,
    now: datetime,
) -> Rebuilt:
    """``rebuild_runs``, then the states of the runs it could not replay from their counters
    (``client``: the audit's)."""
    rebuilt = rebuild_runs(runs, policies, settings, chain_key, now)
    chained = chained_runs(client, rebuilt.partial)
    if chained:  # its rows replaced by copies without inputs: not from before inputs
        rebuilt.partial = [run for run in rebuilt.partial if run not in chained]
        rebuilt.unverified_counters += sorted(chained)
    counters = rebuilt.partial + rebuilt.unverified_counters
    if counters:
        rebuilt.states += from_summaries(
            client,
            counters,
            settings,
            now,
            frozenset(rebuilt.unverified_counters),
            rebuilt.forgotten,
        )
    return rebuilt
