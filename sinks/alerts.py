"""Stop alerts from gov.stops: one line per stop, deduplicated, storms folded, console and webhook.

The decision logic (:class:`StopAlerter`) is pure - it is given the time - so dedup and storm
folding are tested without a broker; :func:`run_alerts` wires it to Kafka and the outputs.
The webhook is posted from its own thread and bounded queue (:mod:`baton.sinks.alert_webhook`),
so a hanging webhook never slows the consume loop; names are made safe to show by
:mod:`baton.sinks.alert_text`; bad records are sorted out by :mod:`baton.sinks.alert_records`,
and what may be committed is kept by :mod:`baton.sinks.alert_offsets`.

Guarantees: within one process, a decision_id is announced at most once for what it shows
(the last ``remember`` are kept, as 16-byte digests of the id and the alert's text whatever
their length: a forged stop under a real one's id cannot hide it); a record on gov.stops
that is not a Decision, or none of ``decision_keys`` signed (``unsigned``), is skipped and
counted by kind (one log line per kind, then at most one a minute), never fatal; memory is
bounded whatever the records hold (a storm keeps counts, not the stops). Offsets are
committed only up to stops that are announced: printed, not held in a storm, and done with
by the webhook sender (posted or given up), so a crash re-reads (and re-announces) at most
the stops since the last commit - at least once across restarts, never silently dropped.
Not guaranteed: webhook delivery (retried, then logged; dropped and counted when its queue
is full; the console line is always printed).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from baton.schemas.decision import Decision, Outcome
from baton.schemas.decision_signing import DecisionKeys, decision_keys
from baton.schemas.errors import BatonError
from baton.schemas.settings import Settings
from baton.sinks.alert_offsets import CommitPoints
from baton.sinks.alert_post import post_webhook
from baton.sinks.alert_records import BadRecord, SkippedRecords, read_stop
from baton.sinks.alert_text import TEXT_MAX, cap_text, clean_field, stale_note, stop_age
from baton.sinks.alert_webhook import WebhookSender

__all__ = [
    "AlertMessage",
    "AlertStats",
    "StopAlerter",
    "post_webhook",
    "run_alerts",
    "stop_line",
]

log = logging.getLogger(__name__)

#: distinct reasons / tenants a storm counts one by one; the rest are "(others)"
_STORM_KEYS = 100
#: distinct runs a storm counts; beyond it the summary says "10000+"
_STORM_RUNS = 10_000


def stop_line(decision: Decision) -> str:
    """The seed's alert line, e.g. ``🛑 Multi-Agent run run_742 stopped: ownership_conflict,
    handoff=planner -> researcher, task=refund_check``; every name shown by
    :func:`~baton.sinks.alert_text.clean_field` (one line, capped)."""
    return (
        f"🛑 Multi-Agent run {clean_field(decision.run_id)} stopped: "
        f"{clean_field(decision.reason)}, "
        f"handoff={_name(decision.from_agent)} -> {_name(decision.to_agent)}, "
        f"task={_name(decision.task_id)}"
    )


def _name(value: str | None) -> str:
    return clean_field(value) if value else "?"


@dataclass(frozen=True, slots=True)
class AlertMessage:
    """One message to deliver; a storm summary covers many stops."""

    text: str
    #: how many stop decisions the message announces
    stops: int = 1
    storm: bool = False


@dataclass
class _Storm:
    """What a storm holds: counts and the first stop's line, never the stops themselves."""

    started: float
    count: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    tenants: Counter[str] = field(default_factory=Counter)
    runs: set[bytes] = field(default_factory=set)
    runs_capped: bool = False
    first: str = ""

    def add(self, decision: Decision) -> None:
        self.count += 1
        if not self.first:
            self.first = stop_line(decision)
        _count(self.reasons, clean_field(decision.reason))
        _count(self.tenants, clean_field(decision.tenant))
        if len(self.runs) < _STORM_RUNS:
            self.runs.add(_digest(decision.run_id))
        else:
            self.runs_capped = True


