"""A real governance stack per test module: topics, one `baton worker` process, collectors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from baton.streams.embedded import EmbeddedBroker
from baton.streams.topics import TopicCatalog
from tests.stack import Collector, EventSender, WorkerProcess, fresh_topics, wait_deciding

PARTITIONS = 4

TEST_POLICY = """\
multi_agent:
  max_agents_per_run: 4
  max_handoffs: 8
  max_delegation_depth: 3
  shared_max_usd: 30
  shared_max_tool_calls: 120
  require_approval_for:
    - billing.refund.create
  approval:
    ttl_seconds: 3
"""


@dataclass
class Stack:
    bootstrap: str
    prefix: str
    catalog: TopicCatalog
    workdir: Path
    workers: list[WorkerProcess]
    decisions: Collector
    stops: Collector
    deadletters: Collector
    requests: EventSender
    policy_path: Path
    guarantee: str = "at_least_once"

    def add_worker(self, name: str, extra_env: dict[str, str] | None = None) -> WorkerProcess:
        w = WorkerProcess(
            self.bootstrap,
            self.prefix,
            self.workdir,
            partitions=PARTITIONS,
            policy=self.policy_path,
            name=name,
            extra_env={"BATON_PROCESSING_GUARANTEE": self.guarantee, **(extra_env or {})},
        )
        self.workers.append(w)
        return w

    def logs(self) -> str:
        return "\n".join(f"--- {w.log_path.name}\n{w.log()}" for w in self.workers)


@contextmanager
def one_worker_stack(
    broker: EmbeddedBroker,
    workdir: Path,
    policy_yaml: str,
    prefix_letter: str,
    guarantee: str = "at_least_once",
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Fresh topics, collectors and one deciding worker under ``policy_yaml`` (its environment
    plus ``extra_env``); stopped and closed on exit."""
    import uuid

    prefix = f"{prefix_letter}{uuid.uuid4().hex[:8]}."
    policy_path = workdir / "policy.yaml"
    policy_path.write_text(policy_yaml)
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    s = Stack(
        broker.bootstrap,
        prefix,
        catalog,
        workdir,
        [],
        Collector(broker.bootstrap, catalog.decisions),
        Collector(broker.bootstrap, catalog.stops),
        Collector(broker.bootstrap, catalog.deadletter, decisions=False),
        EventSender(broker.bootstrap, catalog.requests),
        policy_path,
        guarantee,
    )
    try:
        w = s.add_worker("w1", extra_env)
        try:
            wait_deciding(broker.bootstrap, catalog)
        except Exception as exc:
            raise AssertionError(f"worker did not start: {exc}\n{w.log()}") from exc
        yield s
    finally:
        for w in s.workers:
            w.stop()
        s.decisions.close()
        s.stops.close()
        s.deadletters.close()


@pytest.fixture(scope="module", params=["at_least_once", "exactly_once"])
def stack(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """Every test of a module runs against a worker of each processing guarantee (the
    collectors read ``read_committed``: under exactly-once they see committed batches only)."""
    with one_worker_stack(
        broker, tmp_path_factory.mktemp("stack"), TEST_POLICY, "m", request.param
    ) as s:
        yield s
