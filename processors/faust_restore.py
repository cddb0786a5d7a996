"""The ``runs`` table's store: a changelog partition the worker takes is read by librdkafka
before Faust's recovery, which then reads only what came after.

Why: Faust's recovery applies a changelog one record at a time on the event loop (a task
for each record's wait, two log strings, a recovery-end check over every partition): 3.6k
records a second measured on the 2-core VM, so a worker restarted after 120k changelog
records decided again 45 s after its kill against ~8 s for a fresh one, while a plain
confluent consumer read the same records in 2.4 s. Every failover and every partition a
rebalance moves waits for that read, and no request on those partitions is decided
meanwhile (the SDK stops them at its timeout). On Tansu the changelog is never compacted,
so the wait grows with every state the worker ever wrote.

What it does: on a rebalance, before Faust's recovery asks where to start
(``TableManager.on_rebalance`` calls the tables first), the store reads each changelog
partition it is newly given, from its earliest offset to the end of its committed data
(``WorkerRuntime.committed_ends``: the end Faust's recovery reads to; a partition a
transaction left open ends the worker 78 there, as recovery would), with a read_committed
confluent consumer in a thread. The thread keeps each key's last record; the event loop
then applies them as Faust's memory store applies a batch (a record without a value deletes
its key; each key's partition noted), at once, and ``persisted_offset`` answers the last
offset applied, so Faust's recovery seeks there (its offsets are "last applied") and reads
the rest itself: its highwaters, its consistency check and its end are unchanged.

Guarantee: what the store holds for such a partition once Faust's recovery ends is what
Faust's own recovery would hold: the records of a contiguous prefix from the partition's
earliest offset, applied in offset order, then Faust's from the next offset. A read that
fails, goes back, makes no progress for ``STALL_S`` or runs past ``MAX_S`` (it runs in the
rebalance callback) claims only the prefix it applied, possibly none (``persisted_offset``
None: Faust reads the partition whole, as before).
Partitions the worker kept are left to Faust (its offsets from the last recovery stand).
``BATON_FAST_RESTORE=0`` turns it off.

With the workers' seal key (``app.state_gate``), both the read here and Faust's recovery
(``apply_changelog_batch``, which this store overrides even with ``BATON_FAST_RESTORE=0``)
take a run's records in offset order through the state gate (processors/state_gate.py): only
the workers' own newest record of each run, on its key's partition; the read's last word on a
run never replaces a newer state the worker holds, and a partition whose read failed applies
nothing (Faust reads it whole). What was not taken is one ERROR line per restore, at its end.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from faust import stores
from faust.stores import memory
from faust.types import TP

from baton.processors.faust_adapter import runtime_of
from baton.processors.state_gate import FLOOR, NotTaken, StateGate, drop_floors

__all__ = ["SCHEME", "RestoringStore", "read_changelog", "register"]

log = logging.getLogger("baton.processors.app")

SCHEME = "baton-memory"
_FLOOR = bytes((FLOOR,))
#: seconds without a new record before a partition's read is given up (its prefix kept)
STALL_S = 30.0
#: seconds the whole read may take: it runs inside the rebalance callback, where the consumer
#: fetches nothing (Faust's own recovery runs after it, fetching), so a huge changelog is
#: left to Faust past this (its prefix kept) rather than hold the group's poll interval
MAX_S = 120.0

#: key -> (partition, value or None): each key's last record in the range read
Latest = dict[Any, tuple[int, bytes | None]]


def read_changelog(
    kafka_config: Mapping[str, Any],
    topic: str,
    ends: Mapping[int, int],
    stall_s: float = STALL_S,
    max_s: float = MAX_S,
    gate: StateGate | None = None,
    notes: NotTaken | None = None,
) -> tuple[Latest, dict[int, int]]:
    """Each key's last record in ``topic``'s partitions from their start to ``ends``
    (exclusive), or with a ``gate`` what it makes of the key's records in order, and the last
    offset read of each partition read from its start without a gap (a partition absent:
    none to claim); the records the gate did not take are said in ``notes``."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    todo = {p: end for p, end in ends.items() if end > 0}
    latest: Latest = {}
    last: dict[int, int] = {}
    if not todo:
        return latest, last
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": f"baton-restore-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "log_level": 3,
        }
    )
    failed: set[int] = set()
    notes = NotTaken() if notes is None else notes
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        progress = started = time.monotonic()
        while todo and time.monotonic() - progress < stall_s and time.monotonic() - started < max_s:
            for msg in consumer.consume(10_000, 0.5):
                p = msg.partition()
                if p not in todo:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF and msg.offset() >= todo[p]:
                        del todo[p]
                    elif error.code() != KafkaError._PARTITION_EOF:
                        log.warning("restoring %s[%d]: %s", topic, p, error)
                        failed.add(p)
                        del todo[p]
                    continue
                offset = msg.offset()
                if offset >= todo[p]:  # past the committed end recovery reads to
                    del todo[p]
                    continue
                if offset <= last.get(p, -1):  # went back: the prefix is in doubt
                    failed.add(p)
                    del todo[p]
                    continue
                key, value = msg.key(), msg.value()
                if gate is None:
                    latest[key] = (p, value)
                else:
                    was = latest.get(key)
                    held = was and was[1]
                    taken = gate.admit(key, p, value, held, notes, f"{p}@{offset}")
                    if taken is not held:  # (not taken: nothing of the run changes)
                        latest[key] = (p, taken)
                last[p] = offset
                progress = time.monotonic()
    finally:
        consumer.close()
    for p in failed:
        last.pop(p, None)
    if failed:  # Faust reads those whole: what was read of them is not applied (h46a F7)
        latest = {k: v for k, v in latest.items() if v[0] not in failed}
    return latest, last


