"""The orchestrator client SDK: ask Baton before a handoff, report after it, wait for approvals.

    from baton.streams.client import GovernanceClient

    with GovernanceClient("127.0.0.1:9092") as gov:
        decision = gov.check(handoff)            # HandoffRequested -> Decision (pre_handoff)
        if decision.outcome == "approval_required":
            decision = gov.wait_for_approval(decision)
        if decision.outcome == "allow":
            ...                                  # delegate the task
            gov.report(completed)                # HandoffCompleted -> Decision (post_handoff)
        else:
            ...                                  # decision.fallback: single_agent | constrained
        gov.finish(run_id)

``AsyncGovernanceClient`` is the same API for asyncio (``await gov.check(...)``; thousands of
checks may be in flight at once). ``ApproverClient`` grants and denies approvals,
``OperatorClient`` engages and releases kill switches.

Guarantees: a call that gets no decision within its timeout *fails closed*: it returns a
``stop`` with reason ``governance_unavailable`` and the configured fallback (``allow`` only
with ``fail_open=True``); it never raises for a slow or absent worker. Retries re-publish the
same ``request_id``, which Baton answers from its record: the same ``decision_id``, counted
once. Not guaranteed: a request answered after its timeout is still decided by Baton (and
counts against the run); an unreachable broker *at connect time* raises ``BrokerUnavailable``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

from baton.schemas.decision import Decision, Fallback, Outcome, Phase
from baton.schemas.errors import BrokerUnavailable
from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    HandoffCompleted,
    HandoffRequested,
    KillSwitch,
    KillSwitchReleased,
    RunFinished,
)
from baton.schemas.settings import Settings
from baton.streams.client_options import ClientOptions, ClientSettings, unanswered_decision
from baton.streams.client_transport import Transport, Unanswered, Waiter, WaitKey

__all__ = [
    "ApproverClient",
    "AsyncGovernanceClient",
    "ClientSettings",
    "GovernanceClient",
    "OperatorClient",
]

#: an approval's expiry is enforced by the worker's sweep (every second): wait a bit past it
_EXPIRY_GRACE_S = 5.0


class _ClientBase:
    """Options, the transport and the request -> decision bookkeeping both flavours share."""

    def __init__(
        self,
        bootstrap: str | None = None,
        *,
        settings: Settings | None = None,
        topic_prefix: str | None = None,
        partitions: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        fail_open: bool | None = None,
        fallback: Fallback | str | None = None,
        connect_timeout: float | None = None,
        kafka_config: Mapping[str, Any] | None = None,
        client_id: str = "baton-client",
    ) -> None:
        self.options = ClientOptions.resolve(
            bootstrap,
            settings=settings,
            topic_prefix=topic_prefix,
            partitions=partitions,
            timeout=timeout,
            retries=retries,
            fail_open=fail_open,
            fallback=fallback,
            connect_timeout=connect_timeout,
            kafka_config=kafka_config,
            client_id=client_id,
        )
        self.transport = Transport(self.options)

    @property
    def bootstrap(self) -> str:
        return self.options.bootstrap

    def _request(
        self, event: HandoffRequested | HandoffCompleted
    ) -> tuple[str, bytes, bytes, int, WaitKey, Phase]:
        phase = Phase.PRE_HANDOFF if isinstance(event, HandoffRequested) else Phase.POST_HANDOFF
        return (
            self.transport.catalog.requests,
            event.run_id.encode(),
            event.to_json(),
            self.transport.partition_of(event.run_id),
            (event.request_id, str(phase)),
            phase,
        )

    def _unanswered(
        self,
        event: HandoffRequested | HandoffCompleted | Decision,
        phase: Phase,
        detail: str,
        *,
        fail_open: bool | None = None,
    ) -> Decision:
        if isinstance(event, HandoffRequested):
            extra: dict[str, Any] = dict(
                from_agent=event.from_agent,
                to_agent=event.to_agent,
                task_id=event.task_id,
                parent_task_id=event.parent_task_id,
                action=event.action,
                tool=event.tool,
                event_time=event.event_time,
            )
        elif isinstance(event, HandoffCompleted):
            extra = dict(
                to_agent=event.agent,
                task_id=event.task_id,
                tool_calls=event.tool_calls,
                handoff_status=event.status,
                event_time=event.event_time,
            )
        else:
            extra = dict(
                from_agent=event.from_agent,
                to_agent=event.to_agent,
                task_id=event.task_id,
                parent_task_id=event.parent_task_id,
                action=event.action,
                tool=event.tool,
                approval_id=event.approval_id,
                approval_expires_at=event.approval_expires_at,
                depth=event.depth,
            )
        error = self.transport.last_delivery_error()
        if error:
            detail = f"{detail}; last Kafka error: {error}"
        return unanswered_decision(
            request_id=event.request_id,
            run_id=event.run_id,
            tenant=event.tenant,
            phase=phase,
            fail_open=self.options.fail_open if fail_open is None else fail_open,
            fallback=self.options.fallback,
            detail=detail,
            **extra,
        )

    def _no_decision(self, timeout: float, attempts: int) -> str:
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        return (
            f"no decision from Baton within {timeout:g} s{tries} "
            f"(Kafka at {self.bootstrap}, topic {self.transport.catalog.decisions}); "
            "is a worker running?"
        )

    @staticmethod
    def _approval_wait(decision: Decision, timeout: float | None) -> float:
        if timeout is not None:
            return timeout
        expires = decision.approval_expires_at
        if expires is None:
            return 900.0 + _EXPIRY_GRACE_S
        left = (expires - datetime.now(expires.tzinfo or UTC)).total_seconds()
        return max(left, 0.0) + _EXPIRY_GRACE_S

    def _finish_event(self, run_id: str, tenant: str) -> tuple[str, bytes, bytes, int]:
        event = RunFinished(run_id=run_id, tenant=tenant, event_time=datetime.now(UTC))
        return (
            self.transport.catalog.requests,
            run_id.encode(),
            event.to_json(),
            self.transport.partition_of(run_id),
        )


class GovernanceClient(_ClientBase):
    """Blocking client; safe to share between threads. Use as a context manager, or ``close()``.

    Options (argument, else environment, else default): ``bootstrap`` (BATON_BOOTSTRAP),
    ``topic_prefix`` (BATON_TOPIC_PREFIX), ``partitions`` (BATON_PARTITIONS; checked against
    the broker, taken from it when unset), ``timeout`` seconds per attempt
    (BATON_CLIENT_TIMEOUT_S, 5), ``retries`` (BATON_CLIENT_RETRIES, 0), ``fail_open``
    (BATON_CLIENT_FAIL_OPEN, false), ``fallback`` of a fail-closed stop
    (BATON_CLIENT_FALLBACK, single_agent), ``connect_timeout`` (BATON_CONNECT_TIMEOUT_S, 10),
    SASL/SSL from ``settings`` (BATON_SECURITY_PROTOCOL, BATON_SASL_*), and raw librdkafka
    properties in ``kafka_config``.
    """

    def __enter__(self) -> GovernanceClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Reach Kafka and check Baton's topics; raises ``BrokerUnavailable`` naming the address.

        Called by ``__enter__`` and by the first request; calling it again does nothing.
        """
        self.transport.connect()

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what was published (up to ``timeout`` s) and stop the decision reader.

        Calls still waiting get their timeout answer (``governance_unavailable``) at once.
        """
        self.transport.close(timeout)

    def check(
        self,
        handoff: HandoffRequested,
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Decision:
        """Publish ``handoff`` and return Baton's pre-handoff decision for it.

        ``timeout`` is per attempt; after ``retries`` re-publications of the same request
        without an answer, returns the fail-closed (or fail-open) ``governance_unavailable``
        decision.
        """
        self.connect()
        return self._call(handoff, timeout, retries)

    def report(
        self,
        completed: HandoffCompleted,
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Decision:
        """Publish what a handoff cost; return the post-handoff record (``recorded``, or a
        ``stop shared_budget_exceeded`` when the run's shared budget is now spent)."""
        self.connect()
        return self._call(completed, timeout, retries)

    def _call(
        self,
        event: HandoffRequested | HandoffCompleted,
        timeout: float | None,
        retries: int | None,
    ) -> Decision:
        timeout = self.options.timeout_s if timeout is None else timeout
        retries = self.options.retries if retries is None else retries
        topic, key, value, partition, wait_key, phase = self._request(event)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        waiter = Waiter(future)
        t = self.transport
        t.submit(topic, key, value, decisions_partition=partition, wait_key=wait_key, waiter=waiter)
        try:
            for attempt in range(retries + 1):
                if attempt:  # same request_id: Baton answers a retry from its record
                    t.submit(topic, key, value, decisions_partition=partition)
                try:
                    result = future.result(timeout)
                except TimeoutError:
                    continue
                if isinstance(result, Unanswered):
                    return self._unanswered(event, phase, result.detail)
                return result  # type: ignore[no-any-return]
            return self._unanswered(event, phase, self._no_decision(timeout, retries + 1))
        finally:
            t.unregister(wait_key, waiter)

    def wait_for_approval(self, decision: Decision, timeout: float | None = None) -> Decision:
        """Wait for the approval phase of an ``approval_required`` decision.

        Returns the ``allow`` (granted) or ``stop`` (approval_denied, approval_expired, or a
        later check failing) decision. Default timeout: until the approval expires, plus a few
        seconds. No answer in time is a ``stop governance_unavailable``: an approval gate never
        fails open. A decision that is not ``approval_required`` is returned unchanged.
        """
        if decision.outcome != Outcome.APPROVAL_REQUIRED:
            return decision
        self.connect()
        wait = self._approval_wait(decision, timeout)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        waiter = Waiter(future)
        wait_key = (decision.request_id, str(Phase.APPROVAL))
        parked = self.transport.claim_parked(wait_key, waiter)
        if parked is not None:
            return parked
        try:
            result = future.result(wait)
        except TimeoutError:
            result = Unanswered(
                f"no approval decision within {wait:g} s (approval {decision.approval_id})"
            )
        finally:
            self.transport.unregister(wait_key, waiter)
        if isinstance(result, Unanswered):
            return self._unanswered(decision, Phase.APPROVAL, result.detail, fail_open=False)
        return result  # type: ignore[no-any-return]

    def finish(self, run_id: str, tenant: str = "default") -> None:
        """Tell Baton the run is over (its state may then be evicted); does not wait."""
        self.connect()
        topic, key, value, partition = self._finish_event(run_id, tenant)
        self.transport.submit(topic, key, value, decisions_partition=partition, needs_reply=False)
        self.transport.forget_run(run_id)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait until every published event is acknowledged; return how many were not."""
        return self.transport.flush(timeout)


class AsyncGovernanceClient(_ClientBase):
    """The asyncio flavour: same options and semantics as :class:`GovernanceClient`.

    One client serves any number of concurrent checks from one event loop; its Kafka work
    runs in a background thread, so no call blocks the loop (except ``connect``, which runs
    in the default executor).
    """

    def __init__(self, bootstrap: str | None = None, **options: Any) -> None:
        super().__init__(bootstrap, **options)
        self._connecting: asyncio.Future[None] | None = None

    async def __aenter__(self) -> AsyncGovernanceClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Reach Kafka and check Baton's topics; raises ``BrokerUnavailable``. Idempotent."""
        if self.transport.connected:
            return
        if self._connecting is None:
            loop = asyncio.get_running_loop()
            self._connecting = asyncio.ensure_future(
                loop.run_in_executor(None, self.transport.connect)
            )
        try:
            await asyncio.shield(self._connecting)
        except BaseException:
            self._connecting = None
            raise

    async def close(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.transport.close, timeout)

    async def check(
        self,
        handoff: HandoffRequested,
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Decision:
        """``await``-able :meth:`GovernanceClient.check`."""
        if not self.transport.connected:
            await self.connect()
        return await self._call(handoff, timeout, retries)

    async def report(
        self,
        completed: HandoffCompleted,
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Decision:
        """``await``-able :meth:`GovernanceClient.report`."""
        if not self.transport.connected:
            await self.connect()
        return await self._call(completed, timeout, retries)

    async def _call(
        self,
        event: HandoffRequested | HandoffCompleted,
        timeout: float | None,
        retries: int | None,
    ) -> Decision:
        timeout = self.options.timeout_s if timeout is None else timeout
        retries = self.options.retries if retries is None else retries
        topic, key, value, partition, wait_key, phase = self._request(event)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        waiter = Waiter(future, loop)
        t = self.transport
        # submitted synchronously, before the first await: requests leave in call order
        t.submit(topic, key, value, decisions_partition=partition, wait_key=wait_key, waiter=waiter)
        try:
            for attempt in range(retries + 1):
                if attempt:
                    t.submit(topic, key, value, decisions_partition=partition)
                done, _ = await asyncio.wait((future,), timeout=timeout)
                if not done:
                    continue
                result = future.result()
                if isinstance(result, Unanswered):
                    return self._unanswered(event, phase, result.detail)
                return result  # type: ignore[no-any-return]
            return self._unanswered(event, phase, self._no_decision(timeout, retries + 1))
        finally:
            t.unregister(wait_key, waiter)

    async def wait_for_approval(self, decision: Decision, timeout: float | None = None) -> Decision:
        """``await``-able :meth:`GovernanceClient.wait_for_approval`."""
        if decision.outcome != Outcome.APPROVAL_REQUIRED:
            return decision
        if not self.transport.connected:
            await self.connect()
        wait = self._approval_wait(decision, timeout)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        waiter = Waiter(future, loop)
        wait_key = (decision.request_id, str(Phase.APPROVAL))
        parked = self.transport.claim_parked(wait_key, waiter)
        if parked is not None:
            return parked
        try:
            done, _ = await asyncio.wait((future,), timeout=wait)
        finally:
            self.transport.unregister(wait_key, waiter)
        result = (
            future.result()
            if done
            else Unanswered(
                f"no approval decision within {wait:g} s (approval {decision.approval_id})"
            )
        )
        if isinstance(result, Unanswered):
            return self._unanswered(decision, Phase.APPROVAL, result.detail, fail_open=False)
        return result  # type: ignore[no-any-return]

    async def finish(self, run_id: str, tenant: str = "default") -> None:
        """Tell Baton the run is over; does not wait for its record."""
        if not self.transport.connected:
            await self.connect()
        topic, key, value, partition = self._finish_event(run_id, tenant)
        self.transport.submit(topic, key, value, decisions_partition=partition, needs_reply=False)
        self.transport.forget_run(run_id)

    async def flush(self, timeout: float = 10.0) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.transport.flush, timeout)


class _Publisher(_ClientBase):
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
        wait_key = (request_id, str(Phase.CONTROL))
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
