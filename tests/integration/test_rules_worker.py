"""The rules of issue 14 decided by a real `baton worker` over Tansu: ownership release,
reservation expiry by the worker's sweep, ping-pong bounces, per-agent tools, the step budget,
and a policy file in the seed's OnceOnly style."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest

from baton.schemas.decision import Outcome, Phase, Reason
from baton.schemas.events import HandoffCompleted
from baton.streams.embedded import EmbeddedBroker
from tests.helpers import handoff, wait_for

from .conftest import Stack, one_worker_stack

pytestmark = pytest.mark.integration

#: the seed's blocks next to multi_agent keys: the worker must load both
RULES_POLICY = """\
budgets: {max_steps: 10, max_usd: 10}
controls: {kill_switch: true}
multi_agent:
  max_agents_per_run: 10
  max_handoffs: 50
  max_bounces: 2
  reservation_ttl_seconds: 2
  roles:
    billing_agent:
      tools: {allow: ["billing.*", "search.web"]}
"""


@pytest.fixture(scope="module")
def rules_stack(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One worker (at-least-once: the rules are the engine's, the guarantee is tested
    elsewhere) under RULES_POLICY."""
    with one_worker_stack(broker, tmp_path_factory.mktemp("rules"), RULES_POLICY, "r") as s:
        yield s


def _run() -> str:
    return f"run_{uuid.uuid4().hex[:8]}"


def _done(run: str, n: int, task: str, agent: str, **kw: object) -> HandoffCompleted:
    return HandoffCompleted(
        request_id=f"{run}-h{n}",
        run_id=run,
        task_id=task,
        agent=agent,
        event_time=datetime.now(UTC),
        **kw,  # type: ignore[arg-type]
    )


def test_a_failed_owner_frees_the_task_for_another_agent(rules_stack: Stack) -> None:
    run = _run()
    rules_stack.requests.send(
        [
            handoff(run, 1, "refund_check", "planner", "billing_agent"),
            _done(run, 1, "refund_check", "billing_agent", status="error"),
            handoff(run, 2, "refund_check", "planner", "support_agent"),
        ]
    )
    first, released, second = rules_stack.decisions.wait_run(run, 3)
    assert (first.outcome, first.owner) == (Outcome.ALLOW, "billing_agent")
    assert (released.phase, released.reason) == (Phase.POST_HANDOFF, Reason.OWNERSHIP_RELEASED)
    assert (second.outcome, second.owner) == (Outcome.ALLOW, "support_agent")


def test_the_sweep_releases_a_reservation_nobody_completed(rules_stack: Stack) -> None:
    run = _run()
    rules_stack.requests.send(
        [handoff(run, 1, "search", "planner", "search_agent", estimated_usd=8)]
    )
    (allowed,) = rules_stack.decisions.wait_run(run, 1)
    assert (allowed.outcome, allowed.reserved_usd) == (Outcome.ALLOW, 8)
    # no further event of the run: only the worker's sweep can release it (TTL 2 s)
    _, expired = rules_stack.decisions.wait_run(run, 2, timeout=20)
    assert (expired.phase, expired.outcome, expired.reason) == (
        Phase.CONTROL,
        Outcome.RECORDED,
        Reason.RESERVATION_EXPIRED,
    )
    assert (expired.request_id, expired.task_id, expired.reserved_usd) == (f"{run}-h1", "search", 0)
    assert expired.decided_at is not None and allowed.decided_at is not None
    assert (expired.decided_at - allowed.decided_at).total_seconds() >= 2
    rules_stack.requests.send([handoff(run, 2, "write", "planner", "writer", estimated_usd=5)])
    assert rules_stack.decisions.wait_run(run, 3)[2].outcome == Outcome.ALLOW


