"""What a restart of ``baton up`` cannot give back, named: the kill switches and the policy in
force before it.

The embedded broker forgets its control topic when it stops. `baton up` issues again what the
audit recorded the command of (cli.restore_kills: every kill, signed releases and policy
updates); what it cannot (records from before commands were recorded, unsigned policy
updates) is folded from the audit's ``control`` records here, so ``baton up`` names each one
loudly instead of lifting a kill switch or dropping a policy in silence.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baton.cli.restore_sealed import POLICY_RECORDS as _POLICY_RECORDS
from baton.cli.signer import shown

if TYPE_CHECKING:
    from baton.schemas.policy import Policy

__all__ = [
    "APPLIED",
    "PolicyInForce",
    "as_made",
    "fold_kill_switches",
    "fold_policy_in_force",
    "lost_kill",
    "operators_not_given_back",
    "policy_in_force",
    "recorded_commands",
    "replaced_control_ids",
    "scope_names",
    "unsigned_operators_source",
]

#: applied commands only: a refused one carries the reason it was refused
APPLIED = ("kill_switch", "kill_switch_released")


def fold_kill_switches(records: Iterable[tuple[str, ...]]) -> list[str]:
    """``run RUN``, ``tenant T`` or ``global`` for every switch whose last applied command
    (of ``(reason, run_id, tenant, detail[, command])`` control records, oldest first) engaged
    it, unless that kill's command is recorded: `baton up` re-issues those (cli.restore_kills)."""
    return scope_names(lost_kill_scopes(records))


def scope_names(scopes: Iterable[tuple[str, str]]) -> list[str]:
    """``run RUN``, ``tenant T`` or ``global`` of each ``(scope, target)``, escaped."""
    # the scope too is a row's text (its detail, which a forger of a worker's id chooses)
    return [
        "global" if scope == "global" else f"{shown(scope)} {shown(target)}"
        for scope, target in scopes
    ]


def last_kill_states(
    records: Iterable[tuple[str, ...]],
) -> dict[tuple[str, str], tuple[bool, bool]]:
    """For each ``(scope, target)`` of the kill and release ``records`` (oldest first; target
    ``*`` for global): whether its last record engaged it, and whether that record holds a
    command a restart could issue again."""
    last: dict[tuple[str, str], tuple[bool, bool]] = {}
    for reason, run_id, tenant, detail, *command in records:
        if reason not in APPLIED:
            continue
        scope = detail.split(" ", 1)[0].removeprefix("scope=")
        target = {"run": run_id, "tenant": tenant}.get(scope, "*")
        last[(scope, target)] = (reason == "kill_switch", any(command))
    return last


def lost_kill_scopes(records: Iterable[tuple[str, ...]]) -> list[tuple[str, str]]:
    """``(scope, target)`` of every switch :func:`fold_kill_switches` names (target ``*``
    for global): engaged last, and no recorded command a restart could issue again."""
    return [st for st, (on, command) in last_kill_states(records).items() if on and not command]


def replaced_control_ids(client: Any, reasons: Iterable[str]) -> list[tuple[str, ...]]:
    """``(decision_id, run_id, tenant, reason, decided_at)`` of every id that once held a
    control record of one of ``reasons`` (``decision_variants``: every outcome and reason said
    under an id stays) whose stored row (FINAL) is not that record as a worker makes it: its
    phase, reason or request id changed, or gone. Control rows are not chained: a writer of
    gov.decisions replaced a kill or a signed policy update under its id with a row of another
    reason or phase, and the restart lost it in silence (H2, session 36)."""
    from baton.schemas.decision import Phase, decision_id_for
    from baton.sinks.schema import DATABASE

    if not client.command(f"EXISTS TABLE {DATABASE}.decision_variants"):
        return []
    # by the table's whole key: a row under the id with another tenant replaces nothing, and
    # any(tenant) per id named that tenant's switch instead of the kill's (session 39)
    said = client.query(
        f"SELECT decision_id, run_id, tenant, any(reason), min(decided_at) "
        f"FROM {DATABASE}.decision_variants FINAL WHERE reason IN {{reasons:Array(String)}} "
        "GROUP BY tenant, run_id, decision_id",
        parameters={"reasons": list(reasons)},
    ).result_rows
    if not said:
        return []
    stored = {
        (str(tenant), str(run_id), str(decision_id)): (str(phase), str(reason), str(request_id))
        for decision_id, tenant, phase, reason, run_id, request_id in client.query(
            f"SELECT decision_id, tenant, phase, reason, run_id, request_id FROM "
            f"{DATABASE}.decisions FINAL WHERE decision_id IN {{ids:Array(String)}}",
            parameters={"ids": sorted({str(row[0]) for row in said})},
        ).result_rows
    }
    replaced = []
    for decision_id, run_id, tenant, reason, at in said:
        key = (str(tenant), str(run_id), str(decision_id))
        phase, now_reason, request_id = stored.get(key, ("", "", ""))
        now_run = str(run_id)
        made = (
            phase == Phase.CONTROL.value
            and now_reason == reason
            and request_id.startswith(f"{reason}:")
            and decision_id == decision_id_for(now_run, request_id, Phase.CONTROL)
        )
        if not made:
            replaced.append((str(decision_id), str(run_id), str(tenant), str(reason), at))
    return replaced


