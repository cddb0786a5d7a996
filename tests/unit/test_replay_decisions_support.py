"""gov.decisions as workers write it, and a stand-in Consumer that reads it (no Kafka), for the
tests of `baton replay --from-kafka` (cli/replay_decisions.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import orjson
import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.recorded import policy_in_force
from baton.processors.replay import Recorded
from baton.processors.state import RunState
from baton.schemas.decision import Decision
from baton.schemas.events import ApprovalDenied, ApprovalGranted, RunEvent
from baton.schemas.policy import Policy
from baton.schemas.record_mac import RecordMac
from baton.streams.partitioner import partition_for
from tests.unit.test_engine_support import at

KEY = b"decisions-chain-key"
TOPIC = "gov.decisions"
APPROVALS = "gov.approvals"


class DecisionsTopic:
    """gov.decisions of ``partitions`` partitions: (key, value) per offset, and each
    partition's low watermark (retention's cut: the records before it are gone)."""

    def __init__(self, partitions: int = 2) -> None:
        self.partitions = partitions
        self.records: dict[int, list[tuple[bytes | None, bytes | None]]] = {
            p: [] for p in range(partitions)
        }
        self.lows = dict.fromkeys(range(partitions), 0)

    def append(self, key: bytes | None, value: bytes | None, partition: int | None = None) -> int:
        """Append a record (on its key's partition unless ``partition``); its offset."""
        if partition is None:
            partition = partition_for(key or b"", self.partitions)
        self.records[partition].append((key, value))
        return len(self.records[partition]) - 1

    def publish(self, d: Decision) -> None:
        """A decision as a worker with BATON_AUDIT_CHAIN_KEY=KEY publishes it: keyed by its run
        id, with its audit MAC (``schemas/record_mac``)."""
        self.append(d.run_id.encode(), RecordMac(KEY).marked(d.to_json()))

    def trim(self, partition: int, low: int) -> None:
        self.lows[partition] = low


class Worker:
    """One worker's batch step over every partition, publishing to ``topic`` as it decides
    (the ``policy_in_force`` record first, as a worker at its start)."""

    def __init__(
        self,
        topic: DecisionsTopic,
        policy: Policy,
        name: str = "w",
        key: bytes = KEY,
        **options: Any,
    ) -> None:
        self.topic = topic
        self.states: dict[bytes, RunState] = {}
        self.proc = BatchProcessor(
            policy,
            topic.partitions,
            self.states,
            worker=name,
            chain_key=key,
            approvals_topic=APPROVALS,
            **options,
        )
        self.offsets: dict[tuple[str, int], int] = {}
        self.published: list[Decision] = []
        topic.publish(policy_in_force(policy, at(0), name))

    def decide(
        self, event: RunEvent, now: datetime | float, again: int | None = None
    ) -> list[Decision]:
        """Decide ``event`` (read from its run's partition) at ``now`` and publish; ``again``:
        the offset it was read at before (a redelivery), else the next one."""
        when = at(now) if isinstance(now, int | float) else now
        name = APPROVALS if isinstance(event, ApprovalGranted | ApprovalDenied) else "requests"
        p = partition_for(event.run_id.encode(), self.topic.partitions)
        offset = self.offsets.get((name, p), 0) if again is None else again
        if again is None:
            self.offsets[(name, p)] = offset + 1
        rec = InputRecord(name, p, offset, event.run_id.encode(), event.to_json())
        out = self.proc.process([rec], when)
        assert not out.dead_letters, out.dead_letters
        decided = [d for _, d in out.decisions]
        for d in decided:
            self.topic.publish(d)
        self.published += decided
        return decided


def json_with(d: Decision, **changes: Any) -> bytes:
    """``d``'s record with ``changes`` written into its JSON (any value: a writer's record)."""
    doc = orjson.loads(d.to_json())
    doc.update({k: v.isoformat() if isinstance(v, datetime) else v for k, v in changes.items()})
    return orjson.dumps(doc)


def audit_rows(published: Iterable[Decision]) -> list[Recorded]:
    """What the audit holds of ``published`` (one row per decision id, no re-emission), in
    the order the audit replay reads it."""
    from tests.unit.test_replay import stored

    return sorted(stored(list(published)), key=lambda r: (r.run_id, r.decided_at))


class _Error:
    def __init__(self, code: int) -> None:
        self._code = code

    def code(self) -> int:
        return self._code

    def __str__(self) -> str:
        return f"error {self._code}"


class _Message:
    def __init__(self, partition: int, offset: int, key: Any, value: Any, eof: bool = False):
        from confluent_kafka import KafkaError

        self._where = (partition, offset)
        self._key, self._value = key, value
        self._error = _Error(KafkaError._PARTITION_EOF) if eof else None

    def error(self) -> _Error | None:
        return self._error

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._where[0]

    def offset(self) -> int:
        return self._where[1]

    def key(self) -> Any:
        return self._key

    def value(self) -> Any:
        return self._value


def stand_in_kafka(
    monkeypatch: pytest.MonkeyPatch,
    topic: DecisionsTopic,
    polled: list[tuple[int, int]] | None = None,
    written: Callable[[int, int], None] | None = None,
    late: bool = False,
    fetched: int | None = None,
) -> None:
    """``confluent_kafka.Consumer`` replaced by one reading ``topic`` (its messages made as
    polled); ``polled`` (given): each (partition, offset) read; ``written(partition,
    offset)``: called as each is polled (a live writer appending meanwhile); ``late``: after
    each assign, the partition read before says its last record and its end again first
    (librdkafka's queue holding them past an unassign); ``fetched``: the high watermark a
    fetch reports (else the partition's end)."""
    import confluent_kafka

    import baton.streams.net

    class _Consumer:
        def __init__(self, config: dict) -> None:
            self._at: tuple[int, int] | None = None
            self._before: tuple[int, int] | None = None
            self._late: list[_Message] = []

        def list_topics(self, name: str, timeout: float) -> object:
            parts = dict.fromkeys(range(topic.partitions))
            meta = type("Topic", (), {"error": None, "partitions": parts})()
            return type("Meta", (), {"topics": {name: meta}})()

        def get_watermark_offsets(self, tp: Any, timeout: float = 0, cached: bool = False):
            p = tp.partition
            end = len(topic.records[p])
            return topic.lows[p], fetched if cached and fetched is not None else end

        def assign(self, parts: list) -> None:
            (tp,) = parts
            self._at = (tp.partition, max(tp.offset, topic.lows[tp.partition]))
            if late and self._before is not None:
                p, end = self._before
                last = topic.records[p][end - 1] if end else (None, None)
                self._late = [_Message(p, end - 1, *last), _Message(p, end, None, None, True)]

        def unassign(self) -> None:
            self._before = (self._at[0], len(topic.records[self._at[0]])) if self._at else None
            self._at = None

        def poll(self, timeout: float) -> _Message | None:
            if self._late:
                return self._late.pop(0)
            assert self._at is not None
            p, offset = self._at
            if offset >= len(topic.records[p]):
                return _Message(p, offset, None, None, eof=True)
            self._at = (p, offset + 1)
            if polled is not None:
                polled.append((p, offset))
            if written is not None:
                written(p, offset)
            return _Message(p, offset, *topic.records[p][offset])

        def close(self) -> None:
            pass

    monkeypatch.setattr(confluent_kafka, "Consumer", _Consumer)
    monkeypatch.setattr(baton.streams.net, "check_reachable", lambda *a, **k: None)
