"""``baton tail``: gov.decisions, gov.stops or gov.deadletter from a position, each record
as one readable line (what others wrote shown escaped) or one JSON object.

Not guaranteed: without ``--follow`` it prints what the broker held when it started
reading; ``-n`` counts records before ``--run`` filters them.
"""

from __future__ import annotations

import collections
import heapq
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson

from baton.cli.options import setting_options
from baton.cli.signer import shown
from baton.cli.stack_record import data_dir_option, stack_settings
from baton.schemas.errors import BrokerUnavailable
from baton.schemas.events import MAX_EVENT_BYTES
from baton.schemas.settings import Settings
from baton.sinks.render import printable_json
from baton.sinks.rows import MAX_RECORD_BYTES
from baton.streams.kafka import kafka_said

__all__ = ["register"]

#: tail's TOPIC names -> the catalog property holding the topic's full name
_TAIL_TOPICS = {"decisions": "decisions", "stops": "stops", "deadletter": "deadletter"}


@click.command("tail")
@click.argument("topic", type=click.Choice(list(_TAIL_TOPICS)))
@click.option("-f", "--follow", is_flag=True, help="keep printing new records until Ctrl-C")
@click.option("--from-beginning", is_flag=True, help="start at each partition's first record")
@click.option(
    "-n",
    "--lines",
    "last",
    type=click.IntRange(min=0, max=100_000),
    default=10,
    show_default=True,
    help="without --from-beginning: the newest N records (N before each partition's end, "
    "then the newest N of those; --run filters after that)",
)
@click.option("--run", "run_id", default=None, help="only the records of this run")
@click.option(
    "--probes",
    is_flag=True,
    help="also the readiness probes' decisions (tenant __baton__, hidden by default)",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: one readable line per record; json: the record, one object per line",
)
@data_dir_option
@setting_options("bootstrap", "topic_prefix", "decision_keys")
def tail_cmd(
    topic: str,
    follow: bool,
    from_beginning: bool,
    last: int,
    run_id: str | None,
    probes: bool,
    fmt: str,
    data_dir: Path | None,
    **opts: Any,
) -> None:
    """Print the records of TOPIC: decisions (every decision), stops, or deadletter (bad
    input with the error and its original bytes). Without --follow it prints what is there
    and exits; with it, it goes on until Ctrl-C."""
    from baton.schemas.decision_signing import decision_keys
    from baton.streams.topics import TopicCatalog

    settings = stack_settings(opts, data_dir, kafka=True)
    name = getattr(TopicCatalog(prefix=settings.topic_prefix), _TAIL_TOPICS[topic])
    render = _render_json if fmt == "json" else _render_text
    dead = _TAIL_TOPICS[topic] == "deadletter"
    # the stack's (or BATON_DECISION_KEYS'): a decision they did not sign is marked (a JSON
    # line, by an "unsigned" member: its bytes are re-escaped, a tool cannot check them)
    keys = None if dead else decision_keys(settings.decision_keys, unset="")
    shown = 0
    try:
        for value, partition, offset in _read(settings, name, from_beginning, last, follow):
            doc = _json(value)
            if _wanted(doc, dead, run_id, probes):
                where = f"[p{partition}@{offset}]"
                if keys and not keys.verifies(value):
                    where += f" UNSIGNED: {UNSIGNED}"
                    if fmt == "json":  # every such line marked, a non-object wrapped (h44b F5)
                        doc = _marked(value, doc)
                click.echo(render(value, doc, where, dead))
                shown += 1
        if run_id is not None and not shown:  # silence read as "no such run" (H1, session 27)
            where = "in" if from_beginning else f"among the newest {last} records of"
            click.echo(
                f"baton tail: no records of run {run_id!r} {where} {name}"
                + ("" if from_beginning else "; --from-beginning reads them all")
                + f" (`baton trace {run_id}` shows its decisions from the audit)",
                err=True,
            )
    except BrokenPipeError:  # `baton tail ... | head`: the reader has what it wanted
        sys.stderr.close()
    except KeyboardInterrupt:
        pass