def as_made(row: tuple[str, ...]) -> tuple[str, ...]:
    """``(reason, run_id, tenant, detail, command)`` of a ``(..., decision_id, request_id)``
    control record; one its worker cannot have made (its id is not the one its request id
    and run give, or its request id names another command) is taken as a kill whose
    command is lost: a forged release that replaced a kill in FINAL (same id) must not
    lift it in silence."""
    from baton.schemas.decision import Phase, decision_id_for

    reason, run_id, tenant, detail, command, decision_id, request_id = row
    made = decision_id == decision_id_for(run_id, request_id, Phase.CONTROL)
    if made and request_id.startswith(f"{reason}:"):
        return reason, run_id, tenant, detail, command
    return lost_kill(run_id, tenant)


def lost_kill(run_id: str, tenant: str) -> tuple[str, ...]:
    """A kill whose command is lost, of the run, tenant or everything the row's key columns
    name (the columns FINAL keys on: a forger chose the detail)."""
    scope = "run" if run_id != "*" else "tenant" if tenant != "*" else "global"
    return "kill_switch", run_id, tenant, f"scope={scope}", ""


@dataclass(frozen=True)
class PolicyInForce:
    """The policy version the workers used last, who published it (None: the file's), and
    whether a restart re-issues that publication (signed, its command in the audit)."""

    version: str
    published_by: str | None
    at: str
    reissued: bool = False
    #: the operators that policy lists (from its policy_in_force record's document)
    operators: tuple[str, ...] = ()


def fold_policy_in_force(
    records: Iterable[tuple[str, str, str, str, str]],
) -> PolicyInForce | None:
    """The policy of the last of ``(reason, policy_version, approver, decided_at, input)``
    control records (oldest first), with the operator who published that version, if one did,
    and whether `baton up` re-issues it (cli.restore_kills: only a signed command)."""
    last: PolicyInForce | None = None
    publishers: dict[str, tuple[str, bool]] = {}
    operators: dict[str, tuple[str, ...]] = {}
    for reason, version, approver, at, command in records:
        if reason not in _POLICY_RECORDS or not version:
            continue
        if reason == "policy_updated":
            publishers[version] = (approver, _signed(command))
        else:  # a policy_in_force record's input is the policy's document
            operators[version] = _operators(command, version)
        by, reissued = publishers.get(version, (None, False))
        last = PolicyInForce(version, by, at, reissued)
    if last is not None:
        last = replace(last, operators=operators.get(last.version, ()))
    return last


def _operators(document: str, version: str) -> tuple[str, ...]:
    """The operator names of a policy document (none when it is not one); a document that
    does not hash to its record's version is no policy a worker used: its operators are the
    ones a forged record said (none: the guard against a start that drops them was passed,
    H2 session 36), so such a record keeps the operators the version had."""
    import orjson

    from baton.sinks.replay_source import policies_of

    if not document:
        return ()  # recorded before policy documents were
    policies, _refused = policies_of([(version, document)])
    if version not in policies:
        return ("(unknown: its record does not hash to its version, forged or altered)",)
    try:
        doc = orjson.loads(document) if document else None
    except orjson.JSONDecodeError:
        return ()
    names = doc.get("operators") if isinstance(doc, dict) else None
    return tuple(sorted(str(n) for n in names)) if isinstance(names, dict) else ()


