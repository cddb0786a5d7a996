"""The orchestrator SDK against a real broker and a real `baton worker`: the seed's scenarios,
approvals, kill switches, retries, fail-closed without a worker, and 2,000 checks in flight."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from baton.schemas.decision import Decision, Fallback, Outcome, Phase
from baton.schemas.errors import BrokerUnavailable, TopicMismatch
from baton.schemas.events import HandoffCompleted, HandoffRequested, parse_event
from baton.streams.embedded import EmbeddedBroker
from baton.streams.net import free_port
from baton.streams.sdk import (
    ApproverClient,
    AsyncGovernanceClient,
    GovernanceClient,
    OperatorClient,
)
from baton.streams.topics import TopicCatalog
from tests.helpers import handoff, wait_for
from tests.stack import fresh_topics

from .conftest import PARTITIONS, Stack

pytestmark = pytest.mark.integration


def _run() -> str:
    return f"run_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def gov(stack: Stack) -> Iterator[GovernanceClient]:
    with GovernanceClient(stack.bootstrap, topic_prefix=stack.prefix, timeout=15) as client:
        yield client


@pytest.fixture(scope="module")
def idle(broker: EmbeddedBroker) -> TopicCatalog:
    """Baton's topics on the broker, but no worker deciding them."""
    catalog = fresh_topics(broker.bootstrap, f"idle{uuid.uuid4().hex[:6]}.", PARTITIONS)
    return catalog


# ----------------------------------------------------------------------------- seed scenarios
def test_ownership_conflict_on_refund_check_is_stopped_with_the_owner(
    gov: GovernanceClient,
) -> None:
    run = _run()
    first = gov.check(handoff(run, 1, "refund_check", to="billing_agent"))
    second = gov.check(handoff(run, 2, "refund_check", to="researcher"))
    assert (first.outcome, first.owner, first.phase) == (
        Outcome.ALLOW,
        "billing_agent",
        Phase.PRE_HANDOFF,
    )
    assert (second.outcome, second.reason, second.owner, second.fallback) == (
        Outcome.STOP,
        "ownership_conflict",
        "billing_agent",
        Fallback.SINGLE_AGENT,
    )
    assert second.request_id == f"{run}-h2"


def test_managed_handoff_has_pre_and_post_records(gov: GovernanceClient) -> None:
    run = _run()
    pre = gov.check(handoff(run, 1, "research"))
    post = gov.report(
        HandoffCompleted(
            request_id=pre.request_id,
            run_id=run,
            task_id="research",
            agent="researcher",
            cost_usd=2.5,
            tool_calls=4,
            event_time=datetime.now(UTC),
        )
    )
    assert (pre.phase, pre.outcome, pre.depth, pre.handoff_count) == (
        Phase.PRE_HANDOFF,
        Outcome.ALLOW,
        1,
        1,
    )
    assert (post.phase, post.outcome, post.reason, post.spent_usd, post.tool_calls) == (
        Phase.POST_HANDOFF,
        Outcome.RECORDED,
        "within_budget",
        2.5,
        4,
    )
    assert post.decision_id != pre.decision_id


def test_ninth_handoff_is_stopped_with_fallback(stack: Stack) -> None:
    async def play() -> list[Decision]:
        async with AsyncGovernanceClient(
            stack.bootstrap, topic_prefix=stack.prefix, timeout=15
        ) as gov:
            run = _run()
            # concurrent, yet published in call order: the 9th call is the 9th handoff
            return await asyncio.gather(
                *(gov.check(handoff(run, i, f"t{i}")) for i in range(1, 10))
            )

    decisions = asyncio.run(play())
    assert [d.outcome for d in decisions] == [Outcome.ALLOW] * 8 + [Outcome.STOP]
    assert [d.handoff_count for d in decisions[:8]] == list(range(1, 9))
    assert (decisions[8].reason, decisions[8].fallback) == (
        "handoff_budget_exceeded",
        Fallback.SINGLE_AGENT,
    )


def test_refund_needs_approval_then_an_approver_grants_it(
    gov: GovernanceClient, stack: Stack
) -> None:
    run = _run()
    pending = gov.check(
        handoff(run, 1, "refund", to="billing_agent", action="billing.refund.create")
    )
    assert pending.outcome == Outcome.APPROVAL_REQUIRED and pending.approval_id
    assert pending.approval_expires_at is not None
    with ApproverClient(stack.bootstrap, topic_prefix=stack.prefix) as approver:
        approver.grant(pending, approver="alice")
    granted = gov.wait_for_approval(pending, timeout=15)
    assert (granted.phase, granted.outcome, granted.reason, granted.approver) == (
        Phase.APPROVAL,
        Outcome.ALLOW,
        "approval_granted",
        "alice",
    )
    assert granted.request_id == pending.request_id


