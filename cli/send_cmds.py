"""``baton send``: events as JSON lines in, each checked as the worker will and published
keyed by its ``run_id`` with the murmur2 partitioner (every run on its partition, no
forwarding hop).

Not guaranteed: it checks an event's shape, not the policy's view of it (a valid event may
still be stopped or dead-lettered for its content, e.g. a reused request id).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click
import orjson

from baton.cli.options import FiniteFloatRange, build_settings, setting_options
from baton.cli.signer import shown
from baton.cli.stack_record import data_dir_option, stack_settings
from baton.schemas.errors import BatonError, BrokerUnavailable, ConfigError
from baton.schemas.events import (
    CONTROL_EVENT_TYPES,
    MAX_EVENT_BYTES,
    RUN_EVENT_TYPES,
    ApprovalDenied,
    ApprovalGranted,
    EventError,
    parse_event,
)
from baton.schemas.files import FileProblem, open_stream
from baton.schemas.settings import Settings
from baton.streams.kafka import undelivered

__all__ = ["register"]

_CONTROL_TYPES = {t.model_fields["type"].default for t in CONTROL_EVENT_TYPES}


class BadLines(BatonError):
    """Some lines given to ``baton send`` were not events (each was named on stderr)."""

    exit_code = 1


@dataclass
class _Sent:
    """What ``send`` did, for its summary line."""

    per_topic: dict[str, int] = field(default_factory=dict)
    bad: int = 0
    failed: list[str] = field(default_factory=list)

    def delivered(self, err: Any, msg: Any) -> None:
        failed = undelivered(err, msg)
        if failed is not None:
            self.failed.append(failed)

    @property
    def total(self) -> int:
        return sum(self.per_topic.values())


def _open_input(path: str) -> IO[bytes]:
    """``path`` for reading (``-`` is stdin, a FIFO is fine); a directory, device, socket or a
    missing file is a ConfigError (checked on the open file: ``schemas.files.open_stream``)."""
    if path == "-":
        if _stdin_is_a_terminal():  # `baton send` typed alone waited without a word
            click.echo(
                "baton send: reading events from the terminal, one JSON object a line; "
                "Ctrl-D sends them, Ctrl-C cancels (or give a FILE, or pipe them in)",
                err=True,
            )
        return sys.stdin.buffer
    expected = "expected a file of JSON lines (or a pipe, or - for stdin)"
    try:
        return open_stream(path)
    except FileProblem as exc:
        if exc.kind is not None:  # /dev/zero would never end
            raise ConfigError(f"{path} is a {exc.kind}, {expected}") from None
        raise ConfigError(f"{path} {exc}; {expected}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}; {expected}") from None


def _stdin_is_a_terminal() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):  # closed or replaced
        return False


def _lines(stream: IO[bytes], limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """``(number, line, length)`` of every line, ``line`` None when longer than ``limit``
    bytes (read on in chunks, never held whole: a line may be a runaway file)."""
    number = 0
    while True:
        chunk = stream.readline(limit + 2)
        if not chunk:
            return
        number += 1
        length = len(chunk)
        if len(chunk.rstrip(b"\r\n")) > limit:
            while chunk and not chunk.endswith(b"\n"):
                chunk = stream.readline(1 << 16)
                length += len(chunk)
            yield number, None, length - chunk.endswith(b"\n")  # bytes of the line itself
            continue
        yield number, chunk.strip(), length


def _event_topic(line: bytes, catalog: Any) -> tuple[str, bytes]:
    """The topic and key of one event line; ``EventError`` when it is not a run event."""
    try:
        event = parse_event(line)
    except EventError as exc:
        kind = _type_of(line)
        if kind in _CONTROL_TYPES:
            raise EventError(
                "control_event",
                f"{kind} is a control event: `baton kill` and `baton policy publish` send "
                "them, signed",
            ) from None
        if exc.kind == "unknown_type" or (exc.kind == "schema" and "'type'" in str(exc)):
            # the parser's words stay as they are (dead letters and decisions carry them);
            # the command adds what a sender needs to fix the line
            raise EventError(exc.kind, f"{exc}; {_valid_types(kind)}") from None
        raise
    topic = catalog.approvals if isinstance(event, ApprovalGranted | ApprovalDenied) else None
    return topic or catalog.requests, event.run_id.encode()


def _valid_types(kind: str | None) -> str:
    """The run event types `baton send` takes, the closest to ``kind`` first when one is close."""
    import difflib

    names = [c.model_fields["type"].default for c in RUN_EVENT_TYPES]
    close = difflib.get_close_matches(kind[:64], names, n=1) if kind else []
    guess = f"did you mean {close[0]!r}? " if close else ""
    return f"{guess}a line's type is one of {', '.join(names)}"


def _type_of(line: bytes) -> str | None:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    kind = doc.get("type") if isinstance(doc, dict) else None
    return kind if isinstance(kind, str) else None


@click.command("send")
@click.argument("file", default="-")
@click.option("--dry-run", is_flag=True, help="check every line, send nothing")
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0.1, max=3600),
    default=30.0,
    show_default=True,
    help="seconds to wait for Kafka to acknowledge the events at the end",
)
@data_dir_option
@setting_options("bootstrap", "topic_prefix")
def send_cmd(file: str, dry_run: bool, timeout: float, data_dir: Path | None, **opts: Any) -> None:
    """Publish events from FILE (JSON lines; - or nothing: stdin), each keyed by its run_id:
    handoff_requested, handoff_completed and run_finished to gov.handoff.requests,
    approval_granted and approval_denied to gov.approvals.

    Every line is checked as the worker checks it; a bad one is named on stderr with its
    line number and not sent (empty lines and lines starting with # are skipped). Exit 0
    when every line was sent, 1 when some were bad, 4 when Kafka did not take them.
    """
    from baton.streams.topics import TopicCatalog

    # the input first: a missing file is named at once, not after a stack lookup or a wait
    # for a broker that is not there
    stream = _open_input(file)
    try:
        settings = None if dry_run else stack_settings(opts, data_dir, kafka=True)
        prefix = settings.topic_prefix if settings else build_settings(**opts).topic_prefix
        catalog = TopicCatalog(prefix=prefix)
        producer = None if settings is None else _producer(settings, catalog)
        sent = _Sent()
        for number, line, length in _lines(stream, MAX_EVENT_BYTES):
            if line is None:
                _bad(sent, number, f"oversized: {length} bytes, limit is {MAX_EVENT_BYTES}")
                continue
            if not line or line.startswith(b"#"):
                continue
            try:
                topic, key = _event_topic(line, catalog)
            except EventError as exc:
                _bad(sent, number, f"{exc.kind}: {exc}")
                continue
            sent.per_topic[topic] = sent.per_topic.get(topic, 0) + 1
            if producer is not None:
                _produce(producer, topic, key, line, sent.delivered)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    if producer is not None:
        assert settings is not None
        left = producer.flush(timeout)
        if left or sent.failed:
            raise BrokerUnavailable(
                f"Kafka at {settings.bootstrap} did not take {left + len(sent.failed)} of "
                f"{sent.total} events within {timeout:g} s"
                + (f" (first error: {sent.failed[0]})" if sent.failed else "")
            )
    click.echo(_summary(sent, dry_run))
    if sent.bad:
        raise BadLines(f"{sent.bad} bad line(s) not sent; each is named above")


def _bad(sent: _Sent, number: int, problem: str) -> None:
    sent.bad += 1
    click.echo(f"baton send: line {number}: {shown(problem[:500])}", err=True)


def _producer(settings: Settings, catalog: Any) -> Any:
    """A producer to Kafka, once it answered (within the connect timeout) and holds Baton's
    topics: a port that took the connection and answered nothing was found only at the end,
    after --timeout (30 s), and a broker without the topics auto-created them (Tansu) with its
    own partition count."""
    from confluent_kafka import Producer

    from baton.streams.kafka import producer_config
    from baton.streams.net import check_reachable
    from baton.streams.sdk.reach import BrokerWatch

    check_reachable(settings.bootstrap, settings.connect_timeout_s)
    watch = BrokerWatch(settings.bootstrap)
    producer = Producer(producer_config(settings.kafka_config(), {"error_cb": watch.on_error}))
    topics = watch.list_topics(producer, settings.connect_timeout_s).topics
    missing = [t for t in (catalog.requests, catalog.approvals) if t not in topics]
    if missing:
        raise BrokerUnavailable(
            f"Kafka at {settings.bootstrap} has no topic {', '.join(missing)}: start Baton "
            "there (`baton up`, or `baton worker`), or set the topic prefix it uses "
            f"(--topic-prefix, BATON_TOPIC_PREFIX, now {catalog.prefix!r})"
        )
    return producer


def _produce(producer: Any, topic: str, key: bytes, value: bytes, done: Any) -> None:
    while True:
        try:
            producer.produce(topic, value, key, on_delivery=done)
            break
        except BufferError:  # the local queue is full: let deliveries drain it
            producer.poll(0.1)
    producer.poll(0)


def _summary(sent: _Sent, dry_run: bool) -> str:
    where = ", ".join(f"{n} to {topic}" for topic, n in sorted(sent.per_topic.items()))
    verb = "valid, not sent (--dry-run)" if dry_run else "sent"
    return f"{sent.total} event(s) {verb}" + (f": {where}" if where else "")


def register(cli: click.Group) -> None:
    cli.add_command(send_cmd)
