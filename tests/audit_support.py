"""Audit test support: realistic decisions from the real (pure) engine, produced to Kafka."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from baton.processors.engine import approval_id_for, decide
from baton.schemas.decision import Decision
from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    HandoffCompleted,
    HandoffRequested,
    RunFinished,
)
from baton.schemas.policy import load_policy, parse_policy

__all__ = [
    "T0",
    "SinkProcess",
    "create_topic",
    "hostile_records",
    "limits_run",
    "produce_decisions",
    "produce_records",
    "scenario_decisions",
    "seed_run_742",
    "story_run",
]

T0 = datetime(2026, 11, 25, 9, 0, 0, tzinfo=UTC)

_APPROVAL_POLICY = """
multi_agent:
  max_agents_per_run: 4
  max_handoffs: 8
  max_delegation_depth: 3
  shared_max_usd: 5.0
  require_approval_for: ["billing.refund.*"]
"""


def _run(events: Iterable[object], policy_yaml: str | None = None) -> list[Decision]:
    policy = parse_policy(policy_yaml) if policy_yaml else load_policy(None)
    state = None
    out: list[Decision] = []
    for event in events:
        # Baton decides as events arrive: "now" is the event's own time here
        state, decisions = decide(state, event, policy, event.event_time)  # type: ignore[arg-type,attr-defined]
        out.extend(decisions)
    return out


def seed_run_742(tenant: str = "acme", start: datetime = T0) -> list[Decision]:
    """The seed's story: billing owns refund_check, then planner hands it to researcher."""

    def at(s: int) -> datetime:
        return start + timedelta(seconds=s)

    run = "run_742"
    return _run(
        [
            HandoffRequested(
                request_id=f"{run}-r1",
                run_id=run,
                tenant=tenant,
                task_id="refund_check",
                from_agent="planner",
                to_agent="billing",
                event_time=at(0),
            ),
            HandoffCompleted(
                request_id=f"{run}-r1",
                run_id=run,
                tenant=tenant,
                task_id="refund_check",
                agent="billing",
                cost_usd=0.25,
                tool_calls=2,
                event_time=at(1),
            ),
            HandoffRequested(
                request_id=f"{run}-r2",
                run_id=run,
                tenant=tenant,
                task_id="refund_check",
                from_agent="planner",
                to_agent="researcher",
                event_time=at(2),
            ),
        ]
    )


def story_run(run_id: str, tenant: str, start: datetime = T0) -> list[Decision]:
    """A run with handoffs, spend, a nested delegation, an approval and its grant, a finish."""

    def at(s: int) -> datetime:
        return start + timedelta(seconds=s)

    return _run(
        [
            HandoffRequested(
                request_id=f"{run_id}-a",
                run_id=run_id,
                tenant=tenant,
                task_id="plan",
                from_agent="orchestrator",
                to_agent="planner",
                event_time=at(0),
            ),
            HandoffCompleted(
                request_id=f"{run_id}-a",
                run_id=run_id,
                tenant=tenant,
                task_id="plan",
                agent="planner",
                cost_usd=0.10,
                tool_calls=1,
                event_time=at(1),
            ),
            HandoffRequested(
                request_id=f"{run_id}-b",
                run_id=run_id,
                tenant=tenant,
                task_id="research",
                parent_task_id="plan",
                from_agent="planner",
                to_agent="researcher",
                event_time=at(2),
            ),
            HandoffCompleted(
                request_id=f"{run_id}-b",
                run_id=run_id,
                tenant=tenant,
                task_id="research",
                agent="researcher",
                cost_usd=0.20,
                tool_calls=3,
                event_time=at(3),
            ),
            refund := HandoffRequested(
                request_id=f"{run_id}-c",
                run_id=run_id,
                tenant=tenant,
                task_id="refund",
                parent_task_id="research",
                from_agent="researcher",
                to_agent="billing",
                action="billing.refund.create",
                event_time=at(4),
            ),
            ApprovalGranted(
                approval_id=approval_id_for(refund),
                run_id=run_id,
                tenant=tenant,
                approver="alice",
                event_time=at(30),
            ),
            HandoffCompleted(
                request_id=f"{run_id}-c",
                run_id=run_id,
                tenant=tenant,
                task_id="refund",
                agent="billing",
                cost_usd=0.30,
                tool_calls=1,
                event_time=at(31),
            ),
            RunFinished(run_id=run_id, tenant=tenant, event_time=at(40)),
        ],
        _APPROVAL_POLICY,
    )


