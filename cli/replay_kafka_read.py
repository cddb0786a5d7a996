"""The records `baton replay --from-kafka` reads: those in the range, and what lies before it.

Every partition is read from its start to its end (its first fetch's high watermark), in offset
order, at its *clock* (``processors.replay_read_order``); what a record read before the range
(or in a trimmed partition's window) says about its run is kept (:func:`read_topics`), the
records in the range are returned for ``replay_kafka.decide_topics``. A record read before the
range is kept by its place (partition, offset, read time), not its bytes, and those of the runs
that go on in the range are read again at the end (H3, session 19: 1M records before ``--since``
were held whole, ~600 MB).
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Any

from baton.cli.replay_kafka_kept import Kept, KeptRuns, Said
from baton.cli.replay_kafka_scope import ANSWERS, decided_here, run_of
from baton.processors.batch import InputRecord
from baton.processors.replay_read_late import LATE_AFTER_S
from baton.processors.replay_read_order import PartitionClock, Stamped
from baton.schemas.settings import Settings

__all__ = ["read_topics", "replay_consumer", "topic_partitions"]


def read_topics(
    settings: Settings,
    topics: list[str],
    since: datetime | None,
    until: datetime | None,
    latest_ms: int,
    isolation: str = "read_committed",
    tenants: bool = False,
    trimmed_s: float | None = None,
    forget_s: float = math.inf,
    partitions: int = 1,
    approvals: str | None = None,
    answered: set[str] | None = None,
    late: dict[tuple[str, int, int], int] | None = None,
    cut_late: set[str] | None = None,
) -> tuple[list[Stamped], dict[str, str | None]]:
    """(read time ms, topic, record) of ``topics`` read in the range (``since`` to ``until``;
    None: no bound), after those read before it of the runs that go on in it (every record
    of a partition is read: such a run is replayed from its first record, as the worker
    decided it; a writer who predicts a run id seeds it before ``since`` with a request or
    a completion, and the run was "begun before the range", partial, its change hidden; one
    idle longer than ``trimmed_s`` before the range, evicted by the worker, is not:
    :class:`KeptRuns`); and the runs that may have begun in what a trimmed partition lost
    (below; with ``tenants``, each with the tenant of its first record that is its run's
    event before ``since``, else None). A record's read time is its partition's clock
    (``processors.replay_read_order``: the running maximum of the stamps in offset order,
    ``latest_ms`` its bound; a record whose own stamp is out of the bound keeps that stamp,
    for decide_topics to name its run): along a partition it never goes back, so the range
    is one stretch of each partition, and a record stamped early amid it (a writer of the
    topic) neither begins its run before the range nor leaves a gap in a run's history.
    Every partition is read from its start to its end. ``isolation``: as the worker reads
    these topics (gov.control read_uncommitted, as its control follower: a transaction left
    open there must not hide the commands after it). ``trimmed_s``: a partition whose first
    record read is not at offset 0 lost its start (retention, a deletion); the runs with a
    record read within this many seconds (the workers' run_retention_s) of its clock's
    first stamp may have begun in what is gone, and are counted as begun before the range
    (a run idle longer was evicted by then: the worker stopped its late handoff under
    either policy; one idle longer than ``forget_s``, its tombstone forgotten, is a new run
    from its next record). Only a record the worker decided as its run's event where it was read
    (``decided_here``: ``partitions``, ``approvals`` as the workers') begins a run in such
    a window; one that answers an approval (a grant or denial) adds its run to ``answered``
    instead (given). ``late`` (given): the own stamp of each record returned that is read
    more than LATE_AFTER_S after it; ``cut_late`` (given): the runs of the records read at
    or after ``until`` though stamped more than LATE_AFTER_S before it (a stamp ahead amid
    the partition moved its clock on: the worker read them in the range, so the run's
    history in it may lack them)."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    from baton.schemas.errors import BrokerUnavailable

    consumer = replay_consumer(settings, isolation)
    try:
        wanted: list[TopicPartition] = []
        for topic in topics:
            parts = topic_partitions(consumer, topic, settings)
            wanted += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts]
        open_parts = {(tp.topic, tp.partition) for tp in wanted}
        consumer.assign(wanted)
        start_ms = int(since.timestamp() * 1000) if since is not None else None
        stop_ms = int(until.timestamp() * 1000) if until is not None else None
        out: list[Stamped] = []
        kept = KeptRuns((trimmed_s or math.inf) * 1000, forget_s * 1000)
        before: dict[str, str | None] = {}

        def known(run: str, early: bool) -> bool:
            # the run's beginning is settled (with tenants, before the range: its tenant too)
            return before.get(run) is not None if tenants and early else run in before

        def says(event: Any, early: bool) -> Said:
            # what a record the worker decided as its run's event says about the run
            answer = answered is not None and type(event) in ANSWERS
            return answer, event.run_id, event.tenant if tenants and early else None

        def settle(said: Said) -> None:
            answer, run_id, tenant = said
            if answer and answered is not None:
                # read before the range (or in a trimmed window) by its partition's clock,
                # not known to be before the run's first request (decide_topics)
                answered.add(run_id)
            else:
                before[run_id] = tenant

        def begun(rec: InputRecord, early: bool) -> None:
            # only a record the worker decided as its run's event where it was read: a
            # dead letter, or an event forwarded to its run's partition (decided when
            # its copy is read there), under a run's key tells nothing about the run
            if not known(run_of(rec.key), early) and (
                event := decided_here(rec, partitions, approvals)
            ):
                settle(says(event, early))

        def note(run: str, rec: InputRecord) -> None:
            # what begun(rec, True) would do when the run is dropped, without its bytes
            if run in kept.closed or not (event := decided_here(rec, partitions, approvals)):
                return
            kept.said.setdefault(run, []).append(told := says(event, True))
            if not told[0] and (told[2] is not None or not tenants):
                kept.closed.add(run)  # known begun after it: the later ones say nothing

        def said(run: str) -> None:
            # begun(old, True) for each record kept of the run, dropped
            for kept_said in kept.drop(run):
                if known(run, True):
                    return
                settle(kept_said)

        #: the partitions read to the range (their first record in it) or to their end
        reached: set[tuple[str, int]] = set()

        def evict_idle() -> None:
            # once no partition has a record before the range left, a run idle past the
            # horizon before it is partial if it goes on in it, and nothing if it does not:
            # its records are not held for the rest of the read (H3, session 19: a burst
            # hours before --since, then quiet, was all held; 1M records: 599 MB)
            if start_ms is None or len(reached) < len(wanted) or kept.idle_done:
                return
            kept.idle_done = True
            for run in kept.idle_before(start_ms):
                said(run)

        def polled() -> Any:
            """The consumer's next message; BrokerUnavailable when none comes in time."""
            msg = consumer.poll(settings.connect_timeout_s)
            if msg is None:
                raise BrokerUnavailable(
                    f"no answer from Kafka at {settings.bootstrap} within "
                    f"{settings.connect_timeout_s:g} s while reading {', '.join(topics)}"
                )
            return msg

        def read_again(places: list[tuple[str, Kept]]) -> list[Stamped]:
            # the kept records of the runs that go on in the range, by their offsets; each
            # must still be its run's (a partition made again between the reads, a topic
            # recreated or Tansu restarted, holds another record there: H6, session 19)
            need: dict[tuple[str, int], dict[int, tuple[int, str]]] = {}
            for run, (at, topic, partition, offset) in places:
                need.setdefault((topic, partition), {})[offset] = (at, run)
            last = {where: max(offsets) for where, offsets in need.items()}
            consumer.assign([TopicPartition(*w, min(o)) for w, o in need.items()])
            found: list[Stamped] = []
            while need:
                msg = polled()
                where = (msg.topic(), msg.partition())
                if where not in need:
                    continue
                error = msg.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    # named as itself: "gone" is what the partition's end before a kept
                    # place says, not an authorization or a transport error
                    raise BrokerUnavailable(f"reading {where[0]}[{where[1]}] again: {error}")
                if error is None and msg.offset() <= last[where]:
                    if (wanted := need[where].pop(msg.offset(), None)) is not None:
                        if run_of(msg.key()) != wanted[1]:
                            raise BrokerUnavailable(
                                f"reading {where[0]}[{where[1]}] again: offset {msg.offset()} "
                                "holds another run's record than it did (the topic made "
                                "again, or the broker restarted); replay again"
                            )
                        rec = InputRecord(*where, msg.offset(), msg.key(), msg.value())
                        found.append((wanted[0], where[0], rec))
                    if need[where]:
                        continue
                if need.pop(where):  # its end before a record read once
                    raise BrokerUnavailable(
                        f"reading {where[0]}[{where[1]}] again: a record read before the "
                        "range is gone (retention, a deletion); replay again"
                    )
            return found

        clocks: dict[tuple[str, int], PartitionClock] = {}
        #: partition -> the read time its trimmed window ends at (None: read from offset 0)
        cut: dict[tuple[str, int], float | None] = {}
        #: partition -> its end: the high watermark of its first fetch (a fetch's is right
        #: on Tansu, ListOffsets' not: streams/kafka.py); a live writer is not followed past
        #: it (H6, session 19: the read chased the writer, and took records written after
        #: the command started)
        ends: dict[tuple[str, int], int] = {}

        def ended(where: tuple[str, int]) -> None:
            open_parts.discard(where)
            reached.add(where)
            evict_idle()

        while open_parts:
            msg = polled()
            where = (msg.topic(), msg.partition())
            if where not in open_parts:
                continue  # read to its end already: what a writer added since is not read
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    ended(where)
                    continue
                raise BrokerUnavailable(f"reading {where[0]}[{where[1]}]: {msg.error()}")
            if where not in ends:
                ends[where] = consumer.get_watermark_offsets(TopicPartition(*where), cached=True)[1]
            if 0 <= ends[where] <= msg.offset():
                ended(where)
                continue
            ts = msg.timestamp()[1]
            clock = clocks.setdefault(where, PartitionClock())
            stamped = clock.read(ts, latest_ms)
            if where not in cut:  # its first record read
                cut[where] = math.inf if trimmed_s and msg.offset() > 0 else None
            if cut[where] == math.inf and stamped:
                # anchored on the clock's first stamp: a first record stamped past any time
                # (or before the epoch) made every run of the partition partial, or none
                cut[where] = clock.at + (trimmed_s or 0) * 1000
            rec = InputRecord(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value())
            early = start_ms is not None and clock.at < start_ms
            if not early and start_ms is not None and where not in reached:
                reached.add(where)
                evict_idle()
            window = cut[where]
            own = min(clock.at, ts) if stamped else clock.at
            if window is not None and clock.at < window:
                begun(rec, early)
            elif (
                early
                and run_of(rec.key) in kept.dropped
                and not kept.anew(run_of(rec.key), clock.at, before, own)
            ):
                begun(rec, True)
            elif early:  # read before the range: kept for the runs that go on in it (below)
                note(run := run_of(rec.key), rec)
                read = clock.at if stamped else ts
                for idle in kept.keep(run, where, clock.at, read, msg.offset(), own):
                    said(idle)
            if not early and (stop_ms is None or clock.at < stop_ms):
                out.append((clock.at if stamped else ts, msg.topic(), rec))
            elif (
                cut_late is not None
                and stop_ms is not None
                and stamped
                and clock.at >= stop_ms > ts + LATE_AFTER_S * 1000
                and (event := decided_here(rec, partitions, approvals))
            ):
                cut_late.add(event.run_id)
                continue
            elif not early or (window is not None and clock.at < window):
                continue  # after the range, or its run partial
            if late is not None and stamped and clock.at - ts > LATE_AFTER_S * 1000:
                late[(rec.topic, rec.partition, rec.offset)] = ts
        # a run begun before the range, its every record read (not in a trimmed partition's
        # window): replayed from its first one, the range's records after them, unless it
        # was idle past the horizon before its first record in the range (evicted: partial)
        resumed: dict[str, tuple[int, int]] = {}  # run -> its first read in the range, own
        for at, _, rec in out:
            run = run_of(rec.key)
            own = min(at, (late or {}).get((rec.topic, rec.partition, rec.offset), at))
            first, earliest = resumed.get(run, (at, own))
            resumed[run] = (min(at, first), min(own, earliest))
        whole: list[tuple[str, Kept]] = []
        for run, (at, own) in resumed.items():
            latest = kept.latest(run)
            if kept.anew(run, at, before, own) or (
                latest is not None and own - latest > kept.forget
            ):
                kept.drop(run)  # forgotten by then: a new run from its first record here
            elif latest is not None and at - latest > kept.horizon:
                said(run)
            elif run not in before:
                whole += [(run, place) for place in kept.kept(run)]
        return read_again(whole) + out, before
    finally:
        consumer.close()


def replay_consumer(settings: Settings, isolation: str) -> Any:
    """A consumer for a replay's reads: partitions assigned by hand, each one's end reported
    (EOF), nothing committed, read with ``isolation``. The broker's address is checked first:
    a closed port answers at once, named (librdkafka's metadata call raised a KafkaException,
    _TRANSPORT, out of the command as a traceback, exit 1: "the policy changes decisions")."""
    from confluent_kafka import Consumer

    from baton.streams.kafka import consumer_config
    from baton.streams.net import check_reachable

    check_reachable(settings.bootstrap, settings.connect_timeout_s)
    return Consumer(
        consumer_config(
            settings.kafka_config(),
            f"baton-replay-{uuid.uuid4().hex[:8]}",
            {
                "enable.partition.eof": True,
                "enable.auto.commit": False,
                "isolation.level": isolation,
            },
        )
    )


def topic_partitions(consumer: Any, topic: str, settings: Settings) -> list[int]:
    """``topic``'s partitions as ``consumer`` lists them; BrokerUnavailable saying why when it
    cannot be read (no such topic, the broker's error, no answer)."""
    from confluent_kafka import KafkaError, KafkaException

    from baton.schemas.errors import BrokerUnavailable
    from baton.streams.kafka import kafka_said

    try:
        meta = consumer.list_topics(topic, timeout=settings.connect_timeout_s).topics[topic]
    except KafkaException as exc:
        raise BrokerUnavailable(
            f"cannot read {topic} from Kafka at {settings.bootstrap} "
            f"({kafka_said(exc)}); is the broker running?"
        ) from None
    if meta.error is not None and meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
        raise BrokerUnavailable(
            f"no topic {topic} at {settings.bootstrap}; is BATON_TOPIC_PREFIX right, "
            "and has a worker started there (it creates the topics)?"
        )
    if meta.error is not None:
        raise BrokerUnavailable(
            f"cannot read {topic} from Kafka at {settings.bootstrap}: {meta.error.str()}"
        )
    return list(meta.partitions)
