"""Approvers and operators: signed answers to approvals, kill switches and policy updates.

An approver or operator holds an Ed25519 private key (``baton keys new``); the policy lists its
public key (``multi_agent.approval.keys``, top-level ``operators``). Given ``key=`` (or
``key_file=``), the clients sign every answer and command inside
(``baton.schemas.signing``): what is signed is fixed there, for signer and verifier alike, so
a caller never builds a payload. The event's ``event_time`` is the signing time.

Waiting: with ``wait=True`` a call returns the worker's record of *this* answer or command,
either the one it applied or the one it refused with (outcome ``recorded``, the reason says
why: ``bad_signature``, ``approval_unsigned``, ``control_replayed`` …). Not guaranteed: an
answer that arrives at the worker after the caller gave up is decided all the same; with
several workers the record comes from the first one that applied a control command.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# the worker names a refused answer's (or command's) record after the whole event: the same
# functions give the waiter that name, so it cannot drift from the engine's
from baton.processors.engine import refused_answer_id, refused_command_id
from baton.schemas.decision import Decision, Phase
from baton.schemas.errors import BrokerUnavailable
from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    KillSwitch,
    KillSwitchReleased,
    PolicyUpdated,
)
from baton.schemas.signing import (
    approval_payload,
    control_payload,
    load_private_key,
    policy_hash,
    sign,
)
from baton.streams.client_base import ClientBase
from baton.streams.client_transport import Unanswered, Waiter, WaitKey

__all__ = ["MAX_POLICY_UPDATE_BYTES", "ApproverClient", "OperatorClient"]

#: a policy is a few KB; a record must stay well under Kafka's ~1 MB message limit, or the
#: broker refuses it and no worker ever answers
MAX_POLICY_UPDATE_BYTES = 512 * 1024


class _Publisher(ClientBase):
    """Blocking publish-and-confirm, with an optional signing key, for both clients."""

    def __init__(
        self,
        bootstrap: str | None = None,
        *,
        key: Ed25519PrivateKey | None = None,
        key_file: str | Path | None = None,
        **options: Any,
    ) -> None:
        if key is not None and key_file is not None:
            raise ValueError("give key= or key_file=, not both")
        if key is not None and not isinstance(key, Ed25519PrivateKey):
            raise TypeError(f"key: expected an Ed25519PrivateKey, got {type(key).__name__}")
        # read before connecting: a key others can read is refused (SigningKeyError)
        self.key = load_private_key(key_file) if key_file is not None else key
        super().__init__(bootstrap, **options)

    def __enter__(self) -> Any:
        self.transport.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        self.transport.close(timeout)

    def _confirm(self, what: str) -> None:
        # a grant or a kill switch that silently stays in a local queue is worse than an error
        left = self.transport.flush(self.options.connect_timeout_s)
        error = self.transport.last_delivery_error()
        if left:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {self.bootstrap} to publish {what} "
                f"({error or f'not acknowledged within {self.options.connect_timeout_s:g} s'})"
                "; is the broker running?"
            )

    def _signature(self, payload: Callable[[], bytes], given: str | None = None) -> str | None:
        """The client key's signature over ``payload()``; without a key, ``given`` (if any)."""
        if self.key is None:
            return given
        if given is not None:
            raise ValueError("give signature= or a client key, not both")
        return sign(self.key, payload())

    def _send_and_wait(
        self,
        topic: str,
        key: bytes,
        raw: bytes,
        run_id: str,
        waits: list[WaitKey],
        what: str,
        timeout: float | None,
        ours: Callable[[Decision], bool] | None = None,
    ) -> Decision:
        """Publish ``raw`` and return the first decision under one of ``waits`` that
        ``ours`` (a predicate; None: any) accepts as the answer to it."""
        t = self.transport
        futures: list[concurrent.futures.Future[Any]] = [concurrent.futures.Future() for _ in waits]
        waiters = [Waiter(f) for f in futures]
        # every key is awaited before the record can be produced (submit may produce at once)
        for wait_key, waiter in zip(waits[1:], waiters[1:], strict=True):
            t.register(wait_key, waiter)
        t.submit(
            topic,
            key,
            raw,
            decisions_partition=t.partition_of(run_id),
            wait_key=waits[0],
            waiter=waiters[0],
        )
        wait_s = self.options.timeout_s if timeout is None else timeout
        deadline = time.monotonic() + wait_s
        pending = set(futures)
        try:
            while pending:
                done, pending = concurrent.futures.wait(
                    pending, max(deadline - time.monotonic(), 0), return_when="FIRST_COMPLETED"
                )
                if not done:
                    break
                for future in done:
                    result = future.result()
                    if isinstance(result, Unanswered):
                        raise BrokerUnavailable(f"{what}: {result.detail}")
                    if ours is None or ours(result):
                        return result  # type: ignore[no-any-return]
            self._confirm(what)
            error = t.last_delivery_error()
            raise BrokerUnavailable(
                f"{what} was published to Kafka at {self.bootstrap}, but no worker answered "
                f"it within {wait_s:g} s; is a worker running?"
                + (f" (last Kafka error: {error})" if error else "")
            )
        finally:
            for wait_key, waiter in zip(waits, waiters, strict=True):
                t.unregister(wait_key, waiter)


