"""Transactions on the embedded broker: what Baton's exactly-once mode relies on."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from baton.streams.embedded import EmbeddedBroker
from baton.streams.transactions import committed_ends, consumer_group_metadata

pytestmark = pytest.mark.integration


def _topic(broker: EmbeddedBroker, name: str) -> str:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(10)
    return name


def _txn_producer(broker: EmbeddedBroker) -> Producer:
    p = Producer(
        {"bootstrap.servers": broker.bootstrap, "transactional.id": f"t-{uuid.uuid4().hex[:8]}"}
    )
    p.init_transactions(30)
    return p


def _end(broker: EmbeddedBroker, topic: str) -> int:
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "ends", "log_level": 0})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)[1]
    finally:
        c.close()


def test_committed_ends_skip_commit_markers_and_aborted_tails(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    committed = _topic(broker, f"{topic_prefix}committed")
    aborted = _topic(broker, f"{topic_prefix}aborted")
    plain = _topic(broker, f"{topic_prefix}plain")
    empty = _topic(broker, f"{topic_prefix}empty")
    p = _txn_producer(broker)
    for topic in (committed, aborted):
        p.begin_transaction()
        for i in range(3):  # offsets 0..2, then the commit marker at 3
            p.produce(topic, b"v%d" % i, b"k")
        p.commit_transaction(30)
    p.begin_transaction()
    p.produce(aborted, b"never visible", b"k")  # offset 4, then an abort marker
    p.abort_transaction(30)
    plain_producer = Producer({"bootstrap.servers": broker.bootstrap})
    plain_producer.produce(plain, b"x")
    plain_producer.flush(10)

    ends = {(t, 0): _end(broker, t) for t in (committed, aborted, plain, empty)}
    assert ends[(committed, 0)] == 4  # the marker takes an offset: a reader never gets 3
    got = committed_ends({"bootstrap.servers": broker.bootstrap}, ends)
    assert got == {(committed, 0): 3, (aborted, 0): 3, (plain, 0): 1, (empty, 0): 0}


def test_committed_ends_count_the_whole_last_batch_where_list_offsets_reports_its_start(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    # Tansu answers ListOffsets with the first offset of the last record batch + 1: a
    # changelog whose last batch holds several records must still be restored to its end
    # (the worker writes its state records in batches and relies on this)
    topic = _topic(broker, f"{topic_prefix}batched")
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 50})
    producer.produce(topic, b"first", b"k")
    producer.flush(10)
    for i in range(10):  # one batch: offsets 1..10
        producer.produce(topic, b"v%d" % i, b"k%d" % i)
    producer.flush(10)
    reported = _end(broker, topic)
    assert reported == 2  # Tansu's quirk (Kafka: 11); if this fails, Tansu was fixed
    got = committed_ends({"bootstrap.servers": broker.bootstrap}, {(topic, 0): reported})
    assert got == {(topic, 0): 11}


def test_offsets_sent_with_written_group_metadata_are_committed_with_the_transaction(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    source = _topic(broker, f"{topic_prefix}src")
    out = _topic(broker, f"{topic_prefix}out")
    group = f"{topic_prefix}group"
    p = _txn_producer(broker)
    metadata = consumer_group_metadata(group, 1, "member-1")

    p.begin_transaction()
    p.produce(out, b"decision", b"k")
    p.send_offsets_to_transaction([TopicPartition(source, 0, 42)], metadata, 30)
    p.abort_transaction(30)
    p.begin_transaction()
    p.produce(out, b"decision", b"k")
    p.send_offsets_to_transaction([TopicPartition(source, 0, 17)], metadata, 30)
    p.commit_transaction(30)

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "log_level": 0})
    try:
        [tp] = c.committed([TopicPartition(source, 0)], timeout=10)
    finally:
        c.close()
    assert tp.offset == 17  # the aborted transaction's 42 was never committed


_TXN_CHILD = """
import sys
from confluent_kafka import Producer, TopicPartition
from baton.streams.transactions import consumer_group_metadata
bootstrap, out_a, out_b, src, group = sys.argv[1:6]
p = Producer({"bootstrap.servers": bootstrap, "transactional.id": "kill-" + out_a, "linger.ms": 1})
p.init_transactions(30)
md = consumer_group_metadata(group, 0, "m")
n = 0
print("ready", flush=True)
while True:
    p.begin_transaction()
    for i in range(20):
        for part in range(2):
            p.produce(out_a, b"%d" % (n + i), b"k", partition=part)
            p.produce(out_b, b"%d" % (n + i), b"k", partition=part)
    n += 20
    p.send_offsets_to_transaction([TopicPartition(src, part, n) for part in range(2)], md, 30)
    p.commit_transaction(30)
