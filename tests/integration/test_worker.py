"""The governance worker through real Kafka: seed scenarios, approvals, kill switch, bad input."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from baton.schemas.decision import Outcome, Phase
from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    HandoffCompleted,
)
from baton.streams.partitioner import partition_for
from tests.helpers import handoff, wait_for

from .conftest import PARTITIONS, Stack

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


def _run() -> str:
    return f"run_{uuid.uuid4().hex[:8]}"


def test_ownership_conflict_on_refund_check_is_stopped_and_alerted(stack: Stack) -> None:
    run = _run()
    stack.requests.send(
        [
            handoff(run, 1, "refund_check", "planner", "billing_agent"),
            handoff(run, 2, "refund_check", "planner", "researcher"),
        ]
    )
    first, second = stack.decisions.wait_run(run, 2)
    assert (first.outcome, first.owner) == (Outcome.ALLOW, "billing_agent")
    assert (second.outcome, second.reason, second.owner) == (
        Outcome.STOP,
        "ownership_conflict",
        "billing_agent",
    )
    assert second.fallback == "single_agent"
    (stop,) = stack.stops.wait_run(run, 1)
    assert stop.decision_id == second.decision_id


def test_ninth_handoff_is_stopped_with_fallback(stack: Stack) -> None:
    run = _run()
    stack.requests.send([handoff(run, i, f"t{i}", "planner", "researcher") for i in range(1, 10)])
    decisions = stack.decisions.wait_run(run, 9)
    assert [d.outcome for d in decisions] == [Outcome.ALLOW] * 8 + [Outcome.STOP]
    assert decisions[7].handoff_count == 8
    assert (decisions[8].reason, decisions[8].fallback) == (
        "handoff_budget_exceeded",
        "single_agent",
    )


def test_managed_handoff_has_pre_and_post_records(stack: Stack) -> None:
    run = _run()
    stack.requests.send(
        [
            handoff(run, 1, "research", "planner", "researcher"),
            HandoffCompleted(
                request_id=f"{run}-h1",
                run_id=run,
                task_id="research",
                agent="researcher",
                cost_usd=2.5,
                tool_calls=4,
                status="ok",
                event_time=NOW,
            ),
        ]
    )
    pre, post = stack.decisions.wait_run(run, 2)
    assert (pre.phase, pre.outcome, pre.depth) == (Phase.PRE_HANDOFF, Outcome.ALLOW, 1)
    assert (post.phase, post.handoff_status, post.spent_usd, post.tool_calls) == (
        Phase.POST_HANDOFF,
        "ok",
        2.5,
        4,
    )
    assert post.partition == partition_for(run.encode(), PARTITIONS)


def test_refund_needs_approval_then_grant_allows(stack: Stack) -> None:
    run = _run()
    stack.requests.send(
        [handoff(run, 1, "refund", "planner", "billing_agent", action="billing.refund.create")]
    )
    (pending,) = stack.decisions.wait_run(run, 1)
    assert pending.outcome == Outcome.APPROVAL_REQUIRED and pending.approval_id
    stack.requests.send(
        [
            ApprovalGranted(
                approval_id=pending.approval_id, run_id=run, approver="alice", event_time=NOW
            )
        ],
        topic=stack.catalog.approvals,
    )
    granted = stack.decisions.wait_run(run, 2)[1]
    assert (granted.phase, granted.outcome, granted.approver) == (
        Phase.APPROVAL,
        Outcome.ALLOW,
        "alice",
    )
    assert granted.request_id == pending.request_id


def test_denied_approval_stops(stack: Stack) -> None:
    run = _run()
    stack.requests.send(
        [handoff(run, 1, "refund", "planner", "billing_agent", action="billing.refund.create")]
    )
    (pending,) = stack.decisions.wait_run(run, 1)
    stack.requests.send(
        [
            ApprovalDenied(
                approval_id=pending.approval_id, run_id=run, approver="alice", event_time=NOW
            )
        ],
        topic=stack.catalog.approvals,
    )
    assert stack.decisions.wait_run(run, 2)[1].reason == "approval_denied"


def test_approval_expires_by_timer_without_further_events(stack: Stack) -> None:
    run = _run()
    stack.requests.send(
        [handoff(run, 1, "refund", "planner", "billing_agent", action="billing.refund.create")]
    )
    decisions = stack.decisions.wait_run(run, 2, timeout=20)  # ttl 3 s, sweep every 1 s
    assert (decisions[1].outcome, decisions[1].reason) == (Outcome.STOP, "approval_expired")
    assert stack.stops.wait_run(run, 1)[0].reason == "approval_expired"


def test_redelivered_events_do_not_double_count(stack: Stack) -> None:
    run = _run()
    request = handoff(run, 1, "research", "planner", "researcher")
    done = HandoffCompleted(
        request_id=f"{run}-h1",
        run_id=run,
        task_id="research",
        agent="researcher",
        cost_usd=10.0,
        tool_calls=1,
        event_time=NOW,
    )
    stack.requests.send([request, request, done, done, done])
    wait_for(lambda: len(stack.decisions.for_run(run)) >= 5, 20, message="5 decisions")
    decisions = stack.decisions.for_run(run)
    assert len({d.decision_id for d in decisions}) == 2  # re-emitted, same ids
    assert max(d.spent_usd for d in decisions) == 10.0
    assert max(d.handoff_count for d in decisions) == 1
    stack.requests.send([handoff(run, 2, "write", "planner", "writer")])
    nxt = wait_for(
        lambda: [d for d in stack.decisions.for_run(run) if d.request_id == f"{run}-h2"],
        20,
        message="the next decision",
    )[0]
    assert (nxt.handoff_count, nxt.spent_usd) == (2, 10.0)


def test_crc32_producer_events_are_forwarded_to_the_runs_partition(stack: Stack) -> None:
    from tests.stack import EventSender

    # a run whose key CRC32 (librdkafka's default) puts on another partition than murmur2
    for i in range(200):
        run = f"run_crc_{uuid.uuid4().hex[:6]}_{i}"
        import zlib

        if zlib.crc32(run.encode()) % PARTITIONS != partition_for(run.encode(), PARTITIONS):
            break
    sender = EventSender(stack.bootstrap, stack.catalog.requests, partitioner="consistent_random")
    sender.send([handoff(run, i, f"t{i}", "planner", "researcher") for i in range(1, 10)])
    decisions = stack.decisions.wait_run(run, 9)
    assert [d.outcome for d in decisions].count(Outcome.ALLOW) == 8
    assert decisions[-1].reason == "handoff_budget_exceeded"
    assert {d.partition for d in decisions} == {partition_for(run.encode(), PARTITIONS)}


def test_compressed_events_from_any_client_are_decided(stack: Stack) -> None:
    from tests.stack import EventSender

    run = _run()
    # request ids by position: hash(codec) % 1000 (string hashes differ per process) gave
    # two codecs one request id in some processes, and the second was request_id_reused
    for n, codec in enumerate(("lz4", "snappy", "zstd", "gzip"), 1):
        sender = EventSender(stack.bootstrap, stack.catalog.requests)
        sender.producer = __import__("confluent_kafka").Producer(
            {
                "bootstrap.servers": stack.bootstrap,
                "partitioner": "murmur2_random",
                "compression.type": codec,
            }
        )
        sender.send([handoff(run, n, f"t_{codec}", "planner", "researcher")])
    decisions = stack.decisions.wait_run(run, 4)
    assert [d.outcome for d in decisions] == [Outcome.ALLOW] * 4
    assert all(w.alive() for w in stack.workers), stack.logs()


BAD_INPUTS = {
    "not_json": (b"this is not json", b"run_bad"),
    "unknown_type": (b'{"type": "handoff_teleported", "run_id": "run_bad"}', b"run_bad"),
    "schema": (b'{"type": "handoff_requested", "run_id": "run_bad"}', b"run_bad"),
    "oversized": (b'{"type": "handoff_requested", "pad": "' + b"x" * 70_000 + b'"}', b"run_bad"),
    "key_mismatch": (
        orjson.dumps(
            {"type": "run_finished", "run_id": "run_other", "event_time": NOW.isoformat()}
        ),
        b"run_bad",
    ),
}


@pytest.mark.parametrize("kind", [*sorted(BAD_INPUTS), "negative_cost", "missing_key"])
def test_bad_input_goes_to_dead_letter_and_worker_keeps_serving(stack: Stack, kind: str) -> None:
    marker = uuid.uuid4().hex
    if kind == "negative_cost":
        value = orjson.dumps(
            {
                "type": "handoff_completed",
                "request_id": marker,
                "run_id": "r",
                "task_id": "t",
                "agent": "a",
                "cost_usd": -5,
                "event_time": NOW.isoformat(),
            }
        )
        key: bytes | None = b"r"
    elif kind == "missing_key":
        # kcat -P without -K: this record once crash-looped every worker in turn
        value = handoff(marker, 1, "t", "planner", "researcher").to_json()
        key = None
    else:
        value, key = BAD_INPUTS[kind]
        value = value.replace(b"run_bad", marker.encode()) if kind != "oversized" else value
        key = marker.encode()
    stack.requests.send_raw(value, key)

    def dead_letter() -> dict[str, object] | None:
        for raw in stack.deadletters.records:
            env = orjson.loads(raw)
            if env["key"] == (key.decode() if key else None) and (
                env.get("original") or ""
            ).startswith(value[:200].decode(errors="replace")[:50]):
                return env  # type: ignore[no-any-return]
        return None

    env = wait_for(dead_letter, 20, message=f"dead letter for {kind}")
    expected_kind = "out_of_range" if kind == "negative_cost" else kind
    assert env["error_kind"] == expected_kind
    assert env["topic"] == stack.catalog.requests and isinstance(env["offset"], int)
    assert env["error"]
    run = _run()
    stack.requests.send([handoff(run, 1, "t", "planner", "researcher")])
    assert stack.decisions.wait_run(run, 1)[0].outcome == Outcome.ALLOW
    assert all(w.alive() for w in stack.workers), stack.logs()


def test_kill_switch_stops_run_until_released(stack: Stack) -> None:
    run = _run()
    base = [
        sys.executable,
        "-m",
        "baton.cli",
        "kill",
        "--run",
        run,
        "--bootstrap",
        stack.bootstrap,
        "--topic-prefix",
        stack.prefix,
        "--reason",
        "runaway",
    ]
    out = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    wait_for(
        lambda: any(d.reason == "kill_switch" for d in stack.decisions.for_run(run)),
        20,
        message="the kill switch record",
    )
    stack.requests.send([handoff(run, 1, "t1", "planner", "researcher")])
    killed = wait_for(
        lambda: [d for d in stack.decisions.for_run(run) if d.phase == Phase.PRE_HANDOFF],
        20,
        message="decision",
    )[0]
    assert (killed.outcome, killed.reason) == (Outcome.STOP, "killed")
    out = subprocess.run([*base, "--release"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    wait_for(
        lambda: any(d.reason == "kill_switch_released" for d in stack.decisions.for_run(run)),
        20,
        message="the release record",
    )
    stack.requests.send([handoff(run, 2, "t2", "planner", "researcher")])
    after = wait_for(
        lambda: [d for d in stack.decisions.for_run(run) if d.request_id == f"{run}-h2"],
        20,
        message="decision",
    )[0]
    assert after.outcome == Outcome.ALLOW


def test_kill_cli_names_the_unreachable_broker() -> None:
    from baton.streams.net import free_port

    port = free_port()
    out = subprocess.run(
        [sys.executable, "-m", "baton.cli", "kill", "--global", "--bootstrap", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"BATON_CONNECT_TIMEOUT_S": "2", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode != 0
    assert f"127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr
