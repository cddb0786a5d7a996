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
from types import TracebackType
from typing import Any

from baton.schemas.decision import Decision, Outcome, Phase
from baton.schemas.events import HandoffCompleted, HandoffRequested
from baton.streams.client_base import ClientBase
from baton.streams.client_options import ClientSettings
from baton.streams.client_publishers import ApproverClient, OperatorClient
from baton.streams.client_transport import Unanswered, Waiter

__all__ = [
    "ApproverClient",
    "AsyncGovernanceClient",
    "ClientSettings",
    "GovernanceClient",
    "OperatorClient",
]


class GovernanceClient(ClientBase):
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
        topic, key, value, partition, wait_key, phase = self._request(
            event, timeout * (retries + 1)
        )
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
        wait_key = (decision.run_id, decision.request_id, str(Phase.APPROVAL))
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


class AsyncGovernanceClient(ClientBase):
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
        topic, key, value, partition, wait_key, phase = self._request(
            event, timeout * (retries + 1)
        )
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
        wait_key = (decision.run_id, decision.request_id, str(Phase.APPROVAL))
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
