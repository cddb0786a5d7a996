"""Reads the demo runs' stops from gov.stops and words them as ``baton alerts`` would."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

from confluent_kafka import Consumer, KafkaException, TopicPartition

from baton.schemas.decision import Decision
from baton.sinks.alerts import StopAlerter
from baton.streams.kafka import consumer_config

__all__ = ["SEED_RUN", "StopsReader"]


#: the seed's example run (its alert line reads "Multi-Agent run run_742 stopped: ...");
#: the other scenarios' runs carry a per-demo prefix so repeated demos never collide
SEED_RUN = "run_742"


class StopsReader:
    """Reads gov.stops from where it ends now, in a thread, keeping the stops of the demo's runs.

    The alert lines are the alerter's own (``StopAlerter``: one line per stop, storms folded),
    fed with each stop's arrival time, so the demo prints what ``baton alerts`` prints.
    """

    def __init__(self, kafka_config: dict[str, str], topic: str, run_prefix: str) -> None:
        self._prefix = run_prefix.encode()
        self._seed_run = SEED_RUN.encode()
        self._consumer = Consumer(
            consumer_config(
                kafka_config,
                f"baton-demo-{uuid.uuid4().hex[:8]}",
                {"fetch.wait.max.ms": 50, "enable.partition.eof": False},
            )
        )
        try:
            meta = self._consumer.list_topics(timeout=10)
            parts = sorted(meta.topics[topic].partitions) if topic in meta.topics else []
            assignment = []
            for p in parts:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=10, cached=False
                )
                assignment.append(TopicPartition(topic, p, max(high, 0)))
        except KafkaException:
            self._consumer.close()
            raise
        self._consumer.assign(assignment)
        self._lock = threading.Lock()
        self._stops: list[tuple[float, Decision]] = []
        self._taken = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-stops", daemon=True)
        self._thread.start()
        self.alerter = StopAlerter()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(500, timeout=0.1):
                key = msg.key() or b""
                if msg.error() is not None or not (
                    key.startswith(self._prefix) or key == self._seed_run
                ):
                    continue
                try:
                    decision = Decision.from_json(msg.value())
                except ValueError:
                    continue
                with self._lock:
                    self._stops.append((time.monotonic(), decision))

    def count(self, run_id: str | None = None) -> int:
        with self._lock:
            return sum(1 for _, d in self._stops if run_id is None or d.run_id == run_id)

    async def wait(self, n: int, run_id: str | None = None, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.count(run_id) < n:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def alert_lines(self, final: bool = False) -> list[str]:
        """What the alerter says about the stops that arrived since the last call."""
        with self._lock:
            fresh, self._taken = self._stops[self._taken :], len(self._stops)
        lines = []
        for arrived, decision in fresh:
            lines += [m.text for m in self.alerter.offer(decision, arrived)]
        now = time.monotonic()
        lines += [m.text for m in (self.alerter.flush(now) if final else self.alerter.tick(now))]
        return lines

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()
