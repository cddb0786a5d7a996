"""Kill switches across a ``baton up`` restart: which runs stay stopped, which commands go again.

A restart re-issues every recorded kill and the signed releases and policy updates
(``reissued_commands``); a run that a kill switch stopped last is kept stopped
(``audit_unverified``) when no re-issued command covers it (``keep_killed``), and so is every
run a lost kill switch covers (``hold_lost_kills``). Fail closed: a forged row in the audit
can keep a run stopped, never reopen it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import datetime
from typing import Any

from baton.cli.restart_notice import last_kill_states
from baton.cli.signer import shown
from baton.processors.engine import KillSwitches, new_state
from baton.processors.replay import Recorded
from baton.processors.state import FRESH_LIMIT, SEEN_LIMIT, RunState
from baton.schemas.decision import Outcome, Reason
from baton.schemas.policy import Policy

__all__ = [
    "MAX_RUN_ID",
    "ends_killed",
    "fold_reissued",
    "hold_lost_kills",
    "hold_reopened",
    "keep_killed",
    "last_kill_stop",
    "refused_before",
    "reissued_commands",
    "releases_undone",
    "replaced_policy_records",
    "replaced_policy_rows",
    "unheld_kill_scopes",
]

#: the longest run id an event can carry (schemas.events.Id)
MAX_RUN_ID = 256
#: the reasons of a kill or release a worker applied (a refused one says why it was refused)
_SWITCH_REASONS = (Reason.KILL_SWITCH, Reason.KILL_SWITCH_RELEASED)


def ends_killed(run: list[Recorded]) -> bool:
    """The run's last answer to a handoff was a kill switch's stop (no allow after it)."""
    return last_kill_stop(run) is not None


def last_kill_stop(run: list[Recorded]) -> float | None:
    """When the run's last answer to a handoff was a kill switch's stop (``ends_killed``): the
    time of that stop (POSIX seconds), else None."""
    at = None
    for rec in run:
        if rec.reason == Reason.KILLED:
            at = rec.decided_at.timestamp()
        elif rec.outcome == Outcome.ALLOW:
            at = None
    return at


def hold_reopened(
    states: list[RunState],
    killed_at: dict[str, float],
    commands: list[str],
    kills: KillSwitches | None,
) -> list[str]:
    """Stop (audit_unverified) every run a kill switch stopped last (``killed_at``: when) that
    the re-issued commands, folded as the fresh workers fold them (``kills``: fold_reissued's;
    None: this start's policy does not load), leave open, unless a release the fold applied
    (so signed by an operator, under operators) was signed after that stop. ``keep_killed``
    let a run go when any re-issued command named it: kill(t1), release(t2), kill(t3) and a
    stop after t3, kill(t3)'s row deleted from the audit, re-issued kill(t1) and release(t2)
    named the run and left it open, in silence. A release counted when its signature field
    was merely set: a forged release row dated after the stop, its signature no operator's,
    reopened the run (session 13). The run ids stopped."""
    if not killed_at:
        return []
    # the newest command the fold applied to each switch (signature checked under operators)
    latest = kills.latest if kills is not None else None
    stopped: list[str] = []
    for state in states:
        at = killed_at.get(state.run_id)
        if at is None or state.stopped is not None or state.finished:
            continue
        if kills is not None and kills.killed(state.run_id, state.tenant):
            continue  # the fresh workers hold it
        slots = (f"run:{state.run_id}", f"tenant:{state.tenant}", "global:*")
        if latest is not None and any(latest.get(slot, at - 1.0) >= at for slot in slots):
            continue  # an operator lifted it after the stop (the switch is off: a release)
        state.stopped = Reason.AUDIT_UNVERIFIED
        stopped.append(state.run_id)
    return stopped


def keep_killed(states: list[RunState], killed: Collection[str], commands: list[str]) -> list[str]:
    """Stop (audit_unverified) every run that a kill switch stopped last when no re-issued
    command names its run, its tenant or everything: the kill that stopped it is not in the
    audit's commands (recorded before commands were, or its record was replaced by a forged
    one in FINAL), so the fresh broker would not hold it. The runs stopped so, by id."""
    if not killed:
        return []
    scopes = {(scope, target) for scope, target, _ in reissued_commands(commands, lambda _: None)}
    stopped: list[str] = []
    for state in states:
        if state.run_id not in killed or state.stopped is not None or state.finished:
            continue
        named = {("run", state.run_id), ("tenant", state.tenant), ("global", "*")}
        if not named & scopes:
            state.stopped = Reason.AUDIT_UNVERIFIED
            stopped.append(state.run_id)
    return stopped


def hold_lost_kills(
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
            # no history: every key forgotten, so its ids carry the input's position and a
            # copy of an old request never takes a recorded id (as restore_runs' counters)
            state.marks = SEEN_LIMIT + FRESH_LIMIT
            states.append(state)
            stopped.append(run_id)
    return stopped


def reissued_commands(
    commands: list[str], refused: Callable[[str], None]
) -> Iterator[tuple[str, str, str]]:
    """``(scope, target, text)`` of each command a restart re-issues: every kill, and the
    releases and policy updates that are signed (scope ``policy`` for those), in the order
    of the times they carry (signed: no writer of the audit can move them). A recorded
    command that does not parse (a forged or damaged row) is named to ``refused``.

    Not in the audit's order (``decided_at``): a row written into gov.decisions, or
    replacing one in FINAL, sets that column, and whether a command counts depends on the
    policy in force where it is re-issued: a kill signed by an operator whom a policy update
    had added, moved before that update, was refused after the restart (the run reopened);
    the update that removed an operator, moved before the one that added its successor,
    left the removed key in force. A worker applies signed policy updates, and the signed
    commands of one target, only in the order of their times, so theirs is kept; the
    residue: a kill signed within the clock skew (60 s) of the update that made its signer
    an operator, on a clock behind that update's, comes first and is refused."""
    from baton.schemas.events import KillSwitch, KillSwitchReleased, parse_control_event

    kept = []
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
        kept.append((event, text))
    kept.sort(key=lambda pair: pair[0].event_time.timestamp())  # stable: ties as recorded
    for event, text in kept:
        if isinstance(event, (KillSwitch, KillSwitchReleased)):
            yield event.scope, event.target, text
        else:
            yield "policy", "*", text


