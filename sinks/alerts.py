"""Stop alerts from gov.stops: one line per stop, deduplicated, storms folded, console and webhook.

The decision logic (:class:`StopAlerter`) is pure - it is given the time - so dedup and storm
folding are tested without a broker; :func:`run_alerts` wires it to Kafka and the outputs.
The webhook is posted from its own thread and bounded queue (:mod:`baton.sinks.alert_webhook`),
so a hanging webhook never slows the consume loop; names are made safe to show by
:mod:`baton.sinks.alert_text`; bad records are sorted out by :mod:`baton.sinks.alert_records`,
and what may be committed is kept by :mod:`baton.sinks.alert_offsets`.

Guarantees: a decision_id is announced at most once for what it shows (the last ``remember``
as 16-byte digests of the id and the alert's text: a forged stop under a real one's id cannot
hide it), within one process, and across its restarts given a state directory
(:mod:`baton.sinks.alert_seen`); a stop decided longer ago than ``--max-age`` that it never
announced is folded into one late summary an interval, never paged alone
(:mod:`baton.sinks.alert_fold`: h44b F1); a record on gov.stops that is not a Decision, or
none of ``decision_keys`` signed (``unsigned``), is skipped and counted by kind (logged once a
kind, then at most once a minute), never fatal; memory is
bounded whatever the records hold (a storm keeps counts, not the stops). Offsets are
committed only up to stops that are announced: printed, not held in a summary, and done with
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
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from baton.schemas.decision import Decision, Outcome
from baton.schemas.decision_signing import DecisionKeys, decision_keys
from baton.schemas.errors import BatonError
from baton.schemas.settings import Settings
from baton.sinks.alert_fold import LateKeys, LateStops, Storm, late_text, storm_text
from baton.sinks.alert_offsets import CommitPoints
from baton.sinks.alert_post import post_webhook
from baton.sinks.alert_records import BadRecord, SkippedRecords, read_stop
from baton.sinks.alert_seen import AnnouncedStops
from baton.sinks.alert_text import (
    age_words,
    clean_field,
    decided_posix,
    stale_note,
    stop_age,
    stop_line,
)
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

#: seconds a late summary gathers late stops (one line an interval, however many come)
LATE_WINDOW_S = 60.0
#: the least a state file keeps a stop for (a replay within it is a duplicate, counted)
KEEP_AT_LEAST_S = 86_400.0


@dataclass(frozen=True, slots=True)
class AlertMessage:
    """One message to deliver; a storm summary covers many stops."""

    text: str
    #: how many stop decisions the message announces
    stops: int = 1
    storm: bool = False


class StopAlerter:
    """Turns stop decisions into messages: dedup by decision_id, storms and late stops folded.

    A storm: ``storm_threshold`` stops within ``storm_window_s`` seconds. The stops before
    the threshold are announced one by one; from the threshold on they are held and every
    ``storm_window_s`` one summary covers them, until a window brings fewer than the
    threshold. ``storm_threshold=0`` turns folding off. A late stop: one decided more than
    ``late_after_s`` before ``wall`` (0: none is), held for one summary ``late_window_s``
    after the first (or a storm's next): a replay or an alerter that was down, never paged
    alone. ``seen``: the announced stops (default: ``remember`` of them, in memory only).
    """

    def __init__(
        self,
        storm_threshold: int = 20,
        storm_window_s: float = 5.0,
        remember: int = 100_000,
        *,
        late_after_s: float = 0.0,
        late_window_s: float = LATE_WINDOW_S,
        seen: AnnouncedStops | None = None,
    ) -> None:
        if storm_threshold < 0 or storm_window_s <= 0 or remember < 1 or late_window_s <= 0:
            raise ValueError(
                f"StopAlerter: storm_threshold >= 0, storm_window_s > 0, remember >= 1 and "
                f"late_window_s > 0 expected, got {storm_threshold}, {storm_window_s}, "
                f"{remember}, {late_window_s}"
            )
        self.storm_threshold = storm_threshold
        self.storm_window_s = storm_window_s
        self.late_after_s, self.late_window_s = late_after_s, late_window_s
        # digests, not the ids: a hostile 60 KB decision_id costs 16 bytes here
        self.seen = seen if seen is not None else AnnouncedStops(remember)
        self._recent: deque[float] = deque()
        self._storm: Storm | None = None
        self._late: LateStops | None = None
        self._late_keys = LateKeys(remember)
        self.duplicates = 0
        #: stops folded into late summaries, all told
        self.late = 0

    @property
    def holding(self) -> int:
        """Stops held for a storm or late summary not yet delivered."""
        return (self._storm.count if self._storm else 0) + (self._late.count if self._late else 0)

    def offer(
        self, decision: Decision, now: float, wall: float | None = None
    ) -> list[AlertMessage]:
        """Messages due after ``decision`` arrives at ``now`` (monotonic seconds), ``wall``
        the POSIX time then (None: no stop is late)."""
        out = self.tick(now)
        if decision.outcome != Outcome.STOP:
            return out
        # the id and what the alert shows: a forged stop under a real stop's id (ids are
        # computable from gov.handoff.requests) was taken for its redelivery and hid it
        key = hashlib.blake2b(
            orjson.dumps([decision.decision_id, stop_line(decision), clean_field(decision.tenant)]),
            digest_size=16,
        ).digest()
        if key in self.seen or key in self._late_keys:
            self.duplicates += 1
            self.seen.touch(key)
            return out
        decided = decided_posix(decision)
        decided = wall if decided is None else decided
        # the signed decided_at: a replay cannot make itself younger without the key
        if wall is not None and decided is not None and 0 < self.late_after_s < wall - decided:
            self._late_keys.add(key)  # (not in seen: see LateKeys)
            self.late += 1
            self._late = self._late or LateStops(started=now)
            self._late.add(decision, wall - decided)
            return out
        self.seen.add(key, decided if decided is not None else float("inf"))
        if self._storm is not None:
            self._storm.add(decision, stop_line(decision))
            return out
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - self.storm_window_s:
            self._recent.popleft()
        if self.storm_threshold and len(self._recent) >= self.storm_threshold:
            self._storm = Storm(started=now)
            self._storm.add(decision, stop_line(decision))
            return out
        return [*out, AlertMessage(stop_line(decision))]

    def tick(self, now: float) -> list[AlertMessage]:
        """Summaries whose window has passed by ``now``; call it even when nothing arrives."""
        late = self._late
        out = self._late_out() if late and now - late.started >= self.late_window_s else []
        storm = self._storm
        if storm is None or now - storm.started < self.storm_window_s:
            return out
        # the late stops with it: a storm going on and late stops between its ticks left no
        # moment with nothing held, and no offset was committed (h45c F1)
        out += self._late_out()
        if storm.count >= self.storm_threshold:
            self._storm = Storm(started=now)  # still storming: the next window folds too
        else:
            self._storm = None
            self._recent.clear()
        return out + self._summary(storm, now)

    def flush(self, now: float) -> list[AlertMessage]:
        """At shutdown: the summaries of whatever a storm and the late stops still hold."""
        storm, self._storm = self._storm, None
        return (self._summary(storm, now) if storm else []) + self._late_out()

    def _late_out(self) -> list[AlertMessage]:
        """The late summary of what is held (none: nothing), and nothing held any more."""
        late, self._late = self._late, None
        return [AlertMessage(late_text(late, self.late_after_s), late.count)] if late else []

    @staticmethod
    def _summary(storm: Storm, now: float) -> list[AlertMessage]:
        if not storm.count:
            return []
        return [AlertMessage(storm_text(storm, now - storm.started), storm.count, storm=True)]


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
    state_dir: Path | None = None,
    late_window_s: float = LATE_WINDOW_S,
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
    alerts; past a committed offset a stop that old is folded into a late summary every
    ``late_window_s`` (the alerter was down, or the stop is a replay: never dropped, never
    paged alone). ``state_dir`` keeps the stops announced across restarts (alert_seen.py;
    None: memory only). ``on_ready(stats, alerter, sender_or_None)`` hands the live counters
    to the metrics (processors/metrics_audit.py).
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    from baton.sinks.sink import StoppedWaiting, ensure_catalog_topics, stops_topic
    from baton.sinks.sink_start import receive_bounds
    from baton.streams.kafka import consumer_config, output_isolation

    emit = emit or (lambda text: print(text, flush=True))
    webhook_url = webhook_url if webhook_url is not None else settings.webhook_url
    if hasattr(webhook_url, "get_secret_value"):  # a pydantic SecretStr: masked when printed
        webhook_url = webhook_url.get_secret_value()
    keep_s = max(2 * max_age_s, KEEP_AT_LEAST_S) if max_age_s else 0.0
    seen = AnnouncedStops(keep_s=keep_s, state_dir=state_dir)
    alerter = StopAlerter(storm_threshold, storm_window_s, late_after_s=max_age_s,
                          late_window_s=late_window_s, seen=seen)  # fmt: skip
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
            points.mark(queued, seen.added)
        due = points.due(finished)
        if due:  # remembered before committed: a crash between re-reads them as duplicates
            seen.settle(points.settled, time.time())
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
    seen.open(time.time())
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
                # a mark at each record while nothing is held: a stream of late (or storming)
                # stops held one at every batch's end, and no offset was committed at all
                deliver(alerter.tick(time.monotonic()))
                if not alerter.holding:
                    points.mark(queued_finished()[0], seen.added)
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
        seen.close(time.time())
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
        late = alerter.late
        out = alerter.offer(decision, time.monotonic(), time.time())
        if alerter.late > late:  # counted: a replay of old stops shows on the metric
            why = (
                f"decided {age_words(stop_age(decision) or 0.0)} ago, past --max-age "
                f"{alerter.late_after_s:g} s: in the next late summary (a replay, or the "
                "alerter was down)"
            )
            skipped.skip(BadRecord("late", why), where, time.monotonic())
        if out and out[-1].text == stop_line(decision):  # its own line: its age if old
            out[-1] = AlertMessage(out[-1].text + stale_note(stop_age(decision)))
        return out
    except Exception as exc:  # a bug meeting a record we did not foresee: skip it, loudly
        bad = BadRecord("unexpected", clean_field(f"{type(exc).__name__}: {exc}", 200))
        skipped.skip(bad, where, time.monotonic())
        return []