def _signed(command: str) -> bool:
    """The recorded command carries a signature (a restart re-issues it, the workers verify).
    Read with orjson, whose depth bound is an error: ``json.loads`` raised RecursionError on a
    row's command nested 3,000 deep (anyone who writes gov.decisions), and `baton up` ended."""
    import orjson

    try:
        event = orjson.loads(command) if command else None
    except orjson.JSONDecodeError:
        return False
    return isinstance(event, dict) and bool(event.get("signature"))


def policy_in_force(chdb_dir: Path, keys: Sequence[bytes] = ()) -> PolicyInForce | None:
    """The policy the workers of the audit in ``chdb_dir`` used last (None: none recorded):
    from the records whose seal verifies under ``keys`` (``restore_sealed.
    sealed_policy_records``) when the workers sealed them, else from every record.

    The records are read without their text first, and only the texts the fold reads of them
    next: the last record's version's last publication (a command: none longer than a worker
    reads) and document. A writer of gov.decisions can store a megabyte document under every
    record it forges, and all of them were read: 270 MB of them took 2.2 GB at every restart
    (session 42)."""
    from baton.schemas.events import MAX_RECORDED_COMMAND_BYTES
    from baton.sinks.clickhouse import audit_errors, connect
    from baton.sinks.schema import DATABASE

    client = connect(f"chdb://{chdb_dir}", follow_endpoint=False)
    try:
        with audit_errors(f"chdb://{chdb_dir}", "reading the policy in force of the audit"):
            if not client.command(f"EXISTS TABLE {DATABASE}.decisions"):
                return None
            if keys:
                from baton.cli.restore_sealed import sealed_policy_records

                sealed = sealed_policy_records(client, list(keys))
                if sealed is not None:  # (each document read is parsed and hashed)
                    return fold_policy_in_force(_deciding_rows(sealed))  # type: ignore[arg-type]
            rows = client.query(
                "SELECT reason, policy_version, ifNull(approver, ''), toString(decided_at), "
                f"tenant, run_id, decision_id FROM {DATABASE}.decisions FINAL "
                "WHERE phase = 'control' AND reason IN {records:Array(String)} "
                "ORDER BY decided_at, `offset`",
                parameters={"records": list(_POLICY_RECORDS)},
            ).result_rows
            read = _deciding_rows([tuple(str(v) for v in row) for row in rows])
            if not read:
                return None
            texts = {
                (str(tenant), str(run_id), str(decision_id)): str(text)
                for tenant, run_id, decision_id, text in client.query(
                    "SELECT tenant, run_id, decision_id, if(reason = 'policy_updated' AND "
                    "length(ifNull(input, '')) > {most:UInt32}, '', ifNull(input, '')) "
                    f"FROM {DATABASE}.decisions FINAL WHERE phase = 'control' "
                    "AND (tenant, run_id, decision_id) IN "
                    "{keys:Array(Tuple(String, String, String))}",
                    parameters={
                        "keys": [row[4:] for row in read],
                        "most": MAX_RECORDED_COMMAND_BYTES,
                    },
                ).result_rows
            }
    finally:
        client.close()
    return fold_policy_in_force((*row[:4], texts.get(row[4:], "")) for row in read)  # type: ignore[misc]