def fold_reissued(
    commands: list[str],
    policy: Policy,
    now: datetime,
    applied: set[str] | None = None,
    unverifiable: set[str] | None = None,
    ended: list[Policy] | None = None,
) -> tuple[KillSwitches, list[str]]:
    """The kill switches the re-issued ``commands`` leave engaged once folded as a fresh
    worker folds them (from ``policy``, this start's, with the engine's own checks), and the
    policy updates among them it would refuse, each named with why. Every command re-issued
    was applied before the restart, so a refusal here is a recorded command altered (a byte of
    its signature, its operator, its signature taken out: control rows are not chained).
    ``applied``: given, the texts of the kills and releases the fold applied are added.
    ``unverifiable``: given, the releases met while the policy lists no operators are added
    there and not applied: no key verifies their signature, so any writer of gov.decisions
    could have put them there (session 39, C2: one with any signature lifted a kill); after
    an update that emptied the operators, a release or policy update is verified against the
    operators in force before it, and added there when they refuse it (A3: a forged update in
    that gap made the forger an operator, whose release then counted). ``ended``: given, the
    policy the fold ends with is appended."""
    from baton.processors.engine import NO_KILLS, apply_control, apply_policy_update
    from baton.processors.engine_control import command_refused
    from baton.schemas.events import KillSwitch, KillSwitchReleased, parse_control_event

    kills, signed_at, refused = NO_KILLS, None, []
    last_operators = policy.operators  # the operators in force last (an emptied list's gap)
    for _scope, _target, text in reissued_commands(commands, lambda _: None):
        event = parse_control_event(text.encode())
        if unverifiable is not None and not policy.operators and not isinstance(event, KillSwitch):
            # a release needs a key; a policy update only once operators were listed (the
            # first publication of a start without them is what gives it some)
            keys = policy.model_copy(update={"operators": last_operators})
            release = isinstance(event, KillSwitchReleased)
            if (release and not last_operators) or (
                last_operators and command_refused(event, keys) is not None
            ):
                unverifiable.add(text)
                continue
        if isinstance(event, (KillSwitch, KillSwitchReleased)):
            kills, record = apply_control(kills, event, policy, now)
            if applied is not None and record.reason in _SWITCH_REASONS:
                applied.add(text)
            continue
        step = apply_policy_update(policy, signed_at, event, now)
        if not step.applied:
            why = step.record.reason if step.record is not None else "not a policy"
            refused.append(f"policy_updated at {event.event_time.isoformat()} ({why})")
        policy, signed_at = step.policy, step.signed_at
        last_operators = policy.operators or last_operators
    if ended is not None:
        ended.append(policy)
    return kills, refused


