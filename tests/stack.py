"""Real Baton processes for integration tests: worker subprocesses and a decision collector."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from baton.processors.probe import wait_until_deciding
from baton.schemas.decision import Decision
from baton.schemas.events import _Event
from baton.streams.net import free_port
from baton.streams.topics import TopicCatalog, ensure_topics
from tests.helpers import wait_for

__all__ = [
    "BatonProcess",
    "Collector",
    "EventSender",
    "SinkProcess",
    "WorkerProcess",
    "fresh_topics",
    "wait_deciding",
]


def fresh_topics(bootstrap: str, prefix: str, partitions: int) -> TopicCatalog:
    """A test's own topics under ``prefix`` (``partitions`` each), created on the broker."""
    catalog = TopicCatalog(prefix=prefix, partitions=partitions, replication=1)
    ensure_topics({"bootstrap.servers": bootstrap}, catalog, timeout=10)
    return catalog


def wait_deciding(bootstrap: str, catalog: TopicCatalog, timeout: float = 60.0) -> None:
    """Return once a worker decides on every partition of ``catalog``'s requests topic."""
    wait_until_deciding(
        {"bootstrap.servers": bootstrap},
        catalog.requests,
        catalog.decisions,
        catalog.partitions,
        timeout,
    )


def wait_committed(
    bootstrap: str, group: str, topic: str, partitions: int, timeout: float = 30.0
) -> None:
    """Until ``group`` has committed every record of ``topic`` (a test or bench that kills a
    worker and must not see its records read again)."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    parts = [TopicPartition(topic, p) for p in range(partitions)]

    def behind() -> int:
        committed = reader.committed(parts, timeout=10)
        return sum(
            reader.get_watermark_offsets(tp, timeout=10)[1] - max(tp.offset, 0) for tp in committed
        )

    try:
        # <= 0: Tansu's ListOffsets answers a batch's first offset + 1, short of the end
        wait_for(lambda: behind() <= 0, timeout, message=lambda: f"{behind()} uncommitted")
    finally:
        reader.close()


def open_transaction(bootstrap: str, topic: str, partition: int = -1) -> Producer:
    """A transactional producer that has sent one record to ``topic`` and never commits: Tansu
    never aborts it, so a read_committed reader of that partition gets nothing past it. Keep
    the producer referenced while the transaction must stay open."""
    attacker = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"x-{uuid.uuid4()}"})
    attacker.init_transactions(30)
    attacker.begin_transaction()
    attacker.produce(topic, b"sent in a transaction never committed", partition=partition)
    assert attacker.flush(10) == 0
    return attacker


class WorkerProcess:
    """`baton worker` as a real subprocess; its log is kept for failure messages."""

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        workdir: Path,
        *,
        partitions: int = 4,
        policy: Path | None = None,
        name: str = "w1",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = workdir / f"worker-{name}.log"
        env = {
            **os.environ,
            "BATON_BOOTSTRAP": bootstrap,
            "BATON_TOPIC_PREFIX": prefix,
            "BATON_PARTITIONS": str(partitions),
            "BATON_SESSION_TIMEOUT_S": "6",
            "BATON_APP_ID": f"baton-{prefix.rstrip('.')}",
            "BATON_WORKER_DATA_DIR": str(workdir / f"data-{name}"),
            "BATON_WEB_PORT": str(free_port()),
            **(extra_env or {}),
        }
        if policy is not None:
            env["BATON_POLICY"] = str(policy)
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "baton.cli", "-v", "worker"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class Collector:
    """Reads a topic from the beginning in a thread and keeps every record, parsed."""

    def __init__(self, bootstrap: str, topic: str, decisions: bool = True) -> None:
        self.topic = topic
        self._decisions = decisions
        self.records: list[Decision | bytes] = []
        self.by_run: dict[str, list[Decision]] = defaultdict(list)
        #: run_id -> (partition, offset) of each of its records, for failure messages
        self.positions: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"c-{topic}",
                "enable.auto.commit": False,
                "log_level": 0,
            }
        )
        meta = wait_for(
            lambda: self._consumer.list_topics(topic, timeout=5).topics.get(topic),
            10,
            message=f"topic {topic}",
        )
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.1)
            if msg is None or msg.error():
                if msg is not None and msg.error().code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(msg.error())
                continue
            with self._lock:
                if self._decisions:
                    d = Decision.from_json(msg.value())
                    self.records.append(d)
                    self.by_run[d.run_id].append(d)
                    self.positions[d.run_id].append((msg.partition(), msg.offset()))
                else:
                    self.records.append(msg.value())

    def for_run(self, run_id: str) -> list[Decision]:
        with self._lock:
            return list(self.by_run.get(run_id, ()))

    def wait_run(self, run_id: str, n: int, timeout: float = 30.0) -> list[Decision]:
        return wait_for(
            lambda: len(self.for_run(run_id)) >= n and self.for_run(run_id),
            timeout,
            message=lambda: (
                f"{n} decisions of {run_id}: "
                f"{[(d.phase, d.outcome, d.reason) for d in self.for_run(run_id)]}"
            ),
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


class EventSender:
    """Publishes events keyed by run_id with the murmur2 partitioner (like Faust)."""

    def __init__(self, bootstrap: str, topic: str, partitioner: str = "murmur2_random") -> None:
        self.topic = topic
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "partitioner": partitioner, "linger.ms": 2}
        )

    def send(self, events: Iterable[_Event], topic: str | None = None) -> None:
        for e in events:
            self.producer.produce(topic or self.topic, e.to_json(), e.run_id.encode())  # type: ignore[attr-defined]
            self.producer.poll(0)
        assert self.producer.flush(10) == 0

    def send_raw(self, value: bytes, key: bytes | None, topic: str | None = None) -> None:
        self.producer.produce(topic or self.topic, value, key)
        assert self.producer.flush(10) == 0


class BatonProcess:
    """A ``baton`` command as a real subprocess (``-v``); its output is kept in ``log_path``."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "baton.cli", "-v", *args],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def log(self, tail: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM (SIGKILL after 20 s); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


