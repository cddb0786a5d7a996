"""The operator's client: kill switches, releases and policy updates, signed, on gov.control."""

from __future__ import annotations

import logging
import unicodedata
from datetime import UTC, datetime
from typing import Literal

# the worker names a refused command's record after the whole event: the same function gives
# the waiter that name, so it cannot drift from the engine's
from baton.processors.engine import refused_command_id
from baton.schemas.decision import Decision, Phase
from baton.schemas.events import MAX_EVENT_BYTES, KillSwitch, KillSwitchReleased, PolicyUpdated
from baton.schemas.signing import control_payload, policy_hash
from baton.streams.sdk.publisher import SignedPublisher

__all__ = ["MAX_POLICY_UPDATE_BYTES", "OperatorClient", "policy_update_problem", "run_id_doubt"]

log = logging.getLogger("baton.client")

#: a policy is a few KB; a worker reads a control record as an event of at most
#: MAX_EVENT_BYTES and dead-letters a longer one unanswered (512 KiB were taken here: an 88 KB
#: policy was published, never applied, and the operator's command waited out its timeout)
MAX_POLICY_UPDATE_BYTES = MAX_EVENT_BYTES


def policy_update_problem(policy_yaml: str, operator: str) -> str | None:
    """Why no worker would read the update publishing ``policy_yaml`` (None: one would): its
    event, signed and timed (the longest signature and time), past MAX_EVENT_BYTES."""
    now = datetime.now(UTC).replace(microsecond=1)  # a time written with its fraction
    probe = PolicyUpdated(
        policy_yaml=policy_yaml,
        operator=operator,
        policy_sha=policy_hash(policy_yaml),
        signature="A" * 88,
        event_time=now,
    )
    size = len(probe.to_json())
    if size <= MAX_EVENT_BYTES:
        return None
    return (
        f"the policy update is {size:,} bytes as an event (its YAML escaped in JSON) and a "
        f"worker reads at most {MAX_EVENT_BYTES:,} (a longer one is dead-lettered unanswered): "
        "shorten the policy (tenants inherit every key they do not set)"
    )


def run_id_doubt(run_id: str) -> str | None:
    """Why a kill of ``run_id`` may miss the run its operator means (None: no doubt). A run
    id is compared exactly, and a worker answers a kill of an id no run has like any other
    (a run may start later): "é" pasted as e + U+0301 (NFD, as some terminals and file
    systems give it), or a space pasted at an end, killed nothing, silently (session 29)."""
    if unicodedata.normalize("NFC", run_id) != run_id:
        return (
            "the run id is not in Unicode NFC form (a letter and its accent written apart, "
            "as some terminals and file systems give them): run ids are compared exactly, so "
            "this switch holds a run of exactly this id, not one written in NFC"
        )
    if run_id != run_id.strip():
        return (
            "the run id begins or ends with white space: run ids are compared exactly, so this "
            "switch holds a run of exactly this id"
        )
    return None