def refused_before(client: Any, commands: list[str]) -> set[str]:
    """The releases of ``commands`` that a worker refused before the
    restart (a record under the id its refusal takes, in ``decision_variants``: no later row
    removes it): a command refused live (signed on a clock too far ahead, ``signature_expired``)
    whose text a writer of gov.decisions copied into a row of an applied one was re-issued once
    its time had passed, and lifted a kill (session 39, C1). A forged refusal can only keep a
    release from being re-issued: its kill holds again (fail closed)."""
    from baton.processors.engine_control import refused_command_id
    from baton.schemas.decision import Phase, decision_id_for
    from baton.schemas.events import KillSwitchReleased, parse_control_event
    from baton.sinks.schema import DATABASE

    ids: dict[str, str] = {}
    for text in commands:
        try:
            event = parse_control_event(text.encode())
        except Exception:
            continue  # named where the commands are re-issued
        if not isinstance(event, KillSwitchReleased):
            # a kill only tightens; and a policy update may tighten as well as loosen: one
            # withheld on a forged refusal record kept a revoked operator, whose own release
            # then counted (session 39, round 4). A policy update an operator signed and the
            # live workers refused (a clock too far ahead) may be put in force by a restart.
            continue
        when = event.event_time.isoformat()
        # the refusal's id covers the whole event: a copy differing in a field the signature
        # does not cover (run_id of a tenant's release, policy_sha) had another id and was
        # issued again (session 39, A1/A2): every form of the signed content is looked up
        run, own = event.run_id or "*", f"{event.type}:{event.scope}:{event.target}:{when}"
        bare = event.model_copy(
            update={
                "run_id": event.run_id if event.scope == "run" else None,
                "tenant": event.tenant if event.scope == "tenant" else None,
            }
        )
        forms = [(run, event), (bare.run_id or "*", bare)]
        for form_run, form in forms:
            ids[decision_id_for(form_run, refused_command_id(own, form), Phase.CONTROL)] = text
    if not ids or not client.command(f"EXISTS TABLE {DATABASE}.decision_variants"):
        return set()
    found = client.query(
        f"SELECT DISTINCT decision_id FROM {DATABASE}.decision_variants "
        "WHERE decision_id IN {ids:Array(String)}",
        parameters={"ids": sorted(ids)},
    ).result_rows
    return {ids[str(row[0])] for row in found}


def releases_undone(commands: list[str], kills: KillSwitches | None) -> list[str]:
    """Each kill switch an unsigned release had lifted that holds again once the restart
    re-issued its commands (the kill is re-issued, the release is not: whoever can write
    gov.decisions could have put it there), as ``run X``, ``tenant T`` or ``global``: the
    restart said only "re-issued 3 of 4 ... commands", and the README tour's own released run
    was stopped again, unnamed."""
    from baton.schemas.events import KillSwitchReleased, parse_control_event

    if kills is None:
        return []
    undone: list[str] = []
    for text in commands:
        try:
            event = parse_control_event(text.encode())
        except Exception:
            continue  # named as refused where the commands are re-issued
        if not isinstance(event, KillSwitchReleased) or event.signature:
            continue
        if event.scope == "global":
            held, name = kills.everything, "global"
        else:
            found = kills.runs if event.scope == "run" else kills.tenants
            held, name = event.target in found, f"{event.scope} {shown(event.target)}"
        if held and name not in undone:
            undone.append(name)
    return undone


def unheld_kill_scopes(
    dated: Iterable[tuple[float, tuple[str, ...]]],
    kills: KillSwitches | None,
    applied: Collection[str] = (),
) -> list[tuple[str, str]]:
    """``(scope, target)`` of every switch a kill record of the audit engaged (``dated``: the
    control records with their times, as :func:`baton.cli.kill_records.kill_records` reads
    them) that ``kills`` (:func:`fold_reissued`'s; None: this start's policy does not load)
    leave off, when that kill's command is not among the re-issued commands the fold
    ``applied`` and no command the fold applied to its switch was signed after it (the
    switch's ``latest``).

    The fold is the only account of the switches a restart gives back; a record says only
    what its writer wanted: a kill whose command is lost (its row replaced under its id),
    altered (the fresh workers refuse it) or absent (recorded before commands were) is held
    unless a command the fresh workers apply lifts it later. Before, the records' own order
    and state decided: a release row in a worker's shape written after such a kill (session
    38, H4), a lost kill dated before a re-issued older release (A2), an altered kill with a
    release row after it, or a forged ``detail`` naming another scope (session 39) read as
    released. A kill's time is the latest the audit recorded for it (``kill_times``), which a
    forger can only move later."""
    if kills is None:
        states = last_kill_states(record for _, record in dated)
        killed = {slot for _, r in dated for slot, (on, _) in last_kill_states([r]).items() if on}
        return [st for st, (on, _) in states.items() if on or st in killed]
    unapplied: dict[tuple[str, str], float] = {}  # when each switch was last engaged so
    for at, record in dated:
        if record[0] != "kill_switch" or (record[4:5] and record[4] in applied):
            continue  # not a kill, or one the fold accounts for
        for slot, (on, _) in last_kill_states([record]).items():
            if on:
                unapplied[slot] = max(at, unapplied.get(slot, at))
    held = {"run": kills.runs, "tenant": kills.tenants}
    out = []
    for (scope, target), at in unapplied.items():
        if kills.everything if scope == "global" else target in held.get(scope, ()):
            continue  # the fresh workers hold it
        latest = kills.latest.get(f"{scope}:{target}")
        if latest is None or latest < at:
            out.append((scope, target))
    return out


