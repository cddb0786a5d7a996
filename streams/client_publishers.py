"""Approvers and operators: grant or deny approvals, engage or release kill switches."""

from __future__ import annotations

import concurrent.futures
from datetime import UTC, datetime
from typing import Any, Literal

from baton.schemas.decision import Decision, Phase
from baton.schemas.errors import BrokerUnavailable
from baton.schemas.events import ApprovalDenied, ApprovalGranted, KillSwitch, KillSwitchReleased
from baton.streams.client_base import ClientBase
from baton.streams.client_transport import Unanswered, Waiter

__all__ = ["ApproverClient", "OperatorClient"]


class _Publisher(ClientBase):
    """Blocking publish-and-confirm for the approver and operator clients."""

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


class ApproverClient(_Publisher):
    """Grants or denies approvals (``approval_required`` decisions) on ``gov.approvals``.

    ``grant``/``deny`` return once Kafka has the event; the orchestrator's
    ``wait_for_approval`` then gets the resulting decision. The approver must not be the
    agent that asked for the handoff (Baton records such a grant as ``self_approval`` and
    keeps the approval pending).
    """

    def grant(
        self,
        pending: Decision,
        *,
        approver: str,
        comment: str | None = None,
        signature: str | None = None,
    ) -> None:
        self._answer(ApprovalGranted, pending, approver, comment, signature)

    def deny(
        self,
        pending: Decision,
        *,
        approver: str,
        comment: str | None = None,
        signature: str | None = None,
    ) -> None:
        self._answer(ApprovalDenied, pending, approver, comment, signature)

    def publish(self, event: ApprovalGranted | ApprovalDenied) -> None:
        """Publish an answer built by hand (when only the approval_id and run_id are known)."""
        t = self.transport
        t.connect()
        t.submit(
            t.catalog.approvals,
            event.run_id.encode(),
            event.to_json(),
            decisions_partition=t.partition_of(event.run_id),
            needs_reply=False,
        )
        self._confirm(f"{event.type} for {event.approval_id}")

    def _answer(
        self,
        cls: type[ApprovalGranted] | type[ApprovalDenied],
        pending: Decision,
        approver: str,
        comment: str | None,
        signature: str | None,
    ) -> None:
        if not pending.approval_id:
            raise ValueError(
                f"decision {pending.decision_id} has no approval_id (outcome {pending.outcome}); "
                "only approval_required decisions can be granted or denied"
            )
        self.publish(
            cls(
                approval_id=pending.approval_id,
                run_id=pending.run_id,
                tenant=pending.tenant,
                approver=approver,
                comment=comment,
                signature=signature,
                event_time=datetime.now(UTC),
            )
        )


class OperatorClient(_Publisher):
    """Kill switches on ``gov.control``, like ``baton kill``: a run, a tenant, or everything.

    With ``wait=True`` (the default) ``kill``/``release`` return the control record once a
    worker has applied the switch, so a check published afterwards is decided under it. With
    several workers that record comes from the first one; the others follow within a poll.
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
        event = cls(
            scope=scope,
            run_id=run_id,
            tenant=tenant,
            operator=operator,
            reason=reason,
            event_time=datetime.now(UTC),
        )
        t = self.transport
        t.connect()
        raw = event.to_json()
        what = f"the {event.type} for {scope} {event.target}"
        if not wait:
            t.publish(t.catalog.control, event.target.encode(), raw)
            self._confirm(what)
            return None
        # the worker names its record after the event as it parsed it, and keys it by the
        # run_id ("*" for a tenant or global switch): wait for exactly that record
        parsed = cls.model_validate_json(raw)
        request_id = f"{event.type}:{scope}:{event.target}:{parsed.event_time.isoformat()}"
        wait_key = (run_id or "*", request_id, str(Phase.CONTROL))
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        waiter = Waiter(future)
        # published once the record's decisions partition is assigned (so it cannot be missed)
        t.submit(
            t.catalog.control,
            event.target.encode(),
            raw,
            decisions_partition=t.partition_of(run_id or "*"),
            wait_key=wait_key,
            waiter=waiter,
        )
        wait_s = self.options.timeout_s if timeout is None else timeout
        try:
            result = future.result(wait_s)
        except TimeoutError:
            self._confirm(what)
            raise BrokerUnavailable(
                f"{what} was published to Kafka at {self.bootstrap}, but no worker confirmed "
                f"it within {wait_s:g} s; is a worker running?"
            ) from None
        finally:
            t.unregister(wait_key, waiter)
        if isinstance(result, Unanswered):
            raise BrokerUnavailable(f"{what}: {result.detail}")
        return result  # type: ignore[no-any-return]
