"""The orchestrator's asyncio client: :class:`GovernanceClient`'s calls as coroutines."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from baton.schemas.decision import Decision, Outcome, Phase
from baton.schemas.events import HandoffCompleted, HandoffRequested
from baton.streams.sdk.base import ClientBase, answers_approval
from baton.streams.sdk.waiters import Unanswered, Waiter

__all__ = ["AsyncGovernanceClient"]


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
        if self.channel.connected:
            return
        if self._connecting is None:
            loop = asyncio.get_running_loop()
            self._connecting = asyncio.ensure_future(
                loop.run_in_executor(None, self.channel.connect)
            )
        try:
            await asyncio.shield(self._connecting)
        except BaseException:
            self._connecting = None
            raise

    async def close(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.channel.close, timeout)

    async def check(
        self,
        handoff: HandoffRequested,
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Decision:
        """``await``-able :meth:`GovernanceClient.check`."""
        if not self.channel.connected:
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
        if not self.channel.connected:
            await self.connect()
        return await self._call(completed, timeout, retries)

    async def _call(
        self,
        event: HandoffRequested | HandoffCompleted,
        timeout: float | None,
        retries: int | None,
    ) -> Decision:
        timeout, retries = self._attempts(timeout, retries)
        topic, key, value, partition, wait_key, phase, answers = self._request(
            event, timeout * (retries + 1)
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        waiter = Waiter(future, loop, answers)
        t = self.channel
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
                    closed = False if result.unreadable else None
                    return self._unanswered(event, phase, result.detail, fail_open=closed)
                self.run_tenants.heard(result)
                return result  # type: ignore[no-any-return]
            # a broker gone since connect: say what librdkafka saw of it, not only "no decision"
            detail = self._no_decision(timeout, retries + 1) + t.brokers.trouble()
            return self._unanswered(event, phase, detail)
        finally:
            t.waiters.unregister(wait_key, waiter)

    async def wait_for_approval(self, decision: Decision, timeout: float | None = None) -> Decision:
        """``await``-able :meth:`GovernanceClient.wait_for_approval`."""
        if decision.outcome != Outcome.APPROVAL_REQUIRED:
            return decision
        if not self.channel.connected:
            await self.connect()
        wait = self._approval_wait(decision, timeout)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        waiter = Waiter(future, loop, answers_approval(decision))
        wait_key = (decision.run_id, decision.request_id, str(Phase.APPROVAL))
        parked = self.channel.waiters.claim_parked(wait_key, waiter)
        if parked is not None:
            return parked
        try:
            done, _ = await asyncio.wait((future,), timeout=wait)
        finally:
            self.channel.waiters.unregister(wait_key, waiter)
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

    async def finish(self, run_id: str, tenant: str | None = None) -> None:
        """Tell Baton the run is over; does not wait for its record. ``tenant``: the run's; by
        default the one Baton's answers to this client named, else the one its checks sent."""
        if not self.channel.connected:
            await self.connect()
        topic, key, value, partition = self._finish_event(run_id, tenant)
        self.channel.submit(topic, key, value, decisions_partition=partition, needs_reply=False)
        self.channel.waiters.forget_run(run_id)

    async def flush(self, timeout: float = 10.0) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.channel.flush, timeout)