"""


def _committed_count(bootstrap: str, topic: str, partition: int) -> int:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "count",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "log_level": 0,
        }
    )
    try:
        c.assign([TopicPartition(topic, partition, 0)])
        n = 0
        while True:
            msg = c.poll(10)
            assert msg is not None, f"{topic}[{partition}]: no end of partition in 10 s"
            if msg.error():
                return n
            n += 1
    finally:
        c.close()


@pytest.mark.faults
def test_a_producer_killed_mid_stream_leaves_whole_transactions_only(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    """What exactly-once rests on, under kill -9 on Tansu: a transaction's records on every
    partition of every topic, and the offsets sent with it, are visible together or not at all."""
    import random
    import signal
    import subprocess
    import sys
    import time

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for trial in range(3):
        names = [f"{topic_prefix}{x}{trial}" for x in ("a", "b", "src")]
        for f in admin.create_topics([NewTopic(n, 2, 1) for n in names]).values():
            f.result(10)
        out_a, out_b, src = names
        group = f"{topic_prefix}g{trial}"
        child = subprocess.Popen(
            [sys.executable, "-c", _TXN_CHILD, broker.bootstrap, out_a, out_b, src, group],
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        time.sleep(random.uniform(0.5, 1.5))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "log_level": 0})
        try:
            committed = c.committed([TopicPartition(src, p) for p in range(2)], timeout=10)
        finally:
            c.close()
        for tp in committed:
            visible = {_committed_count(broker.bootstrap, t, tp.partition) for t in (out_a, out_b)}
            assert visible == {max(tp.offset, 0)}, (trial, tp, visible)
        assert max(tp.offset for tp in committed) > 0, "the child committed nothing"


def test_a_partition_held_by_a_transaction_left_open_is_named_and_never_given_a_short_end(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    """Tansu never aborts a transaction left open; read_committed readers stop at its first
    record. committed_ends read that stop as the partition's end (a worker restored its runs
    without the records after it: session 30 H1); it raises PartitionHeld now, and
    held_partitions names the held partitions among clean ones."""
    from baton.streams.transactions import PartitionHeld, held_partitions
    from tests.stack import open_transaction

    held = _topic(broker, f"{topic_prefix}held")
    clean = _topic(broker, f"{topic_prefix}clean")
    committed = _topic(broker, f"{topic_prefix}committedtail")
    empty = _topic(broker, f"{topic_prefix}nothing")
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for topic in (held, clean):
        plain.produce(topic, b"before", b"k", partition=0)
    assert plain.flush(10) == 0
    attacker = open_transaction(broker.bootstrap, held, 0)
    for topic in (held, clean):
        for _ in range(3):
            plain.produce(topic, b"after", b"k", partition=0)
    assert plain.flush(10) == 0
    p = _txn_producer(broker)
    p.begin_transaction()
    p.produce(committed, b"v", b"k", partition=0)
    p.commit_transaction(30)
    config = {"bootstrap.servers": broker.bootstrap}

    with pytest.raises(PartitionHeld) as raised:
        committed_ends(config, {(held, 0): _end(broker, held)}, timeout_s=10, hold_s=1)
    assert (raised.value.topic, raised.value.partition, raised.value.stable) == (held, 0, 1)
    assert f"{held}[0] is held at offset 1" in str(raised.value)
    ends = {(t, 0): _end(broker, t) for t in (clean, committed, empty)}
    assert committed_ends(config, ends, hold_s=1) == {
        (clean, 0): 4,
        (committed, 0): 1,
        (empty, 0): 0,
    }

    found, unread = held_partitions(
        config, [(held, 0), (clean, 0), (committed, 0), (empty, 0)], hold_s=1, timeout_s=10
    )
    assert found == {(held, 0): (1, 5)} and unread == []
    del attacker


def test_a_transaction_in_flight_that_ends_is_not_named_held(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    """A worker's batch under exactly_once is a transaction in flight: a partition whose
    committed end moves within the hold is neither held nor left unread."""
    import threading

    from baton.streams.transactions import held_partitions

    busy = _topic(broker, f"{topic_prefix}busy")
    p = _txn_producer(broker)
    p.begin_transaction()
    p.produce(busy, b"in flight", b"k", partition=0)
    assert p.flush(10) == 0
    later = threading.Timer(1.0, lambda: p.commit_transaction(30))
    later.start()
    try:
        found, unread = held_partitions(
            {"bootstrap.servers": broker.bootstrap}, [(busy, 0)], hold_s=3, timeout_s=8
        )
    finally:
        later.join(10)
    assert (found, unread) == ({}, [])
