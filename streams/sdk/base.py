"""What every SDK client shares: options, a channel, requests built, fail-safe answers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from baton.schemas.decision import Decision, Fallback, Phase
from baton.schemas.events import HandoffCompleted, HandoffRequested, RunFinished
from baton.schemas.settings import Settings
from baton.streams.sdk.channel import RequestChannel
from baton.streams.sdk.options import ClientOptions, unanswered_decision
from baton.streams.sdk.waiters import WaitKey

__all__ = ["ClientBase", "answers_approval", "answers_request"]

#: an approval's expiry is enforced by the worker's sweep (every second): wait a bit past it
_EXPIRY_GRACE_S = 5.0
#: decide_by is when the client stops waiting: no grace (a worker whose clock runs ahead
#: refuses a little early, which fails closed; one whose clock lags allows a little late)
_DECIDE_BY_GRACE_S = 0.0


class ClientBase:
    """Options, the channel and the request -> decision bookkeeping every client shares."""

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
        self.channel = RequestChannel(self.options)

    @property
    def bootstrap(self) -> str:
        return self.options.bootstrap

    def _request(
        self, event: HandoffRequested | HandoffCompleted, wait_s: float
    ) -> tuple[str, bytes, bytes, int, WaitKey, Phase]:
        phase = Phase.PRE_HANDOFF if isinstance(event, HandoffRequested) else Phase.POST_HANDOFF
        if isinstance(event, HandoffRequested) and event.decide_by is None:
            # the client stops waiting (and fails closed) after wait_s: a request the worker
            # reads only later (a paused broker, a backlog) must not be allowed behind its back
            decide_by = datetime.now(UTC) + timedelta(seconds=wait_s + _DECIDE_BY_GRACE_S)
            event = event.model_copy(update={"decide_by": decide_by})
        return (
            self.channel.catalog.requests,
            event.run_id.encode(),
            event.to_json(),
            self.channel.partition_of(event.run_id),
            (event.run_id, event.request_id, str(phase)),
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
        extra = _echoed_fields(event)
        error = self.channel.last_delivery_error()
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
            f"(Kafka at {self.bootstrap}, topic {self.channel.catalog.decisions}); "
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
            self.channel.catalog.requests,
            run_id.encode(),
            event.to_json(),
            self.channel.partition_of(run_id),
        )


#: what a fail-safe decision repeats of the handoff it answers (a request or its pending approval)
_HANDOFF_FIELDS = ("from_agent", "to_agent", "task_id", "parent_task_id", "action", "tool")


def answers_request(event: HandoffRequested | HandoffCompleted) -> Callable[[Decision], bool]:
    """Whether a decision under ``event``'s run, request id and phase answers ``event``: none
    of the fields the worker repeats of a request (the agents, task, action, tool; a report's
    agent, task and status) names another value. A field the decision leaves empty (a
    protocol refusal of a report) says nothing. Not covered: another request that differs
    only in what no decision repeats (``tools``, estimates, ``task_kind``; a report's cost,
    counts and tools)."""
    if isinstance(event, HandoffCompleted):
        expected = {"to_agent": event.agent, "task_id": event.task_id}
        expected["handoff_status"] = event.status
    else:
        expected = {name: getattr(event, name) for name in _HANDOFF_FIELDS}
    pairs = tuple(expected.items())

    def answers(decision: Decision) -> bool:
        for name, value in pairs:
            said = getattr(decision, name)
            if said is not None and said != value:
                return False
        return True

    return answers


def answers_approval(asked: Decision) -> Callable[[Decision], bool]:
    """Whether an approval-phase decision answers the approval ``asked`` opened (another
    request under the same run and request id opened another approval)."""
    approval_id = asked.approval_id
    return lambda decision: decision.approval_id in (None, approval_id)


def _echoed_fields(event: HandoffRequested | HandoffCompleted | Decision) -> dict[str, Any]:
    """The fields of ``event`` a fail-safe decision about it carries, as Baton's would."""
    if isinstance(event, HandoffCompleted):
        return dict(
            to_agent=event.agent,
            task_id=event.task_id,
            tool_calls=event.tool_calls,
            handoff_status=event.status,
            event_time=event.event_time,
        )
    extra: dict[str, Any] = {name: getattr(event, name) for name in _HANDOFF_FIELDS}
    if isinstance(event, HandoffRequested):
        extra["event_time"] = event.event_time
    else:
        extra.update(
            approval_id=event.approval_id,
            approval_expires_at=event.approval_expires_at,
            depth=event.depth,
        )
    return extra