class OperatorClient(SignedPublisher):
    """Kill switches and policy updates on ``gov.control``, like ``baton kill`` and ``baton
    policy publish``.

    ``OperatorClient(bootstrap, key=…)`` or ``key_file="oncall.key"`` signs every command as the
    ``operator`` it names (required when the policy lists ``operators``). With ``wait=True``
    (the default) a call returns the worker's ``control`` record once the command was applied
    (reason ``kill_switch``, ``kill_switch_released``, ``policy_updated``) or refused (outcome
    ``recorded``, reason ``control_unsigned``, ``unknown_operator``, ``bad_signature``,
    ``control_replayed``; nothing changed). With several workers that record comes from the
    first one; the others follow within a poll.
    """

    def kill(
        self,
        *,
        run_id: str | None = None,
        tenant: str | None = None,
        everything: bool = False,
        operator: str = "operator",
        reason: str = "",
        wait: bool = True,
        timeout: float | None = None,
    ) -> Decision | None:
        return self._switch(KillSwitch, run_id, tenant, everything, operator, reason, wait, timeout)

    def release(
        self,
        *,
        run_id: str | None = None,
        tenant: str | None = None,
        everything: bool = False,
        operator: str = "operator",
        reason: str = "",
        wait: bool = True,
        timeout: float | None = None,
    ) -> Decision | None:
        return self._switch(
            KillSwitchReleased, run_id, tenant, everything, operator, reason, wait, timeout
        )

    def publish_policy(
        self,
        policy_yaml: str,
        *,
        operator: str = "operator",
        wait: bool = True,
        timeout: float | None = None,
    ) -> Decision | None:
        """Publish ``policy_yaml`` to every worker (hot reload), signed with its SHA-256.

        Validate it first (``baton.schemas.policy.parse_policy``): a worker dead-letters a
        policy it cannot parse, and no record answers it."""
        problem = policy_update_problem(policy_yaml, operator)
        if problem is not None:
            raise ValueError(f"policy_yaml: {problem}")
        now = datetime.now(UTC)
        sha = policy_hash(policy_yaml)
        event = PolicyUpdated(
            policy_yaml=policy_yaml,
            operator=operator,
            policy_sha=sha,
            signature=self._signature(
                lambda: control_payload("policy_updated", "global", "*", operator, "", now, sha)
            ),
            event_time=now,
        )
        parsed = PolicyUpdated.model_validate_json(event.to_json())
        request_id = f"{event.type}:{sha[:16]}:{parsed.event_time.isoformat()}"
        return self._command(
            event, "*", request_id, parsed, f"the policy update {sha[:12]}", wait, timeout
        )

    def _switch(
        self,
        cls: type[KillSwitch] | type[KillSwitchReleased],
        run_id: str | None,
        tenant: str | None,
        everything: bool,
        operator: str,
        reason: str,
        wait: bool,
        timeout: float | None,
    ) -> Decision | None:
        if not isinstance(everything, bool):
            # everything="false" (a flag read as text) with no run or tenant was taken as true:
            # a global kill, or the global kill switch lifted
            raise ValueError(f"everything: must be True or False, got {everything!r}"[:200])
        if sum(x is not None and x is not False for x in (run_id, tenant, everything or None)) != 1:
            raise ValueError("give exactly one of run_id=, tenant=, everything=True")
        scope: Literal["run", "tenant", "global"] = (
            "run" if run_id else "tenant" if tenant else "global"
        )
        target = run_id or tenant or "*"
        doubt = run_id_doubt(run_id) if run_id else None
        if doubt is not None:
            log.warning(
                "the %s for run %r: %s", cls.model_fields["type"].default, run_id[:80], doubt
            )
        now = datetime.now(UTC)
        event_type = cls.model_fields["type"].default
        event = cls(
            scope=scope,
            run_id=run_id,
            tenant=tenant,
            operator=operator,
            reason=reason,
            signature=self._signature(
                lambda: control_payload(event_type, scope, target, operator, reason, now)
            ),
            event_time=now,
        )
        # the worker names its record after the event as it parsed it (a tenant folded:
        # "ACME" is acme), and keys it by the run_id ("*" for a tenant or global switch):
        # wait for exactly that record
        parsed = cls.model_validate_json(event.to_json())
        request_id = f"{event.type}:{scope}:{parsed.target}:{parsed.event_time.isoformat()}"
        what = f"the {event.type} for {scope} {target}"
        return self._command(event, run_id or "*", request_id, parsed, what, wait, timeout)

    def _command(
        self,
        event: KillSwitch | KillSwitchReleased | PolicyUpdated,
        record_run: str,
        request_id: str,
        parsed: KillSwitch | KillSwitchReleased | PolicyUpdated,
        what: str,
        wait: bool,
        timeout: float | None,
    ) -> Decision | None:
        t = self.channel
        t.connect()
        raw = event.to_json()
        key = (event.target if not isinstance(event, PolicyUpdated) else "*").encode()
        if not wait:
            t.publish(t.catalog.control, key, raw)
            self._confirm(what)
            return None
        phase = str(Phase.CONTROL)
        # applied: the record named after the command; refused: its own name, which adds the
        # whole event's digest (a forged copy never replaces the real command's record)
        waits = [
            (record_run, request_id, phase),
            (record_run, refused_command_id(request_id, parsed), phase),
        ]
        return self._send_and_wait(t.catalog.control, key, raw, record_run, waits, what, timeout)