class RestoringStore(memory.Store):  # type: ignore[misc]
    """Faust's memory store, given the changelog partitions it is newly assigned by
    ``read_changelog`` before Faust's recovery (see the module docstring)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        #: changelog partition -> the last offset applied by the read (Faust's "persisted")
        self._restored: dict[TP, int] = {}
        #: changelog partitions whose keys this store holds from a recovery that ended
        self._held: set[TP] = set()
        #: runs a restore forgot (a due tombstone's deletion), held as marks until it ends
        self._floors: set[Any] = set()
        #: the records this restore did not take (both its paths), logged at its end
        self._not_taken = NotTaken()

    def persisted_offset(self, tp: TP) -> int | None:
        return self._restored.get(tp)

    async def on_rebalance(
        self, assigned: Any, revoked: Any, newly_assigned: Any, generation_id: int = 0
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        for tp in revoked:
            self._restored.pop(tp, None)
            self._held.discard(tp)
        config = getattr(self.app, "restore_config", None)
        if config is None:
            return
        topic = self.table.changelog_topic.get_topic_name()
        actives = {tp for tp in self.app.assignor.assigned_actives() if tp.topic == topic}
        todo = sorted(tp.partition for tp in actives - self._held)
        if not todo:
            return
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        ends_of = runtime_of(self.app).committed_ends
        gate = getattr(self.app, "state_gate", None)
        latest, last = await loop.run_in_executor(
            None, _read, config, ends_of, topic, todo, gate, self._not_taken
        )
        self._apply(latest, gate)
        for p, offset in last.items():
            self._restored[TP(topic, p)] = offset
        log.info(
            "restored %d runs from %d changelog partitions of %s in %.1f s (read to offsets "
            "%s) before Faust's recovery",
            sum(1 for _, value in latest.values() if value is not None),
            len(todo),
            topic,
            time.monotonic() - started,
            {p: last.get(p) for p in todo},
        )

    def _apply(self, latest: Latest, gate: StateGate | None = None) -> None:
        """Each key's last record, as ``memory.Store.apply_changelog_batch`` applies a batch;
        with a gate, none over a newer state this worker holds (h46a F3)."""
        data = self.data
        for key, (partition, value) in latest.items():
            if gate is not None and not gate.newer(value, data.get(key)):
                continue
            self._put(key, partition, value)

    def apply_changelog_batch(
        self, batch: Any, to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]
    ) -> None:
        """Faust's recovery's records, each through the worker's ``StateGate`` when it has
        one (processors/state_gate.py), else as Faust's memory store applies them."""
        gate: StateGate | None = getattr(self.app, "state_gate", None)
        if gate is None:
            return super().apply_changelog_batch(batch, to_key, to_value)  # type: ignore[no-any-return]
        data, notes = self.data, self._not_taken
        for event in batch:
            key, message = to_key(event.key), event.message
            at, held = f"{message.partition}@{message.offset}", data.get(key)
            value = gate.admit(key, message.partition, message.value, held, notes, at)
            if value is not held:  # (not taken: nothing of the run changes, its partition neither)
                self._put(key, message.partition, value)

    def _put(self, key: Any, partition: int, value: bytes | None) -> None:
        """The run ``key`` holds ``value`` (None: it is gone), as Faust's memory store puts a
        changelog record; a forgotten run's mark (the gate's) noted for the restore's end."""
        if value is None:
            self.data.pop(key, None)
            self._key_partition.pop(key, None)
            return
        self.data[key] = value
        self._key_partition[key] = partition
        if value[:1] == _FLOOR and getattr(self.app, "state_gate", None) is not None:
            self._floors.add(key)

    async def on_recovery_completed(self, active_tps: Any, standby_tps: Any) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        drop_floors(self.data, self._key_partition, self._floors)  # forgotten now
        self._floors.clear()
        say_not_taken(self.table.changelog_topic.get_topic_name(), self._not_taken)
        self._not_taken = NotTaken()
        self._restored.clear()  # from here on Faust's offsets for these partitions stand
        self._held = set(active_tps)


def say_not_taken(topic: str, notes: NotTaken) -> None:
    """Log the changelog records a restore did not take (processors/state_gate.py)."""
    if notes.count:
        more = f" and {notes.count - 5} more" if notes.count > 5 else ""
        log.error(
            "restoring %s: %d records not the workers' own newest, not taken (a run holding "
            "nothing else is refused: its events are state_unreadable): %s%s",
            topic,
            notes.count,
            "; ".join(notes.first),
            more,
        )


def _read(
    config: Mapping[str, Any],
    committed_ends: Callable[[dict[tuple[str, int], int]], dict[tuple[str, int], int]],
    topic: str,
    partitions: list[int],
    gate: StateGate | None = None,
    notes: NotTaken | None = None,
) -> tuple[Latest, dict[int, int]]:
    """``read_changelog`` to the ends Faust's recovery reads to: the high watermarks as
    ``committed_ends`` corrects them (the worker ends 78 there on a held partition)."""
    from confluent_kafka import Consumer, TopicPartition

    watermarks = Consumer({**config, "group.id": f"baton-restore-{uuid.uuid4().hex}"})
    try:
        high = {
            (topic, p): watermarks.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
    finally:
        watermarks.close()
    ends = committed_ends(high)
    return read_changelog(
        config, topic, {p: ends.get((topic, p), 0) for p in partitions}, gate=gate, notes=notes
    )


def register() -> None:
    """Make ``baton-memory://`` resolve to this store (idempotent)."""
    stores.STORES.aliases[SCHEME] = f"{__name__}:RestoringStore"