def _read(
    settings: Settings, topic: str, from_beginning: bool, last: int, follow: bool
) -> Iterator[tuple[bytes, int, int]]:
    """``(value, partition, offset)`` from the chosen start; the records already there come
    oldest first (by their timestamps across partitions), then new ones as they arrive."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from baton.streams.kafka import consumer_config
    from baton.streams.net import check_reachable

    check_reachable(settings.bootstrap, settings.connect_timeout_s)
    from baton.sinks.sink_start import receive_bounds

    # a record batch up to the largest Tansu takes is received (and shown cut): at
    # librdkafka's 100 MB one record had every fetch refused and tail hung (H2, session 27)
    conf = {"enable.partition.eof": True, **receive_bounds()}
    consumer = Consumer(consumer_config(settings.kafka_config(), "baton-tail", conf))
    try:
        parts = _partitions(consumer, settings, topic)
        starts, ends = [], {}
        for p in parts:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=settings.connect_timeout_s, cached=False
            )
            start = low if from_beginning else max(low, high - last)
            starts.append(TopicPartition(topic, p, start))
            ends[p] = high
        consumer.assign(starts)
        reading = {tp.partition for tp in starts if tp.offset < ends[tp.partition]}
        merged = _merged(consumer, topic, reading, KafkaError._PARTITION_EOF)
        if not from_beginning:  # the newest `last` across partitions: kept, then printed
            merged = iter(collections.deque(merged, maxlen=last) if last else ())
        yield from merged
        if follow:
            click.echo(f"baton tail: following {topic} (Ctrl-C stops)", err=True)
        while follow:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                yield msg.value() or b"", msg.partition(), msg.offset()
    finally:
        consumer.close()


#: records held per partition while the others catch up; past it the partition is paused
_HELD = 10_000


def _merged(
    consumer: Any, topic: str, reading: set[int], eof_code: int
) -> Iterator[tuple[bytes, int, int]]:
    """``(value, partition, offset)`` of the records before each partition's end, oldest first
    by timestamp across partitions: a merge of the partitions as they are read, holding at
    most about ``_HELD`` records of each (it used to hold the whole topic, and sort it, before
    printing the first line: ``--from-beginning`` on a busy deployment's decisions ran out of
    memory). A partition far ahead of the others is paused until they catch up."""
    from confluent_kafka import TopicPartition

    held: dict[int, collections.deque[tuple[int, int, bytes]]] = {}
    heads: list[tuple[int, int]] = []  # (timestamp, partition) of each partition's first held
    waiting = set(reading)  # partitions still read that hold nothing: no head is safe yet
    paused: set[int] = set()
    while True:
        while heads and not waiting:
            _, p = heapq.heappop(heads)
            queue = held[p]
            _, offset, value = queue.popleft()
            if queue:
                heapq.heappush(heads, (queue[0][0], p))
            elif p in reading:
                waiting.add(p)
            if p in paused and len(queue) < _HELD // 2:
                consumer.resume([TopicPartition(topic, p)])
                paused.discard(p)
            yield value, p, offset
        if not reading:
            return
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        p = msg.partition()
        if msg.error() is not None:
            if msg.error().code() == eof_code:
                reading.discard(p)
                waiting.discard(p)
            continue
        queue = held.setdefault(p, collections.deque())
        if queue and msg.offset() <= queue[-1][1]:
            continue  # read again after a resume
        timestamp = msg.timestamp()[1]
        if not queue:
            heapq.heappush(heads, (timestamp, p))
            waiting.discard(p)
        queue.append((timestamp, msg.offset(), msg.value() or b""))
        if len(queue) >= _HELD and p not in paused:
            consumer.pause([TopicPartition(topic, p)])
            paused.add(p)


def _partitions(consumer: Any, settings: Settings, topic: str) -> list[int]:
    """The topic's partitions, from a listing of every topic (asking for one by name would
    create it on Tansu)."""
    try:
        metadata = consumer.list_topics(timeout=settings.connect_timeout_s)
    except Exception as exc:
        said = kafka_said(exc)
        raise BrokerUnavailable(
            f"cannot reach Kafka at {settings.bootstrap}: it did not list its topics within "
            f"{settings.connect_timeout_s:g} s ({said}); is the broker running, and is this "
            "its Kafka port?"
        ) from None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise BrokerUnavailable(
            f"no topic {topic} at {settings.bootstrap}; is BATON_TOPIC_PREFIX right, and has a "
            "worker started there (it creates the topics)?"
        )
    return sorted(found.partitions)


def _json(value: bytes) -> Any:
    """The record's JSON document, None when it is not JSON or nests deeper than orjson
    writes (254 levels; it reads 1,024): a record nested 300 deep ended ``--format json``
    with a traceback, a dead letter's field 1,000 deep the text line (``str()``'s
    RecursionError), and with ``-f`` nothing after it was shown."""
    if len(value) > MAX_RECORD_BYTES:  # no Baton record: shown cut, never parsed whole
        return None
    try:
        doc = orjson.loads(value)
        orjson.dumps(doc)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return None
    return doc


def _wanted(doc: Any, dead: bool, run_id: str | None, probes: bool) -> bool:
    """The record passes ``--run`` and is not a readiness probe's (unless ``--probes``)."""
    from baton.processors.probe import PROBE_TENANT

    record = doc if isinstance(doc, dict) else {}
    if not probes and not dead and record.get("tenant") == PROBE_TENANT:
        return False
    if run_id is None:
        return True
    return record.get("key" if dead else "run_id") == run_id