def test_a_grant_that_arrives_before_the_wait_is_not_lost(
    gov: GovernanceClient, stack: Stack
) -> None:
    run = _run()
    pending = gov.check(
        handoff(run, 1, "refund", to="billing_agent", action="billing.refund.create")
    )
    with ApproverClient(stack.bootstrap, topic_prefix=stack.prefix) as approver:
        approver.deny(pending, approver="alice", comment="not this one")
    # the denial is decided and read by the client before anyone waits for it
    wait_for(
        lambda: gov.channel.waiters.parked((run, pending.request_id, "approval")),
        15,
        message="the denial read by the client",
    )
    denied = gov.wait_for_approval(pending, timeout=5)
    assert (denied.outcome, denied.reason, denied.detail) == (
        Outcome.STOP,
        "approval_denied",
        "not this one",
    )


def test_the_same_request_id_in_two_runs_gets_each_runs_own_decision(
    gov: GovernanceClient,
) -> None:
    # decision ids and SDK waiters cover the run: run B's stop must not answer run A's check
    run_a, run_b = _run(), _run()
    first = handoff(run_b, 1, "t", to="researcher").model_copy(update={"request_id": "same"})
    assert gov.check(first).outcome == Outcome.ALLOW
    conflict = handoff(run_b, 2, "t", to="writer").model_copy(update={"request_id": "same2"})
    assert gov.check(conflict).reason == "ownership_conflict"
    mine = handoff(run_a, 1, "t", to="writer").model_copy(update={"request_id": "same2"})
    decision = gov.check(mine)
    assert (decision.run_id, decision.outcome) == (run_a, Outcome.ALLOW)


def test_kill_switch_stops_a_run_until_released(gov: GovernanceClient, stack: Stack) -> None:
    run = _run()
    assert gov.check(handoff(run, 1, "t1")).outcome == Outcome.ALLOW
    with OperatorClient(stack.bootstrap, topic_prefix=stack.prefix, timeout=15) as ops:
        record = ops.kill(run_id=run, operator="oncall", reason="runaway")
        assert record is not None
        assert (record.phase, record.reason, record.approver) == (
            Phase.CONTROL,
            "kill_switch",
            "oncall",
        )
        killed = gov.check(handoff(run, 2, "t2"))
        assert (killed.outcome, killed.reason) == (Outcome.STOP, "killed")
        ops.release(run_id=run, operator="oncall")
    assert gov.check(handoff(run, 3, "t3")).outcome == Outcome.ALLOW


# ----------------------------------------------------------------------------- delivery
def test_retry_with_the_same_request_id_gets_the_same_decision_and_counts_once(
    gov: GovernanceClient,
) -> None:
    run = _run()
    first = gov.check(handoff(run, 1, "t1"))
    again = gov.check(handoff(run, 1, "t1"))
    second = gov.check(handoff(run, 2, "t2"))
    assert again.decision_id == first.decision_id
    assert (first.handoff_count, again.handoff_count, second.handoff_count) == (1, 1, 2)


def test_no_worker_fails_closed_with_the_configured_fallback(
    broker: EmbeddedBroker, idle: TopicCatalog
) -> None:
    run = _run()
    with GovernanceClient(
        broker.bootstrap, topic_prefix=idle.prefix, timeout=0.5, fallback="constrained"
    ) as gov:
        started = time.monotonic()
        d = gov.check(handoff(run, 1, "t1"), retries=2)
        took = time.monotonic() - started
    assert (d.outcome, d.reason, d.fallback, d.phase) == (
        Outcome.STOP,
        "governance_unavailable",
        Fallback.CONSTRAINED,
        Phase.PRE_HANDOFF,
    )
    assert (d.request_id, d.to_agent, d.task_id) == (f"{run}-h1", "researcher", "t1")
    assert "3 attempts" in (d.detail or "") and broker.bootstrap in (d.detail or "")
    assert 1.4 < took < 5
    # the retries re-published the very same request, which a worker would decide once
    sent = _requests_of(broker.bootstrap, idle, run, expect=3)
    assert [e.request_id for e in sent] == [f"{run}-h1"] * 3


def test_no_worker_fails_open_only_when_configured(
    broker: EmbeddedBroker, idle: TopicCatalog
) -> None:
    run = _run()
    with GovernanceClient(
        broker.bootstrap, topic_prefix=idle.prefix, timeout=0.3, fail_open=True
    ) as gov:
        d = gov.check(handoff(run, 1, "t1"))
        report = gov.report(
            HandoffCompleted(
                request_id=f"{run}-h1",
                run_id=run,
                task_id="t1",
                agent="researcher",
                event_time=datetime.now(UTC),
            )
        )
        pending = Decision(
            decision_id="x",
            request_id=f"{run}-h9",
            run_id=run,
            tenant="default",
            phase=Phase.PRE_HANDOFF,
            outcome=Outcome.APPROVAL_REQUIRED,
            reason="approval_pending",
            approval_id="apr_x",
        )
        gate = gov.wait_for_approval(pending, timeout=0.3)
    assert (d.outcome, d.reason, d.fallback) == (Outcome.ALLOW, "governance_unavailable", None)
    assert (report.outcome, report.reason) == (Outcome.RECORDED, "governance_unavailable")
    # an approval gate never opens by timeout, fail-open or not
    assert (gate.outcome, gate.reason) == (Outcome.STOP, "governance_unavailable")


