"""Builders the engine tests share: events at a fixed clock, policies from YAML, a run driver.

No tests live here; the module is named like the engine tests so they can import it.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from baton.processors.engine import NO_KILLS, KillSwitches, decide
from baton.processors.state import RunState
from baton.schemas.decision import Decision
from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    HandoffCompleted,
    HandoffRequested,
    RunEvent,
    RunFinished,
)
from baton.schemas.policy import DEFAULT_POLICY_YAML, Policy, parse_policy

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """The test clock: ``seconds`` after T0."""
    return T0 + timedelta(seconds=seconds)


def seed_policy() -> Policy:
    return parse_policy(DEFAULT_POLICY_YAML, "seed")


def policy_with(**multi_agent: Any) -> Policy:
    """The seed policy with ``multi_agent`` keys replaced (None removes a limit); parsed from
    YAML like a real file, so a test cannot build a policy the loader would refuse."""
    doc = yaml.safe_load(DEFAULT_POLICY_YAML)
    tenants = multi_agent.pop("tenants", None)
    doc["multi_agent"].update(multi_agent)
    if tenants is not None:
        doc["tenants"] = tenants
    return parse_policy(yaml.safe_dump(doc), "test")


def handoff(
    request_id: str,
    task_id: str,
    from_agent: str,
    to_agent: str,
    *,
    run_id: str = "run-1",
    t: float = 0,
    **fields: Any,
) -> HandoffRequested:
    return HandoffRequested(
        request_id=request_id,
        run_id=run_id,
        task_id=task_id,
        from_agent=from_agent,
        to_agent=to_agent,
        event_time=at(t),
        **fields,
    )


def completed(
    request_id: str,
    task_id: str,
    agent: str,
    cost_usd: float = 0.0,
    tool_calls: int = 0,
    *,
    status: str = "ok",
    run_id: str = "run-1",
    t: float = 0,
    **fields: Any,
) -> HandoffCompleted:
    return HandoffCompleted(
        request_id=request_id,
        run_id=run_id,
        task_id=task_id,
        agent=agent,
        cost_usd=cost_usd,
        tool_calls=tool_calls,
        status=status,
        event_time=at(t),
        **fields,
    )


def granted(
    approval_id: str, approver: str, *, run_id: str = "run-1", t: float = 0
) -> ApprovalGranted:
    return ApprovalGranted(
        approval_id=approval_id, run_id=run_id, approver=approver, event_time=at(t)
    )


def denied(
    approval_id: str, approver: str, *, run_id: str = "run-1", t: float = 0, comment: str = "no"
) -> ApprovalDenied:
    return ApprovalDenied(
        approval_id=approval_id, run_id=run_id, approver=approver, comment=comment, event_time=at(t)
    )


def finished(*, run_id: str = "run-1", t: float = 0) -> RunFinished:
    return RunFinished(run_id=run_id, event_time=at(t))


class Run:
    """Drives one run through ``decide`` the way the worker does: the returned state is kept
    (like the ``runs`` table value) and fed to the next event."""

    def __init__(
        self, policy: Policy | None = None, run_id: str = "run-1", tenant: str = "default"
    ) -> None:
        self.policy = policy or seed_policy()
        self.run_id = run_id
        self.tenant = tenant
        self.state: RunState | None = None
        self.kills: KillSwitches = NO_KILLS
        self.clock: float = 0
        self._ids = itertools.count(1)

    def send(self, event: RunEvent, t: float | None = None) -> list[Decision]:
        """Decide ``event`` at test time ``t`` (default: the run clock, which never goes back)."""
        if t is not None:
            self.clock = t
        self.state, decisions = decide(self.state, event, self.policy, at(self.clock), self.kills)
        return decisions

    def one(self, event: RunEvent, t: float | None = None) -> Decision:
        decisions = self.send(event, t)
        assert len(decisions) == 1, decisions
        return decisions[0]

    def handoff(
        self, task_id: str, from_agent: str, to_agent: str, *, t: float | None = None, **fields: Any
    ) -> Decision:
        """A handoff with a fresh request id; returns its single decision."""
        request_id = fields.pop("request_id", None) or f"req-{next(self._ids)}"
        #: the last handoff sent (approval_id_for needs the request itself)
        self.last = handoff(
            request_id,
            task_id,
            from_agent,
            to_agent,
            run_id=self.run_id,
            tenant=self.tenant,
            t=self.clock if t is None else t,
            **fields,
        )
        return self.one(self.last, t)

    def complete(
        self,
        allowed: Decision,
        cost_usd: float = 0.0,
        tool_calls: int = 0,
        *,
        status: str = "ok",
        t: float | None = None,
    ) -> Decision:
        """Report the completion of the handoff ``allowed`` decided."""
        assert allowed.task_id is not None and allowed.to_agent is not None
        return self.one(
            completed(
                allowed.request_id,
                allowed.task_id,
                allowed.to_agent,
                cost_usd,
                tool_calls,
                status=status,
                run_id=self.run_id,
                tenant=self.tenant,
                t=self.clock if t is None else t,
            ),
            t,
        )

    def grant(self, approval_id: str, approver: str, t: float | None = None) -> list[Decision]:
        return self.send(
            granted(approval_id, approver, run_id=self.run_id, t=self.clock if t is None else t), t
        )

    def deny(self, approval_id: str, approver: str, t: float | None = None) -> list[Decision]:
        return self.send(
            denied(approval_id, approver, run_id=self.run_id, t=self.clock if t is None else t), t
        )