def test_agents_handing_work_back_and_forth_are_stopped(rules_stack: Stack) -> None:
    run = _run()
    rules_stack.requests.send(
        [
            handoff(run, 1, "t1", "triage", "billing_agent"),
            handoff(run, 2, "t2", "billing_agent", "triage"),
            handoff(run, 3, "t3", "triage", "billing_agent"),
            handoff(run, 4, "t4", "billing_agent", "triage"),
        ]
    )
    decisions = rules_stack.decisions.wait_run(run, 4)
    assert [d.outcome for d in decisions] == [Outcome.ALLOW] * 3 + [Outcome.STOP]
    assert decisions[3].reason == Reason.DELEGATION_CYCLE
    assert "max_bounces 2" in (decisions[3].detail or "")
    (stop,) = rules_stack.stops.wait_run(run, 1)
    assert stop.decision_id == decisions[3].decision_id


def test_an_agents_tools_are_checked_before_and_after(rules_stack: Stack) -> None:
    run = _run()
    rules_stack.requests.send(
        [
            handoff(run, 1, "t1", "planner", "billing_agent", tools=["search.web", "shell.exec"]),
            handoff(run, 2, "t2", "planner", "billing_agent", tools=["search.web"]),
            _done(run, 2, "t2", "billing_agent", tools=["crm.export"], cost_usd=0.5),
        ]
    )
    declared, allowed, used = rules_stack.decisions.wait_run(run, 3)
    assert (declared.outcome, declared.reason) == (Outcome.STOP, Reason.TOOL_NOT_PERMITTED)
    assert declared.detail == (
        "tool shell.exec is not permitted for billing_agent (roles.billing_agent.tools.allow)"
    )
    assert allowed.outcome == Outcome.ALLOW
    assert (used.phase, used.outcome, used.reason) == (
        Phase.POST_HANDOFF,
        Outcome.STOP,
        Reason.TOOL_NOT_PERMITTED,
    )
    assert "crm.export" in (used.detail or "") and used.spent_usd == 0.5


def test_the_seed_blocks_step_budget_stops_the_run(rules_stack: Stack) -> None:
    run = _run()
    rules_stack.requests.send(
        [
            handoff(run, 1, "t1", "planner", "writer"),
            _done(run, 1, "t1", "writer", steps=11),
            handoff(run, 2, "t2", "planner", "writer"),
        ]
    )
    _, over, after = rules_stack.decisions.wait_run(run, 3)
    assert (over.outcome, over.reason, over.detail) == (
        Outcome.STOP,
        Reason.STEP_BUDGET_EXCEEDED,
        "steps 11 > max_steps 10",
    )
    assert (after.outcome, after.reason) == (Outcome.STOP, Reason.STEP_BUDGET_EXCEEDED)


def test_a_role_applies_to_every_spelling_and_a_look_alike_is_a_dead_letter(
    rules_stack: Stack,
) -> None:
    # raw JSON, as a client in another language sends it (the SDK would refuse the second)
    run = _run()
    shouting = handoff(run, 1, "t1", "planner", "billing_agent", tools=["search.web"])
    doc = orjson.loads(shouting.to_json())
    for n, to_agent, tools in (
        (1, "BILLING_AGENT", ["Shell.Exec"]),
        (2, "billing_agent\u200b", []),
    ):
        value = {**doc, "request_id": f"{run}-h{n}", "to_agent": to_agent, "tools": tools}
        rules_stack.requests.send_raw(orjson.dumps(value), run.encode())
    (stopped,) = rules_stack.decisions.wait_run(run, 1)
    assert (stopped.outcome, stopped.reason, stopped.to_agent) == (
        Outcome.STOP,
        Reason.TOOL_NOT_PERMITTED,
        "billing_agent",
    )
    assert stopped.detail == (
        "tool shell.exec is not permitted for billing_agent (roles.billing_agent.tools.allow)"
    )
    dead = wait_for(
        lambda: [
            r for r in map(orjson.loads, rules_stack.deadletters.records) if r.get("key") == run
        ],
        30,
        message=f"the look-alike's dead letter for {run}",
    )
    assert dead[0]["error_kind"] == "bad_name"
    assert (
        "to_agent: bad name" in dead[0]["error"] and "U+200B ZERO WIDTH SPACE" in dead[0]["error"]
    )
    assert len(rules_stack.decisions.for_run(run)) == 1  # the look-alike was never decided