_TIGHT_POLICY = """
multi_agent:
  max_handoffs: 3
  max_delegation_depth: 2
  require_approval_for: ["billing.refund.*"]
"""


def limits_run(run_id: str, tenant: str, start: datetime = T0) -> list[Decision]:
    """A run that meets the limits: a denied approval, a too-deep delegation, then the
    handoff budget."""

    def at(s: int) -> datetime:
        return start + timedelta(seconds=s)

    def ask(
        n: str, task: str, parent: str | None, frm: str, to: str, s: int, action: str | None = None
    ) -> HandoffRequested:
        return HandoffRequested(
            request_id=f"{run_id}-{n}",
            run_id=run_id,
            tenant=tenant,
            task_id=task,
            parent_task_id=parent,
            from_agent=frm,
            to_agent=to,
            action=action,
            event_time=at(s),
        )

    return _run(
        [
            ask("a", "plan", None, "orchestrator", "planner", 0),
            refund := ask(
                "b", "refund", "plan", "planner", "billing", 1, action="billing.refund.create"
            ),
            ApprovalDenied(
                approval_id=approval_id_for(refund),
                run_id=run_id,
                tenant=tenant,
                approver="alice",
                event_time=at(20),
            ),
            ask("c", "research", "plan", "planner", "researcher", 21),
            ask("d", "deep", "research", "researcher", "analyst", 22),
            ask("e", "notes", "plan", "planner", "writer", 23),
            ask("f", "more", "plan", "planner", "writer", 24),
        ],
        _TIGHT_POLICY,
    )


def scenario_decisions(
    runs: int = 20, tenants: Iterable[str] = ("acme", "globex"), start: datetime = T0
) -> list[Decision]:
    """``runs`` story runs spread over ``tenants``, plus the seed's run_742."""
    names = list(tenants)
    out = seed_run_742(names[0], start)
    for i in range(runs):
        tenant, begin = names[i % len(names)], start + timedelta(seconds=i)
        if i % 3 == 2:
            out.extend(limits_run(f"run_{i:04d}", tenant, begin))
        else:
            out.extend(story_run(f"run_{i:04d}", tenant, begin))
    return out


def produce_decisions(
    bootstrap: str, topic: str, decisions: Iterable[Decision], duplicate_every: int = 0
) -> int:
    """Produce ``decisions`` to ``topic`` keyed by run_id (murmur2, as the worker does);
    every ``duplicate_every``-th one twice, as a redelivery would. Returns records sent."""
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5}
    )
    sent = 0
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for i, decision in enumerate(decisions):
        copies = 2 if duplicate_every and i % duplicate_every == 0 else 1
        for _ in range(copies):
            producer.produce(
                topic, decision.to_json(), key=decision.run_id.encode(), on_delivery=on_delivery
            )
            producer.poll(0)
            sent += 1
    remaining = producer.flush(30)
    assert remaining == 0 and not errors, f"produce failed: {remaining} unsent, {errors[:3]}"
    return sent


def produce_records(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> list[tuple[int, int]]:
    """Produce ``(key, value)`` records in order (murmur2; a None key goes anywhere);
    returns where each one landed, ``(partition, offset)``, in the same order."""
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5}
    )
    landed: dict[int, tuple[int, int]] = {}
    errors: list[str] = []

    def delivered(i: int) -> Any:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                landed[i] = (msg.partition(), msg.offset())

        return on_delivery

    n = 0
    for n, (key, value) in enumerate(records, 1):
        producer.produce(topic, value, key=key, on_delivery=delivered(n - 1))
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0 and not errors, f"produce failed: {remaining} unsent, {errors[:3]}"
    return [landed[i] for i in range(n)]


def _decision_json(decision: Decision, **raw_fields: str) -> bytes:
    """``decision`` as JSON with some fields replaced by raw JSON text (NaN, 2**63, ...)."""
    text = orjson.dumps({k: v for k, v in decision.to_dict().items() if k not in raw_fields})
    extra = "".join(f',"{k}":{v}' for k, v in raw_fields.items())
    return text[:-1] + extra.encode() + b"}"