class SinkProcess(BatonProcess):
    """``baton sink`` as a real subprocess: it holds the chDB directory ``chdb_dir`` and serves
    SQL on ``sql_port`` (query it with :meth:`query` once :meth:`wait_ready` returned)."""

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        chdb_dir: Path,
        log_path: Path,
        *,
        partitions: int = 4,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.dsn = f"chdb://{chdb_dir}"
        super().__init__(
            ["sink", "--sql-port", str(self.port), "--report-every", "5"],
            {
                "BATON_BOOTSTRAP": bootstrap,
                "BATON_TOPIC_PREFIX": prefix,
                "BATON_PARTITIONS": str(partitions),
                "BATON_APP_ID": f"baton-{prefix.rstrip('.')}",
                "BATON_CLICKHOUSE_DSN": self.dsn,
                "BATON_SINK_BATCH_TIMEOUT_S": "0.2",
                "BATON_SESSION_TIMEOUT_S": "6",
                **(extra_env or {}),
            },
            log_path,
        )
        self.http: Any = None

    def wait_ready(self, timeout: float = 60.0) -> None:
        def connect() -> Any:
            assert self.alive(), f"sink exited with {self.proc.returncode}"
            # a plain ping first: clickhouse-connect logs a warning per refused connection
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=2):
                pass
            from baton.sinks.clickhouse import connect

            # through the endpoint the sink registers in its chDB directory (with its token)
            return connect(self.dsn)

        self.http = wait_for(
            connect, timeout, interval=0.2, message=lambda: f"the sink's SQL endpoint\n{self.log()}"
        )

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.http.query(sql).result_rows]

    def stop(self) -> int:
        if self.http is not None:
            self.http.close()
        return super().stop()
