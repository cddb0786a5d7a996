"""The orchestrator's blocking client: check a handoff, report it, wait for its approval."""

from __future__ import annotations

import concurrent.futures
from typing import Any

from baton.schemas.decision import Decision, Outcome, Phase
from baton.schemas.events import HandoffCompleted, HandoffRequested
from baton.streams.sdk.base import ClientBase, answers_approval
from baton.streams.sdk.waiters import Unanswered, Waiter

__all__ = ["GovernanceClient"]


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
        self.channel.connect()

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what was published (up to ``timeout`` s) and stop the decision reader.

        Calls still waiting get their timeout answer (``governance_unavailable``) at once.
        """
        self.channel.close(timeout)

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
        timeout, retries = self._attempts(timeout, retries)
        topic, key, value, partition, wait_key, phase, answers = self._request(
            event, timeout * (retries + 1)
        )
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        waiter = Waiter(future, answers=answers)
        t = self.channel
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
                    closed = False if result.unreadable else None
                    return self._unanswered(event, phase, result.detail, fail_open=closed)
                self.run_tenants.heard(result)
                return result  # type: ignore[no-any-return]
            # a broker gone since connect: say what librdkafka saw of it, not only "no decision"
            detail = self._no_decision(timeout, retries + 1) + t.brokers.trouble()
            return self._unanswered(event, phase, detail)
        finally:
            t.waiters.unregister(wait_key, waiter)

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
        waiter = Waiter(future, answers=answers_approval(decision))
        wait_key = (decision.run_id, decision.request_id, str(Phase.APPROVAL))
        parked = self.channel.waiters.claim_parked(wait_key, waiter)
        if parked is not None:
            return parked
        try:
            result = future.result(wait)
        except TimeoutError:
            result = Unanswered(
                f"no approval decision within {wait:g} s (approval {decision.approval_id})"
            )
        finally:
            self.channel.waiters.unregister(wait_key, waiter)
        if isinstance(result, Unanswered):
            return self._unanswered(decision, Phase.APPROVAL, result.detail, fail_open=False)
        return result  # type: ignore[no-any-return]

    def finish(self, run_id: str, tenant: str | None = None) -> None:
        """Tell Baton the run is over (its state may then be evicted); does not wait.

        ``tenant``: the run's; by default the one Baton's answers to this client named, else
        the one its checks sent (else "default"): Baton refuses a finish under another."""
        self.connect()
        topic, key, value, partition = self._finish_event(run_id, tenant)
        self.channel.submit(topic, key, value, decisions_partition=partition, needs_reply=False)
        self.channel.waiters.forget_run(run_id)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait until every published event is acknowledged; return how many were not."""
        return self.channel.flush(timeout)