def test_unreachable_broker_error_names_the_address() -> None:
    address = f"127.0.0.1:{free_port()}"
    gov = GovernanceClient(address, connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=f"cannot reach Kafka at {address}"):
        gov.check(handoff(_run(), 1, "t1"))
    assert time.monotonic() - started < 5
    gov.close()


def test_missing_topics_and_wrong_partition_count_are_explained(
    broker: EmbeddedBroker, idle: TopicCatalog
) -> None:
    with pytest.raises(BrokerUnavailable, match=r"has no topic nowhere\.gov\.handoff\.requests"):
        GovernanceClient(broker.bootstrap, topic_prefix="nowhere.").connect()
    with pytest.raises(TopicMismatch, match=f"must all have {PARTITIONS + 1} partitions"):
        GovernanceClient(
            broker.bootstrap, topic_prefix=idle.prefix, partitions=PARTITIONS + 1
        ).connect()


# ----------------------------------------------------------------------------- concurrency
def test_2000_concurrent_checks_over_200_runs_from_one_async_client(stack: Stack) -> None:
    runs = [_run() for _ in range(200)]

    async def play() -> tuple[list[Decision], float]:
        async with AsyncGovernanceClient(
            stack.bootstrap, topic_prefix=stack.prefix, timeout=60
        ) as gov:
            started = time.monotonic()
            decisions = await asyncio.gather(
                *(gov.check(handoff(run, i, f"t{i}")) for run in runs for i in range(1, 11))
            )
            return decisions, time.monotonic() - started

    decisions, took = asyncio.run(play())
    assert len(decisions) == 2000
    by_run: dict[str, list[Decision]] = {}
    for d in decisions:
        by_run.setdefault(d.run_id, []).append(d)
    assert sorted(by_run) == sorted(runs)
    for run, ds in by_run.items():
        # gather returns in call order, and the client publishes in call order
        assert [d.request_id for d in ds] == [f"{run}-h{i}" for i in range(1, 11)]
        assert [(d.outcome, d.reason) for d in ds] == (
            [(Outcome.ALLOW, "ok")] * 8 + [(Outcome.STOP, "handoff_budget_exceeded")] * 2
        ), run
    assert took < 30, f"2,000 checks took {took:.1f} s"


def test_async_client_approval_flow_and_finish(stack: Stack) -> None:
    async def play() -> tuple[Decision, Decision, Decision]:
        async with AsyncGovernanceClient(
            stack.bootstrap, topic_prefix=stack.prefix, timeout=15
        ) as gov:
            run = _run()
            pending = await gov.check(
                handoff(run, 1, "refund", to="billing_agent", action="billing.refund.create")
            )
            with ApproverClient(stack.bootstrap, topic_prefix=stack.prefix) as approver:
                await asyncio.to_thread(approver.grant, pending, approver="alice")
            granted = await gov.wait_for_approval(pending, timeout=15)
            post = await gov.report(
                HandoffCompleted(
                    request_id=pending.request_id,
                    run_id=run,
                    task_id="refund",
                    agent="billing_agent",
                    cost_usd=1.0,
                    tool_calls=2,
                    event_time=datetime.now(UTC),
                )
            )
            await gov.finish(run)
            return pending, granted, post

    pending, granted, post = asyncio.run(play())
    assert pending.outcome == Outcome.APPROVAL_REQUIRED
    assert (granted.outcome, granted.reason) == (Outcome.ALLOW, "approval_granted")
    assert (post.outcome, post.spent_usd, post.tool_calls) == (Outcome.RECORDED, 1.0, 2)


# ----------------------------------------------------------------------------- helpers
def _requests_of(
    bootstrap: str, catalog: TopicCatalog, run: str, expect: int
) -> list[HandoffRequested]:
    from baton.streams.partitioner import partition_for

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"peek-{run}"})
    partition = partition_for(run.encode(), catalog.partitions)
    consumer.assign([TopicPartition(catalog.requests, partition, OFFSET_BEGINNING)])
    found: list[HandoffRequested] = []
    deadline = time.monotonic() + 10
    try:
        while len(found) < expect and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() or msg.key() != run.encode():
                continue
            event = parse_event(msg.value(), msg.key())
            assert isinstance(event, HandoffRequested)
            found.append(event)
    finally:
        consumer.close()
    return found