def hostile_records(template: Decision) -> list[tuple[bytes | None, bytes | None, str]]:
    """What an attacker with write access to gov.decisions can publish, as
    ``(key, value, the error_kind the sink must reject it with)``. ``template`` is a good
    decision (decided now) each forged record starts from; tenant "evil" is for a
    server-side CHECK constraint the tests add (refused by ClickHouse itself)."""
    key = template.run_id.encode()
    now = template.decided_at or datetime.now(UTC)

    def forged(n: int, **raw: str) -> bytes:
        return _decision_json(replace(template, decision_id=f"forged-{n}"), **raw)

    records: list[tuple[bytes | None, bytes | None, str]] = [
        (key, b"\xff\xfe\x00 not json", "invalid_record"),
        (None, None, "invalid_record"),  # a tombstone, no key
        (None, b"[]", "invalid_record"),
        (key, forged(1, depth='"deep"'), "invalid_record"),
        (key, forged(2, detail="[" * 70_000 + "]" * 70_000), "invalid_record"),
        (key, forged(3, spent_usd="NaN"), "out_of_range"),
        (key, forged(4, spent_usd="1e308"), "out_of_range"),
        (key, forged(5, spent_usd="1e20"), "out_of_range"),
        (key, forged(6, tool_calls=str(2**63)), "out_of_range"),
        (key, forged(7, depth="70000"), "out_of_range"),
        (key, forged(8, handoff_count="-1"), "out_of_range"),
        (key, forged(9, event_time='"9999-12-31T23:59:59Z"'), "out_of_range"),
        (key, forged(10, decided_at='"1971-01-01T00:00:00Z"'), "decided_at_out_of_window"),
        (
            key,
            forged(11, decided_at=f'"{(now + timedelta(days=30)).isoformat()}"'),
            "decided_at_out_of_window",
        ),
        (key, forged(12, tenant='"evil"'), "refused_by_clickhouse"),
    ]
    return records


def chunks(items: list[Decision], size: int) -> Iterator[list[Decision]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def create_topic(bootstrap: str, name: str, partitions: int = 4) -> None:
    """Create ``name`` (no-op when it exists) and wait until it is usable."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    for future in futures.values():
        try:
            future.result(15)
        except Exception as exc:  # an existing topic is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


class SinkProcess:
    """`baton sink` as a real subprocess, its output in ``log_path``.

    With a chDB DSN it holds the directory and serves SQL on ``port`` (``http`` is a client of
    that endpoint, ready when the constructor returns); with ``port=None`` it serves nothing
    and the constructor returns as soon as the process runs.
    """

    def __init__(self, env: dict[str, str], port: int | None, log_path: Path) -> None:
        from tests.helpers import wait_for

        self.port = port
        self.env = env
        self.log_path = log_path
        self.log = log_path.open("ab")
        sql_port = "off" if port is None else str(port)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "baton.cli", "-v", "sink", "--sql-port", sql_port],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.http: Any = None
        if port is not None:
            self.http = wait_for(self._connect, timeout=60, message=self._why)

    def _connect(self) -> Any:
        import clickhouse_connect

        assert self.proc.poll() is None, f"sink exited with {self.proc.returncode}"
        # a plain ping first: clickhouse-connect logs a warning per refused connection
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=2):
            pass
        from baton.sinks.clickhouse import parse_dsn, read_endpoint

        # the endpoint's DSN, with the token of this start, from its file in the directory
        chdb_path = parse_dsn(self.env["BATON_CLICKHOUSE_DSN"]).chdb_path
        dsn = read_endpoint(chdb_path) if chdb_path is not None else None
        assert dsn is not None and dsn.endswith(f":{self.port}"), "the endpoint file"
        return clickhouse_connect.get_client(dsn=dsn)

    def _why(self) -> str:
        return f"the sink's SQL endpoint; log:\n{self.output()[-3000:]}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def count(self, final: bool = True, table: str = "decisions") -> int:
        return int(
            self.http.command(f"SELECT count() FROM governance.{table}{' FINAL' if final else ''}")
        )

    def kill9(self) -> None:
        if self.http is not None:
            self.http.close()
        self.proc.kill()  # SIGKILL: no flush, no commit, no close
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> int:
        if self.http is not None:
            self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.log.close()
        return code