def _deciding_rows(rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Of ``(reason, version, approver, at, *key)`` policy records (oldest first), the ones
    whose text :func:`fold_policy_in_force` reads for its answer, in order: the last record
    with a version, and its version's last publication and last document before it."""
    counted = [row for row in rows if row[0] in _POLICY_RECORDS and row[1]]
    if not counted:
        return []
    version = counted[-1][1]
    last = {reason: i for i, (reason, v, *_) in enumerate(counted) if v == version}
    return [counted[i] for i in sorted({*last.values(), len(counted) - 1})]


def operators_not_given_back(
    commands: Iterable[str], start: Policy, now: datetime, fresh: Policy | None = None
) -> tuple[str, ...]:
    """The operators of the policy the earlier start's workers came to hold, when a restart
    does not give that policy back; empty when it lists none or the restart re-issues it.

    Folded from ``start``, the policy that start began with (its copy in DATA_DIR, a file
    only `baton up` writes), through the recorded policy updates (of ``commands``, in the
    order of the times they carry) as a worker applies them: signed by one of its operators
    once it lists any. A signed one is re-issued by the restart and gives its policy back;
    the start's own policy and an unsigned publication are not. Not from the audit's
    ``policy_in_force`` rows: any writer of gov.decisions can append one whose document
    lists no operators (and hashes to its version), and a start without them passed the
    guard (H2, session 36). ``fresh``: this start's policy, from which its workers fold the
    re-issued updates: given, the restart gives the policy back only when that fold ends
    with the same operators (a forged update with any signature, dated before a real one,
    is applied first by workers whose policy lists none, and the real one refused: H4,
    session 38)."""
    held, reissued, applied = _policy_after(commands, start, now)
    if not held.operators:
        return ()
    if fresh is not None:
        # the same updates, not merely the same operators in the end: a forged update that
        # copies the operators' keys into the forger's rules (any signature) was applied by
        # the fresh workers alone (H1 of session 38's second attack)
        after, _, fresh_applied = _policy_after(commands, fresh, now, reissued_only=True)
        signed = [event for event in applied if event.signature]
        given_back = dict(after.operators) == dict(held.operators) and fresh_applied == signed
    else:
        given_back = reissued
    return () if given_back else tuple(sorted(held.operators))


def unsigned_operators_source(commands: Iterable[str], start: Policy, now: datetime) -> str:
    """When the operators :func:`operators_not_given_back` names came from an unsigned recorded
    policy update (``start`` listed none), a clause saying so and when it was published;
    else "". Such a row is anyone's who writes gov.decisions: the refusal is fail closed,
    and the operator should know what it rests on (A2, session 38)."""
    if start.operators:
        return ""
    _, _, applied = _policy_after(commands, start, now)
    unsigned = [event for event in applied if not event.signature]
    if not unsigned or applied[-1].signature:
        return ""
    at = unsigned[-1].event_time.isoformat()[:19]
    return (
        f" (from an unsigned policy update the audit records, published {at} UTC: a row anyone "
        "who writes gov.decisions can add; if no one published it, --allow-unsigned is what "
        "you mean)"
    )


def _policy_after(
    commands: Iterable[str], start: Policy, now: datetime, *, reissued_only: bool = False
) -> tuple[Policy, bool, list[Any]]:
    """The policy ``start`` becomes through the policy updates of ``commands`` (only those a
    restart re-issues, signed ones, with ``reissued_only``) applied as a worker applies
    them, whether the last one applied is signed, and the updates applied."""
    from baton.processors.engine import apply_policy_update
    from baton.schemas.events import PolicyUpdated, parse_control_event

    updates = []
    for text in commands:
        try:
            event = parse_control_event(text.encode())
        except Exception:
            continue  # named where the commands are re-issued
        if isinstance(event, PolicyUpdated) and (event.signature or not reissued_only):
            updates.append(event)
    updates.sort(key=lambda event: event.event_time.timestamp())
    policy, signed_at, signed, applied = start, None, False, []
    for event in updates:
        step = apply_policy_update(policy, signed_at, event, now)
        if step.applied:
            policy, signed_at, signed = step.policy, step.signed_at, bool(event.signature)
            applied.append(event)
    return policy, signed, applied


def recorded_commands(chdb_dir: Path, keys: Sequence[bytes] = ()) -> list[str]:
    """The commands the audit in ``chdb_dir`` recorded: those whose record a worker sealed
    under ``keys`` and the ones from before the seals (``restore_sealed.read_sealed``: what a
    restart issues again) when the workers sealed any, else every recorded one
    (sinks.replay_source.read_commands); empty when it holds no audit table yet. A row forged
    into gov.decisions, an unsigned update listing an operator on a stack whose policy listed
    none, refused every restart that dropped the operator it gave (session 42)."""
    from baton.cli.restore_sealed import read_sealed
    from baton.sinks.clickhouse import audit_errors, connect
    from baton.sinks.replay_source import read_commands
    from baton.sinks.schema import DATABASE

    client = connect(f"chdb://{chdb_dir}", follow_endpoint=False)
    try:
        with audit_errors(f"chdb://{chdb_dir}", "reading the commands of the audit"):
            if not client.command(f"EXISTS TABLE {DATABASE}.decisions"):
                return []
            sealed = read_sealed(client, list(keys)) if keys else None
            return sealed.commands if sealed and sealed.any_sealed else read_commands(client)
    finally:
        client.close()