class ApproverClient(_Publisher):
    """Grants or denies approvals (``approval_required`` decisions) on ``gov.approvals``.

    ``ApproverClient(bootstrap, key=…)`` or ``key_file="finance_lead.key"`` signs every answer
    as the ``approver`` it names (required when the policy lists ``approval.keys``). The
    signature covers the approval id, the run, the request's digest (``request_digest`` of the
    pending decision), the verdict, the approver and the time, so it answers this request only.

    ``grant``/``deny`` return once Kafka has the answer; with ``wait=True`` they return the
    worker's ``approval``-phase record of it: ``allow approval_granted`` / ``stop
    approval_denied`` when it counted, ``recorded`` with the reason when it was refused
    (unsigned, bad signature, unknown approver, self or beneficiary approval, no such pending
    approval …; the approval then stays pending). The orchestrator's ``wait_for_approval`` gets
    the decision either way.
    """

    def grant(
        self,
        pending: Decision,
        *,
        approver: str,
        comment: str | None = None,
        signature: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Decision | None:
        return self._answer(ApprovalGranted, pending, approver, comment, signature, wait, timeout)

    def deny(
        self,
        pending: Decision,
        *,
        approver: str,
        comment: str | None = None,
        signature: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Decision | None:
        return self._answer(ApprovalDenied, pending, approver, comment, signature, wait, timeout)

    def publish(
        self,
        event: ApprovalGranted | ApprovalDenied,
        *,
        wait: bool = False,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Decision | None:
        """Publish an answer built (and signed) by hand. ``wait`` needs the handoff's
        ``request_id`` (the key of the decision that applies the answer)."""
        t = self.transport
        t.connect()
        what = f"the {event.type} for {event.approval_id}"
        raw = event.to_json()
        if not wait:
            t.submit(
                t.catalog.approvals,
                event.run_id.encode(),
                raw,
                decisions_partition=t.partition_of(event.run_id),
                needs_reply=False,
            )
            self._confirm(what)
            return None
        if request_id is None:
            raise ValueError("publish(wait=True) needs request_id= (the handoff's request id)")
        # the worker decides the event as it parsed it: name the waits after that copy
        parsed = type(event).model_validate_json(raw)
        phase = str(Phase.APPROVAL)
        waits = [
            (event.run_id, request_id, phase),
            (event.run_id, refused_answer_id(parsed), phase),
        ]

        def ours(d: Decision) -> bool:
            # the handoff's approval record names who answered it and when: another
            # approver's answer may have resolved it first (ours is then refused: wait on)
            return d.request_id != request_id or (
                d.approver == parsed.approver and d.event_time == parsed.event_time
            )

        return self._send_and_wait(
            t.catalog.approvals,
            event.run_id.encode(),
            raw,
            event.run_id,
            waits,
            what,
            timeout,
            ours,
        )

    def _answer(
        self,
        cls: type[ApprovalGranted] | type[ApprovalDenied],
        pending: Decision,
        approver: str,
        comment: str | None,
        signature: str | None,
        wait: bool,
        timeout: float | None,
    ) -> Decision | None:
        if not pending.approval_id:
            raise ValueError(
                f"decision {pending.decision_id} has no approval_id (outcome {pending.outcome}); "
                "only approval_required decisions can be granted or denied"
            )
        if self.key is not None and not pending.request_digest:
            raise ValueError(
                f"decision {pending.decision_id} has no request_digest: a signature must name "
                "the request it answers (was it decided by a worker that predates signing?)"
            )
        now = datetime.now(UTC)
        verdict = "deny" if cls is ApprovalDenied else "grant"
        signature = self._signature(
            lambda: approval_payload(
                pending.approval_id or "",
                pending.run_id,
                pending.request_digest or "",
                verdict,
                approver,
                now,
            ),
            signature,
        )
        event = cls(
            approval_id=pending.approval_id,
            run_id=pending.run_id,
            tenant=pending.tenant,
            approver=approver,
            comment=comment,
            signature=signature,
            request_digest=pending.request_digest,
            event_time=now,
        )
        return self.publish(event, wait=wait, timeout=timeout, request_id=pending.request_id)


class OperatorClient(_Publisher):
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
        size = len(policy_yaml.encode())
        if size > MAX_POLICY_UPDATE_BYTES:
            raise ValueError(
                f"policy_yaml: {size} bytes, at most {MAX_POLICY_UPDATE_BYTES} can be published"
            )
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
        if sum(x is not None and x is not False for x in (run_id, tenant, everything or None)) != 1:
            raise ValueError("give exactly one of run_id=, tenant=, everything=True")
        scope: Literal["run", "tenant", "global"] = (
            "run" if run_id else "tenant" if tenant else "global"
        )
        target = run_id or tenant or "*"
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
        # the worker names its record after the event as it parsed it, and keys it by the
        # run_id ("*" for a tenant or global switch): wait for exactly that record
        parsed = cls.model_validate_json(event.to_json())
        request_id = f"{event.type}:{scope}:{target}:{parsed.event_time.isoformat()}"
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
        t = self.transport
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