#: the rows a worker writes for a policy update it applied, and for a policy it came to use
_POLICY_ROWS_SQL = (
    "SELECT decision_id, run_id, request_id, reason, ifNull(input, '') FROM {db}.decisions "
    "FINAL WHERE phase = 'control' AND run_id = '*' AND (startsWith(request_id, "
    "'policy_updated:') OR startsWith(request_id, 'policy_in_force:')) "
    "AND position(request_id, ':refused:') = 0"
)


def replaced_policy_rows(rows: list[tuple[str, ...]]) -> list[str]:
    """Of ``(decision_id, run_id, request_id, reason, input)`` control rows, the request ids
    of those holding a worker's id for an applied policy update (or a ``policy_in_force``
    record) that no worker made: a row written into gov.decisions under that id replaced
    the worker's in FINAL (control rows are not chained), and the update it stood for is not
    re-issued, nor named as lost: the restart ran the policy before it, in silence."""
    from baton.schemas.decision import Phase, decision_id_for
    from baton.schemas.events import PolicyUpdated, parse_control_event
    from baton.schemas.signing import policy_hash

    replaced = []
    for decision_id, run_id, request_id, reason, command in rows:
        if decision_id != decision_id_for(run_id, request_id, Phase.CONTROL):
            continue  # a row of its own id replaced nothing (refused, or re-issued if signed)
        kind = request_id.split(":", 1)[0]
        if kind == "policy_in_force":
            if reason != "policy_in_force":
                replaced.append(request_id)
            continue
        if reason == "policy_updated" and not command:
            continue  # recorded before commands were (restart_notice names what it lost)
        try:
            event = parse_control_event(command.encode())
        except Exception:
            event = None
        made = isinstance(event, PolicyUpdated) and request_id == (
            f"policy_updated:{policy_hash(event.policy_yaml)[:16]}:{event.event_time.isoformat()}"
        )
        if reason != "policy_updated" or not made:
            replaced.append(request_id)
    return replaced


def replaced_policy_records(client: Any) -> list[str]:
    """:func:`replaced_policy_rows` of the audit ``client`` reads."""
    from baton.cli.restart_notice import replaced_control_ids
    from baton.sinks.schema import DATABASE

    rows = client.query(_POLICY_ROWS_SQL.format(db=DATABASE)).result_rows
    replaced = replaced_policy_rows([tuple(str(v) for v in row) for row in rows])
    listed = {str(row[0]) for row in rows}
    # an id that held one whose row now has another phase or request id (H2, session 36)
    records = replaced_control_ids(client, ("policy_updated", "policy_in_force"))
    replaced += [f"{reason} (id {ident[:16]})" for ident, _, _, reason, _ in records
                 if ident not in listed]  # fmt: skip
    # an id that said something else too: a row of the same reason and another outcome
    # (stored as news), no command, read as an update recorded before commands were
    # (session 39 round 5, G2b: the update revoking an operator dropped in silence)
    told = set(replaced)
    if listed and client.command(f"EXISTS TABLE {DATABASE}.decision_variants"):
        ids = {str(row[0]): str(row[2]) for row in rows}
        said = client.query(
            f"SELECT decision_id FROM {DATABASE}.decision_variants FINAL "
            "WHERE decision_id IN {ids:Array(String)} GROUP BY decision_id "
            "HAVING uniqExact(outcome, reason) > 1",
            parameters={"ids": sorted(ids)},
        ).result_rows
        replaced += [ids[str(r[0])] for r in said if ids[str(r[0])] not in told]
    # an update's row without its command stored after the audit's first command-bearing
    # control row: not one from before commands were recorded (0005), but a row written
    # first under the update's id, which kept the worker's out (session 39 round 5, G2)
    told = set(replaced)
    late = client.query(_UNCOMMANDED_SQL.format(db=DATABASE)).result_rows
    replaced += [str(r[0]) for r in late if str(r[0]) not in told]
    return replaced


_UNCOMMANDED_SQL = (
    "SELECT request_id FROM {db}.decisions FINAL WHERE phase = 'control' "
    "AND reason = 'policy_updated' AND input IS NULL AND inserted_at > (SELECT "
    "minOrNull(inserted_at) FROM {db}.decisions WHERE phase = 'control' AND input IS NOT NULL)"
)
