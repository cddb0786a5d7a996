"""The approver's client: grants and denials of pending approvals, signed, on gov.approvals."""

from __future__ import annotations

from datetime import UTC, datetime

# the worker names a refused answer's record after the whole event: the same function gives
# the waiter that name, so it cannot drift from the engine's
from baton.processors.approvals import request_problem
from baton.processors.engine import refused_answer_id
from baton.schemas.decision import Decision, Phase
from baton.schemas.events import ApprovalDenied, ApprovalGranted
from baton.schemas.signing import approval_payload
from baton.streams.sdk.options import checked_seconds
from baton.streams.sdk.publisher import SignedPublisher

__all__ = ["ApproverClient"]


class ApproverClient(SignedPublisher):
    """Grants or denies approvals (``approval_required`` decisions) on ``gov.approvals``.

    ``ApproverClient(bootstrap, key=…)`` or ``key_file="finance_lead.key"`` signs every answer
    as the ``approver`` it names (required when the policy lists ``approval.keys``). The
    signature covers the approval id, the run, the request's digest (``request_digest`` of the
    pending decision), the verdict, the approver and the time, so it answers this request only.

    ``grant``/``deny`` return once Kafka has the answer; with ``wait=True`` they return the
    worker's ``approval``-phase record of it: ``allow approval_granted`` / ``stop
    approval_denied`` when it counted, ``recorded`` with the reason when it was refused
    (unsigned, bad signature, unknown approver, self or beneficiary approval, no such pending
    approval …; the approval then stays pending). An answer to an approval answered already
    returns the record of the answer that counted: its ``approver`` (and ``event_time``) are
    not this answer's. The orchestrator's ``wait_for_approval`` gets the decision either way.
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
        t = self.channel
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
            # the first answer of an approval wins: an answer after it is answered with that
            # record (another approver's, or ours of earlier), never with a refusal, so that
            # record is this answer's (returned: its approver and time say whose it was);
            # another request's approval under the same run and request id is not
            return d.request_id != request_id or d.approval_id == parsed.approval_id

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
        if wait and timeout is not None:  # the caller's arguments first, then the decision
            checked_seconds("timeout", timeout)
        if not pending.approval_id:
            raise ValueError(
                f"decision {pending.decision_id} has no approval_id (outcome {pending.outcome}); "
                "only approval_required decisions can be granted or denied"
            )
        # every decision, with its input or not: a forged one without it showed a harmless
        # handoff and carried another's approval id and digest, which was signed (session 17)
        problem = request_problem(pending) if pending.input else "no recorded request (input)"
        if problem is not None:  # what is signed must be what the caller was shown
            raise ValueError(
                f"decision {pending.decision_id} does not hold together ({problem}): not answered"
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