def _count(counter: Counter[str], key: str) -> None:
    if key not in counter and len(counter) >= _STORM_KEYS:
        key = "(others)"
    counter[key] += 1


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class StopAlerter:
    """Turns stop decisions into messages: dedup by decision_id, storms folded into summaries.

    A storm: ``storm_threshold`` stops within ``storm_window_s`` seconds. The stops before
    the threshold are announced one by one; from the threshold on they are held and every
    ``storm_window_s`` one summary covers them, until a window brings fewer than the
    threshold. ``storm_threshold=0`` turns folding off.
    """

    def __init__(
        self, storm_threshold: int = 20, storm_window_s: float = 5.0, remember: int = 100_000
    ) -> None:
        if storm_threshold < 0 or storm_window_s <= 0 or remember < 1:
            raise ValueError(
                f"StopAlerter: storm_threshold >= 0, storm_window_s > 0 and remember >= 1 "
                f"expected, got {storm_threshold}, {storm_window_s}, {remember}"
            )
        self.storm_threshold = storm_threshold
        self.storm_window_s = storm_window_s
        self.remember = remember
        # digests, not the ids: a hostile 60 KB decision_id costs 16 bytes here
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._recent: deque[float] = deque()
        self._storm: _Storm | None = None
        self.duplicates = 0

    @property
    def holding(self) -> int:
        """Stops held for a storm summary not yet delivered."""
        return self._storm.count if self._storm else 0

    def offer(self, decision: Decision, now: float) -> list[AlertMessage]:
        """Messages due after ``decision`` arrives at ``now`` (monotonic seconds)."""
        out = self.tick(now)
        if decision.outcome != Outcome.STOP:
            return out
        # the id and what the alert shows: a forged stop under a real stop's id (ids are
        # computable from gov.handoff.requests) was taken for its redelivery and hid it
        key = hashlib.blake2b(
            orjson.dumps([decision.decision_id, stop_line(decision), clean_field(decision.tenant)]),
            digest_size=16,
        ).digest()
        if key in self._seen:
            self.duplicates += 1
            self._seen.move_to_end(key)
            return out
        self._seen[key] = None
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)
        if self._storm is not None:
            self._storm.add(decision)
            return out
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - self.storm_window_s:
            self._recent.popleft()
        if self.storm_threshold and len(self._recent) >= self.storm_threshold:
            self._storm = _Storm(started=now)
            self._storm.add(decision)
            return out
        return [*out, AlertMessage(stop_line(decision))]

    def tick(self, now: float) -> list[AlertMessage]:
        """Summaries whose window has passed by ``now``; call it even when nothing arrives."""
        storm = self._storm
        if storm is None or now - storm.started < self.storm_window_s:
            return []
        message = self._summary(storm, now)
        if storm.count >= self.storm_threshold:
            self._storm = _Storm(started=now)  # still storming: the next window folds too
        else:
            self._storm = None
            self._recent.clear()
        return [message] if message else []

    def flush(self, now: float) -> list[AlertMessage]:
        """At shutdown: the summary of whatever a storm still holds."""
        storm, self._storm = self._storm, None
        message = self._summary(storm, now) if storm else None
        return [message] if message else []

    def _summary(self, storm: _Storm, now: float) -> AlertMessage | None:
        if not storm.count:
            return None
        reasons = storm.reasons.most_common()
        shown = reasons[:10]
        more = f", {len(reasons) - len(shown)} more reasons" if len(reasons) > len(shown) else ""
        runs = len(storm.runs)
        seconds = max(now - storm.started, 0.0)
        text = (
            f"🛑 Stop storm: {storm.count} stops in {seconds:.1f} s across "
            f"{runs}{'+' if storm.runs_capped else ''} Multi-Agent "
            f"run{'s' if runs != 1 else ''}: "
            + ", ".join(f"{reason} ×{n}" for reason, n in shown)
            + more
            + "; tenants: "
            + ", ".join(f"{tenant} ×{n}" for tenant, n in storm.tenants.most_common(5))
            + f"; first: {storm.first.removeprefix('🛑 ')}"
        )
        return AlertMessage(cap_text(text, TEXT_MAX), storm.count, storm=True)


@dataclass
class AlertStats:
    """What :func:`run_alerts` did, for its caller's closing line."""

    duplicates: int = 0
    announced: int = 0
    #: stops announced inside storm summaries rather than one by one
    folded: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    posted: int = 0
    post_failed: int = 0
    post_dropped: int = 0
    not_posted_at_shutdown: int = 0


