"""Operators' commands as the engine applies them: kill switches and policy updates, each
verified against the policy in force and audited as a record (applied or refused).

Pure like the engine: the workers' control follower (processors/control.py) and
``baton policy current`` fold the control topic with these functions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from baton.processors.decision_builder import NO_ORIGIN, Origin
from baton.schemas.decision import Decision, Outcome, Phase, Reason, decision_id_for
from baton.schemas.errors import PolicyError
from baton.schemas.events import KillSwitch, KillSwitchReleased, PolicyUpdated
from baton.schemas.policy import Policy, parse_policy
from baton.schemas.signing import control_payload, parse_public_key, policy_hash, verify

__all__ = [
    "NO_KILLS",
    "KillSwitches",
    "PolicyStep",
    "applied_time",
    "apply_control",
    "apply_policy_update",
    "command_refused",
    "policy_update_record",
    "refused_command_id",
]

#: an empty 8-byte BLAKE2b, copied per digest (cheaper than a new one)
_DIGEST = hashlib.blake2b(digest_size=8)
#: how far an operator's clock may run ahead of the worker's (as for approvers' signatures)
CONTROL_CLOCK_SKEW_S = 60.0


_MISSING: Any = object()
#: a key's removal in a delta (no value is None): survives a pickle, as an object() would not
_GONE: Any = None
#: changes a _Layered map holds over its base before they are merged into a new base
_DELTA = 256


class _Layered:
    """A map that never changes: ``put`` gives a new one sharing what did not change, a small
    delta over a base merged into a new base every _DELTA changes. Every kill switch applied
    copied the whole map: folding 16,000 killed runs at a worker's start took 174 s (a tuple
    rebuilt in Python), 13.6 s (dicts copied in C), and grew with the square of the runs."""

    __slots__ = ("_base", "_delta", "size")

    def __init__(self, base: dict[str, Any], delta: dict[str, Any], size: int) -> None:
        self._base, self._delta, self.size = base, delta, size

    @classmethod
    def of(cls, items: Mapping[str, Any]) -> _Layered:
        return cls(dict(items), {}, len(items))

    def get(self, key: str, default: Any = None) -> Any:
        value = self._delta.get(key, _MISSING)
        if value is _MISSING:
            return self._base.get(key, default)
        return default if value is _GONE else value

    def __contains__(self, key: str) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def put(self, key: str, value: Any) -> _Layered:
        """This map with ``key`` set to ``value`` (``_GONE``: without ``key``)."""
        had = key in self
        if value is _GONE and not had:
            return self
        size = self.size + (value is not _GONE) - had
        delta = {**self._delta, key: value}
        if len(delta) <= _DELTA:
            return _Layered(self._base, delta, size)
        base = dict(self._base)
        for k, v in delta.items():
            if v is _GONE:
                base.pop(k, None)
            else:
                base[k] = v
        return _Layered(base, {}, size)

    def items(self) -> dict[str, Any]:
        merged = {**self._base, **self._delta}
        return {k: v for k, v in merged.items() if v is not _GONE}


class KillSwitches:
    """The kill switches in force, from gov.control: runs, tenants, or everything. Never
    changed once made (the hot path reads it without a lock); ``apply_control`` makes the
    next one."""

    __slots__ = ("_runs", "_tenants", "everything", "latest")

    def __init__(
        self,
        runs: Iterable[str] | _Layered = (),
        tenants: Iterable[str] | _Layered = (),
        everything: bool = False,
        latest: Mapping[str, float] | _Layered | None = None,
    ) -> None:
        self._runs = runs if isinstance(runs, _Layered) else _Layered.of(dict.fromkeys(runs, 1))
        self._tenants = (
            tenants if isinstance(tenants, _Layered) else _Layered.of(dict.fromkeys(tenants, 1))
        )
        self.everything = everything
        #: "scope:target" -> event time of the newest command applied to it: an older one
        #: arriving later (a replayed release) is refused
        self.latest = latest if isinstance(latest, _Layered) else _Layered.of(latest or {})

    @property
    def runs(self) -> frozenset[str]:
        return frozenset(self._runs.items())

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(self._tenants.items())

    def killed(self, run_id: str, tenant: str) -> bool:
        return self.everything or run_id in self._runs or tenant in self._tenants

    def __bool__(self) -> bool:
        return self.everything or bool(self._runs.size) or bool(self._tenants.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KillSwitches):
            return NotImplemented
        mine = (self.runs, self.tenants, self.everything, self.latest.items())
        return mine == (other.runs, other.tenants, other.everything, other.latest.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        def names(layer: _Layered) -> str:
            shown = sorted(layer.items())[:10]
            return repr(shown)[:-1] + (f", ... {layer.size} in all]" if layer.size > 10 else "]")

        return (
            f"KillSwitches(runs={names(self._runs)}, tenants={names(self._tenants)}, "
            f"everything={self.everything})"
        )


NO_KILLS = KillSwitches()


def apply_control(
    kills: KillSwitches,
    event: KillSwitch | KillSwitchReleased,
    policy: Policy,
    now: datetime,
    origin: Origin = NO_ORIGIN,
) -> tuple[KillSwitches, Decision]:
    """Apply a kill switch (or its release) and return the control record for the audit.

    With ``operators`` in the policy, only a command signed by a listed operator counts, and
    only if it is newer than the last one applied to the same target (a replayed release
    cannot lift a later kill). A refused command changes nothing and is recorded with why.
    """
    on = isinstance(event, KillSwitch)
    target = {"run": event.run_id, "tenant": event.tenant, "global": "*"}[event.scope] or "*"
    slot = f"{event.scope}:{target}"
    refused = command_refused(event, policy, kills.latest.get(slot), now)
    reason: str = Reason.KILL_SWITCH if on else Reason.KILL_SWITCH_RELEASED
    detail = f"scope={event.scope} target={target} reason={event.reason}"
    if refused is not None:
        reason, why = refused
        detail = f"{detail}; refused: {why}"
    else:
        runs, tenants, everything = kills._runs, kills._tenants, kills.everything
        if event.scope == "run":
            runs = runs.put(event.run_id or "", 1 if on else _GONE)
        elif event.scope == "tenant":
            tenants = tenants.put(event.tenant or "", 1 if on else _GONE)
        else:
            everything = on
        latest, at = kills.latest, applied_time(event, now)
        if at is not None:
            latest = latest.put(slot, at)
        kills = KillSwitches(runs, tenants, everything, latest)
    request_id = f"{event.type}:{event.scope}:{target}:{event.event_time.isoformat()}"
    if refused is not None:
        # its own id: a forged copy of a real command must not replace the real one's record
        request_id = refused_command_id(request_id, event)
    return kills, _control_record(
        request_id,
        event.run_id or "*",
        event.tenant or "*",
        reason,
        event,
        policy,
        now,
        origin,
        detail,
    )


def command_refused(
    event: KillSwitch | KillSwitchReleased | PolicyUpdated,
    policy: Policy,
    latest: float | None = None,
    now: datetime | None = None,
) -> tuple[Reason, str] | None:
    """Why an operator's command does not count under ``policy`` (None: it does).

    Without ``operators`` in the policy every command counts (names are trusted: keep the
    control topic's ACL tight, docs/security.md). ``latest``: the event time of the newest
    command applied to the same target; an older one is a replay. ``now``: the worker's
    clock; a command signed more than CONTROL_CLOCK_SKEW_S after it is refused. Applied, its
    time would become ``latest``, and every command the operators sign before that time (a
    kill after a release signed on a clock a year ahead) would be refused as a replay.
    """
    if not policy.operators:
        return None
    if not event.signature:
        return Reason.CONTROL_UNSIGNED, "operators is set: only signed commands count"
    text = policy.operators.get(event.operator)
    if text is None:
        return Reason.UNKNOWN_OPERATOR, f"{event.operator} is not in operators"
    if type(event) is PolicyUpdated:
        sha = policy_hash(event.policy_yaml)
        if event.policy_sha is not None and event.policy_sha != sha:
            return Reason.BAD_SIGNATURE, "policy_sha is not the hash of policy_yaml"
        payload = control_payload(
            event.type, "global", "*", event.operator, "", event.event_time, sha
        )
    else:
        # not a PolicyUpdated (mypy does not narrow the else of a `type(x) is` test)
        switch: KillSwitch | KillSwitchReleased = event  # type: ignore[assignment]
        target = {"run": switch.run_id, "tenant": switch.tenant, "global": "*"}[switch.scope] or "*"
        payload = control_payload(
            switch.type, switch.scope, target, switch.operator, switch.reason, switch.event_time
        )
    if not verify(parse_public_key(text), payload, event.signature):
        return Reason.BAD_SIGNATURE, f"the signature is not {event.operator}'s over this command"
    if now is not None and event.event_time.timestamp() > now.timestamp() + CONTROL_CLOCK_SKEW_S:
        return Reason.SIGNATURE_EXPIRED, "signed in the future (check the operator's clock)"
    if latest is not None and event.event_time.timestamp() <= latest:
        return (
            Reason.CONTROL_REPLAYED,
            "signed no later than a command already applied to the same target (a replay)",
        )
    return None


def policy_update_record(
    event: PolicyUpdated,
    before: Policy,
    after: Policy | None,
    now: datetime,
    origin: Origin = NO_ORIGIN,
    refused: tuple[str, str] | None = None,
) -> Decision:
    """The audit record of a policy update: who, the policy hashes before and after, or why
    it was refused (``after`` None)."""
    request_id = (
        f"{event.type}:{policy_hash(event.policy_yaml)[:16]}:{event.event_time.isoformat()}"
    )
    if refused is not None:
        reason, detail = refused[0], f"refused: {refused[1]}; policy in force {before.version}"
        request_id = refused_command_id(request_id, event)
    else:
        assert after is not None
        reason, detail = Reason.POLICY_UPDATED, f"policy {before.version} -> {after.version}"
    return _control_record(
        request_id, "*", "*", reason, event, after or before, now, origin, detail
    )


@dataclass(frozen=True, slots=True)
class PolicyStep:
    """The policy in force after one ``policy_updated`` event, and what to publish about it."""

    policy: Policy
    #: event time of the last update applied (a later one must be newer: applied_time)
    signed_at: float | None
    #: the audit record (applied or refused); None when the text is not a valid policy
    record: Decision | None
    #: why the text is not a valid policy (the event's dead letter)
    error: str | None = None

    @property
    def applied(self) -> bool:
        return self.record is not None and self.record.reason == Reason.POLICY_UPDATED


def apply_policy_update(
    policy: Policy,
    signed_at: float | None,
    event: PolicyUpdated,
    now: datetime,
    origin: Origin = NO_ORIGIN,
    source: str = "policy_updated",
) -> PolicyStep:
    """One policy update, verified against the policy in force (its ``operators``): the
    workers' control follower and `baton policy current` fold the control topic with it."""
    refused = command_refused(event, policy, signed_at, now)
    if refused is not None:
        return PolicyStep(
            policy, signed_at, policy_update_record(event, policy, None, now, origin, refused)
        )
    try:
        new = parse_policy(event.policy_yaml, source)
    except PolicyError as exc:
        return PolicyStep(policy, signed_at, None, str(exc))
    at = applied_time(event, now)
    signed_at = signed_at if at is None else at
    return PolicyStep(new, signed_at, policy_update_record(event, policy, new, now, origin))


def applied_time(
    event: KillSwitch | KillSwitchReleased | PolicyUpdated, now: datetime
) -> float | None:
    """The time an applied command leaves behind (None: the one before stays): a command of
    the same target (any policy update, for one) no later than it is a replay, once
    operators are listed.

    Kept also while no operators are listed (every command counts then): only times kept
    under operators were, so once a policy brought them in, a signed update or release from
    before it, replayed, was newer than nothing and counted (a policy without operators back
    in force; a kill engaged before lifted). Not a time past the clock skew, which nothing
    checks while no operators are listed: a release dated a year ahead would make the
    operators' kills replays (under operators such a command is refused)."""
    at = event.event_time.timestamp()
    return None if at > now.timestamp() + CONTROL_CLOCK_SKEW_S else at


def _event_digest(event: KillSwitch | KillSwitchReleased | PolicyUpdated) -> str:
    h = _DIGEST.copy()
    h.update(event.to_json())
    return h.hexdigest()


def _control_record(
    request_id: str,
    run_id: str,
    tenant: str,
    reason: str,
    event: KillSwitch | KillSwitchReleased | PolicyUpdated,
    policy: Policy,
    now: datetime,
    origin: Origin,
    detail: str,
) -> Decision:
    return Decision(
        decision_id=decision_id_for(run_id, request_id, Phase.CONTROL),
        request_id=request_id,
        run_id=run_id,
        tenant=tenant,
        phase=Phase.CONTROL,
        outcome=Outcome.RECORDED,
        reason=reason,
        approver=event.operator,
        policy_version=policy.version,
        event_time=event.event_time,
        decided_at=now,
        worker=origin.worker,
        partition=origin.partition,
        offset=origin.offset,
        detail=detail,
    )


def refused_command_id(
    request_id: str, event: KillSwitch | KillSwitchReleased | PolicyUpdated
) -> str:
    """The ``request_id`` of the record that refuses a command whose own would be
    ``request_id`` (its own id: a forged copy never replaces the real command's record)."""
    return f"{request_id}:refused:{_event_digest(event)}"