#: what marks a decision the keys did not sign (a text line's end, a JSON line's member)
UNSIGNED = "no key of decision_keys signed it (forged?)"


def _marked(value: bytes, doc: Any) -> dict[str, Any]:
    """``doc`` with the UNSIGNED mark as its member ``unsigned``; a record that is no JSON
    object as ``{"raw": text}`` or ``{"value": doc}``, marked so (a forged array, string or
    non-JSON value printed unmarked, read as signed by a tool filtering on the member)."""
    if doc is None:
        doc = _raw(value)
    elif not isinstance(doc, dict):
        doc = {"value": doc}
    return {**doc, "unsigned": UNSIGNED}


def _raw(value: bytes) -> dict[str, str]:
    """A record that is not JSON, as an object: its text under "raw"."""
    return {"raw": value[:MAX_EVENT_BYTES].decode("utf-8", "replace")}


def _render_json(value: bytes, doc: Any, where: str, dead: bool) -> str:
    """The record as one line of JSON (a record that is not JSON: its text under "raw")."""
    if doc is None:
        doc = _raw(value)
    return printable_json(orjson.dumps(doc).decode())


def _render_text(value: bytes, doc: Any, where: str, dead: bool) -> str:
    """One readable line: a decision, or a dead letter; anything else shown escaped."""
    if dead and isinstance(doc, dict):
        return shown(f"{_dead_line(doc)} {where}")
    if not dead and len(value) <= MAX_RECORD_BYTES:
        from baton.schemas.decision import Decision

        try:
            return shown(f"{_decision_line(Decision.from_json(value))} {where}")
        except ValueError:
            pass
    return shown(f"(not a Baton record) {value[:300].decode('utf-8', 'replace')} {where}")


def _decision_line(d: Any) -> str:
    """``time run phase outcome reason from -> to task …``: what happened, for a person."""
    parts = [_time(d.decided_at), d.run_id, str(d.phase), str(d.outcome), str(d.reason)]
    if d.shadow_outcome:
        parts.append(f"(shadow: would {d.shadow_outcome})")
    if d.from_agent or d.to_agent:
        parts.append(f"{d.from_agent or '?'} -> {d.to_agent or '?'}")
    for label, item in (
        ("task", d.task_id),
        ("action", d.action),
        ("owner", d.owner),
        ("fallback", d.fallback),
        ("approval", d.approval_id),
        ("approver", d.approver),
        ("status", d.handoff_status),
    ):
        if item:
            parts.append(f"{label}={item}")
    if d.spent_usd:
        parts.append(f"spent=${d.spent_usd:g}")
    if d.detail:
        parts.append(f"— {d.detail[:200]}")
    return " ".join(parts)


def _dead_line(doc: dict[str, Any]) -> str:
    """``time error_kind topic[p]@offset key=…: error | original …``."""
    original = doc.get("original")
    if original is None and doc.get("original_b64"):
        original = f"(binary, {doc.get('original_size')} bytes)"
    source = f"{doc.get('topic')}[{doc.get('partition')}]@{doc.get('offset')}"
    return (
        f"{_time(doc.get('failed_at'))} {doc.get('error_kind')} {source} key={doc.get('key')}: "
        f"{str(doc.get('error'))[:300]} | original: {str(original)[:160]}"
    )


def _time(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, str):
        return value[:19].replace("T", " ")
    return "-"


def register(cli: click.Group) -> None:
    cli.add_command(tail_cmd)