def run_alerts(
    settings: Settings,
    stop_event: threading.Event,
    *,
    topic: str | None = None,
    group_id: str | None = None,
    webhook_url: str | None = None,
    emit: Callable[[str], None] | None = None,
    storm_threshold: int = 20,
    storm_window_s: float = 5.0,
    max_age_s: float = 3600.0,
    webhook_queue: int = 100,
    webhook_timeout_s: float = 5.0,
    webhook_attempts: int = 3,
    drain_s: float = 10.0,
    consumer_overrides: dict[str, Any] | None = None,
    on_ready: Callable[[AlertStats, StopAlerter, Any], None] | None = None,
) -> AlertStats:
    """Consume gov.stops and announce each stop until ``stop_event`` is set.

    ``emit`` prints a message (default: stdout); ``webhook_url`` (default
    ``settings.webhook_url``) also receives it, from a sender thread with a queue of
    ``webhook_queue`` alerts, ``webhook_attempts`` tries of ``webhook_timeout_s`` each, and
    ``drain_s`` seconds at shutdown to post what is queued. Stops older than ``max_age_s``
    (by decided_at; 0 = any age) are skipped, counted (``too_old``), on a partition the group
    has no committed offset for, so a first start does not replay the topic's history as
    alerts; past a committed offset every stop is announced (the alerter was down: it
    missed them). ``on_ready(stats, alerter, sender_or_None)`` hands the live
    counters to the metrics (processors/metrics_audit.py).
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    from baton.sinks.sink import StoppedWaiting, ensure_catalog_topics, stops_topic
    from baton.sinks.sink_start import receive_bounds
    from baton.streams.kafka import consumer_config, output_isolation

    emit = emit or (lambda text: print(text, flush=True))
    webhook_url = webhook_url if webhook_url is not None else settings.webhook_url
    if hasattr(webhook_url, "get_secret_value"):  # a pydantic SecretStr: masked when printed
        webhook_url = webhook_url.get_secret_value()
    alerter = StopAlerter(storm_threshold, storm_window_s)
    stats = AlertStats()
    skipped = SkippedRecords()
    stats.skipped = skipped.counts  # (the same counter: the metrics read it live)
    # given keys, only the workers' signed stops (a writer of gov.stops paged at will: h43b F4)
    keys = decision_keys(getattr(settings, "decision_keys", None), unset="")
    if not keys:  # (said: an alerter apart from `baton up` checked nothing, silently: h44b F4)
        log.warning("alerts: no decision_keys: forged stops are announced (BATON_DECISION_KEYS)")
    sender = (
        WebhookSender(
            webhook_url,
            capacity=webhook_queue,
            attempts=webhook_attempts,
            timeout_s=webhook_timeout_s,
        )
        if webhook_url
        else None
    )  # built before anything starts: a bad URL is refused without a consumer to close
    if on_ready is not None:
        on_ready(stats, alerter, sender)
    overrides: dict[str, Any] = {
        "error_cb": lambda err: log.warning("alerts: Kafka: %s", err),
        # a record batch up to the largest Tansu takes is received and skipped (too_large):
        # at librdkafka's 100 MB no stop of any partition was announced (H2, session 27)
        **receive_bounds(),
        "isolation.level": output_isolation(getattr(settings, "processing_guarantee", None)),
    }
    session_timeout_s = getattr(settings, "session_timeout_s", None)
    if session_timeout_s:
        overrides["session.timeout.ms"] = int(session_timeout_s * 1000)
    overrides.update(consumer_overrides or {})
    conf = consumer_config(
        settings.kafka_config(), group_id or f"{settings.app_id}-alerts", overrides
    )
    conf["enable.auto.commit"] = False  # committed once announced (see the module docstring)
    if topic is None:
        try:
            ensure_catalog_topics(settings, stop_event)
        except StoppedWaiting as stopped:  # nothing read yet: a stop like any other
            log.warning("alerts: %s; nothing was read", stopped)
            return stats

    points = CommitPoints()  # commit only past records whose alerts are all out

    def queued_finished() -> tuple[int, int]:
        return sender.progress() if sender else (0, 0)

    def commit(consumer: Any, offsets: dict[tuple[str, int], int], final: bool) -> None:
        if not offsets:
            return
        parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            consumer.commit(offsets=parts, asynchronous=not final)
        except KafkaException as exc:  # re-read after a restart: at least once
            log.warning("alerts: commit failed (these stops may be announced again): %s", exc)

    def mark_and_commit(consumer: Any, final: bool = False) -> None:
        queued, finished = queued_finished()
        if not alerter.holding:
            points.mark(queued)
        due = points.due(finished)
        # at shutdown, the last due offsets again and synchronously: an asynchronous commit
        # may still be in flight when the consumer closes
        commit(consumer, due or (points.last_due if final else {}), final)

    def on_revoke(_consumer: Any, partitions: list[Any]) -> None:
        points.revoke((tp.topic, tp.partition) for tp in partitions)
        for tp in partitions:
            first_read.pop((tp.topic, tp.partition), None)

    #: the partitions this group had no committed offset for, each with its end offset when
    #: it was assigned: only the stops below that end are --max-age history (a first
    #: start); a stop past the group's offset, or written after the assignment (a worker
    #: clock an hour behind), is one it never announced (review H4: the whole process's life
    #: skipped them)
    first_read: dict[tuple[str, int], int] = {}

    def on_assign(consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            first_read.pop((tp.topic, tp.partition), None)
        try:
            committed = consumer.committed(partitions, timeout=10)
            for tp in committed:
                if tp.offset < 0 and tp.error is None:
                    _, end = consumer.get_watermark_offsets(tp, timeout=10)
                    first_read[(tp.topic, tp.partition)] = end
        except KafkaException as exc:  # unknown: announce however old (never drop)
            log.warning("alerts: committed offsets unknown, --max-age not applied: %s", exc)
            for tp in partitions:
                first_read.pop((tp.topic, tp.partition), None)

    def deliver(messages: list[AlertMessage]) -> None:
        for message in messages:
            emit(message.text)
            stats.announced += 1
            if message.storm:
                stats.folded += message.stops
            if sender is not None:
                sender.submit(message.text)  # never blocks; a full queue drops and counts

    consumer = Consumer(conf)
    drained = False
    try:
        if sender is not None:
            sender.start()
        consumer.subscribe(
            [topic or stops_topic(settings)], on_assign=on_assign, on_revoke=on_revoke
        )
        while not stop_event.is_set():
            for msg in consumer.consume(num_messages=500, timeout=0.2):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        if err.fatal():
                            raise BatonError(f"alerts: fatal Kafka error: {err}")
                        log.warning("alerts: %s", err)
                    continue
                points.read(msg.topic(), msg.partition(), msg.offset())
                first = msg.offset() < first_read.get((msg.topic(), msg.partition()), -1)
                deliver(_announce(alerter, skipped, msg, max_age_s if first else 0.0, keys))
            deliver(alerter.tick(time.monotonic()))
            mark_and_commit(consumer)
        deliver(alerter.flush(time.monotonic()))
        if sender is not None:
            stats.not_posted_at_shutdown = sender.close(drain_s)
        drained = True
        mark_and_commit(consumer, final=True)
    finally:
        if sender is not None and not drained:
            sender.close(0)  # after an error: stop the thread, post nothing more
        consumer.close()
    stats.duplicates = alerter.duplicates
    if sender is not None:
        stats.posted, stats.post_failed = sender.posted, sender.failed
        stats.post_dropped = sender.dropped
    return stats


def _announce(
    alerter: StopAlerter,
    skipped: SkippedRecords,
    msg: Any,
    max_age_s: float,
    keys: DecisionKeys | None = None,
) -> list[AlertMessage]:
    """The messages one record brings; a record that is not a Decision, or that the alerter
    cannot take, is counted and skipped (record isolation: one record never stops the loop)."""
    where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
    try:
        decision = read_stop(msg.value(), keys)
        if isinstance(decision, BadRecord):
            skipped.skip(decision, where, time.monotonic())
            return []
        age = stop_age(decision) if max_age_s else None
        if age is not None and age > max_age_s:
            why = f"decided {age:.0f} s ago, past --max-age {max_age_s:g} (a first start)"
            skipped.skip(BadRecord("too_old", why), where, time.monotonic())
            return []
        out = alerter.offer(decision, time.monotonic())
        if out and out[-1].text == stop_line(decision):  # its own line: its age if old
            out[-1] = AlertMessage(out[-1].text + stale_note(stop_age(decision)))
        return out
    except Exception as exc:  # a bug meeting a record we did not foresee: skip it, loudly
        bad = BadRecord("unexpected", clean_field(f"{type(exc).__name__}: {exc}", 200))
        skipped.skip(bad, where, time.monotonic())
        return []
