"""Stop alerts from gov.stops: one line per stop, deduplicated, storms folded, console and webhook.

The decision logic (:class:`StopAlerter`) is pure - it is given the time - so dedup and storm
folding are tested without a broker; :func:`run_alerts` wires it to Kafka and the outputs.

Guarantees: within one process, a decision_id is announced at most once (the last
``remember`` ids are kept); offsets are committed only when nothing is held back in a storm,
so a crash re-reads (and re-announces) at most the stops since the last commit - at least once
across restarts, never silently dropped. Not guaranteed: webhook delivery (retried, then
logged; the console line is always printed).
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from baton.schemas.decision import DECISION_ADAPTER, Decision, Outcome
from baton.schemas.errors import BatonError
from baton.schemas.settings import Settings

__all__ = [
    "AlertMessage",
    "StopAlerter",
    "post_webhook",
    "run_alerts",
    "stop_line",
]

log = logging.getLogger(__name__)


def stop_line(decision: Decision) -> str:
    """The seed's alert line, e.g. ``🛑 Multi-Agent run run_742 stopped: ownership_conflict,
    handoff=planner -> researcher, task=refund_check``."""
    return (
        f"🛑 Multi-Agent run {decision.run_id} stopped: {decision.reason}, "
        f"handoff={decision.from_agent or '?'} -> {decision.to_agent or '?'}, "
        f"task={decision.task_id or '?'}"
    )


@dataclass(frozen=True, slots=True)
class AlertMessage:
    """One message to deliver; a storm summary covers many decisions."""

    text: str
    decision_ids: tuple[str, ...]
    storm: bool = False


@dataclass
class _Storm:
    started: float
    stops: list[Decision] = field(default_factory=list)


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
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._recent: deque[float] = deque()
        self._storm: _Storm | None = None
        self.duplicates = 0

    @property
    def holding(self) -> int:
        """Stops held for a storm summary not yet delivered."""
        return len(self._storm.stops) if self._storm else 0

    def offer(self, decision: Decision, now: float) -> list[AlertMessage]:
        """Messages due after ``decision`` arrives at ``now`` (monotonic seconds)."""
        out = self.tick(now)
        if decision.outcome != Outcome.STOP:
            return out
        if decision.decision_id in self._seen:
            self.duplicates += 1
            self._seen.move_to_end(decision.decision_id)
            return out
        self._seen[decision.decision_id] = None
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)
        if self._storm is not None:
            self._storm.stops.append(decision)
            return out
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - self.storm_window_s:
            self._recent.popleft()
        if self.storm_threshold and len(self._recent) >= self.storm_threshold:
            self._storm = _Storm(started=now, stops=[decision])
            return out
        return [*out, AlertMessage(stop_line(decision), (decision.decision_id,))]

    def tick(self, now: float) -> list[AlertMessage]:
        """Summaries whose window has passed by ``now``; call it even when nothing arrives."""
        storm = self._storm
        if storm is None or now - storm.started < self.storm_window_s:
            return []
        message = self._summary(storm, now)
        if len(storm.stops) >= self.storm_threshold:
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
        if not storm.stops:
            return None
        stops = storm.stops
        reasons = Counter(d.reason for d in stops).most_common()
        tenants = Counter(d.tenant for d in stops).most_common(5)
        runs = len({d.run_id for d in stops})
        seconds = max(now - storm.started, 0.0)
        text = (
            f"🛑 Stop storm: {len(stops)} stops in {seconds:.1f} s across {runs} Multi-Agent "
            f"run{'s' if runs != 1 else ''}: "
            + ", ".join(f"{reason} ×{n}" for reason, n in reasons)
            + "; tenants: "
            + ", ".join(f"{tenant} ×{n}" for tenant, n in tenants)
            + f"; first: {stop_line(stops[0]).removeprefix('🛑 ')}"
        )
        return AlertMessage(text, tuple(d.decision_id for d in stops), storm=True)


def post_webhook(url: str, text: str, timeout_s: float = 5.0, attempts: int = 3) -> bool:
    """POST Slack's ``{"text": ...}`` to ``url``; retried with backoff, False when it never
    succeeded (logged, never raised: the console line is already out)."""
    body = orjson.dumps({"text": text})
    for attempt in range(attempts):
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                if 200 <= response.status < 300:
                    return True
                problem = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            problem = str(getattr(exc, "reason", exc))
        log.warning(
            "alerts: webhook %s failed (attempt %d of %d): %s", url, attempt + 1, attempts, problem
        )
        if attempt + 1 < attempts:
            time.sleep(0.5 * 2**attempt)
    log.error("alerts: webhook %s unreachable, message not posted: %s", url, text)
    return False


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
    consumer_overrides: dict[str, Any] | None = None,
) -> StopAlerter:
    """Consume gov.stops and announce each stop until ``stop_event`` is set.

    ``emit`` prints a message (default: stdout); ``webhook_url`` (default
    ``settings.webhook_url``) also receives it. Stops older than ``max_age_s`` (by decided_at;
    0 = any age) are skipped, so a first start does not replay the topic's history as alerts.
    """
    from confluent_kafka import Consumer, KafkaError

    from baton.sinks.sink import ensure_catalog_topics, stops_topic
    from baton.streams.kafka import consumer_config

    emit = emit or (lambda text: print(text, flush=True))
    webhook_url = webhook_url if webhook_url is not None else settings.webhook_url
    alerter = StopAlerter(storm_threshold, storm_window_s)
    overrides: dict[str, Any] = {"error_cb": lambda err: log.warning("alerts: Kafka: %s", err)}
    session_timeout_s = getattr(settings, "session_timeout_s", None)
    if session_timeout_s:
        overrides["session.timeout.ms"] = int(session_timeout_s * 1000)
    overrides.update(consumer_overrides or {})
    conf = consumer_config(
        settings.kafka_config(), group_id or f"{settings.app_id}-alerts", overrides
    )
    conf["enable.auto.commit"] = False  # committed once announced (see the module docstring)
    if topic is None:
        ensure_catalog_topics(settings, stop_event)
    consumer = Consumer(conf)
    uncommitted = False

    def deliver(messages: list[AlertMessage]) -> None:
        for message in messages:
            emit(message.text)
            if webhook_url:
                post_webhook(webhook_url, message.text)

    try:
        consumer.subscribe([topic or stops_topic(settings)])
        while not stop_event.is_set():
            for msg in consumer.consume(num_messages=500, timeout=0.2):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        if err.fatal():
                            raise BatonError(f"alerts: fatal Kafka error: {err}")
                        log.warning("alerts: %s", err)
                    continue
                uncommitted = True
                decision = _parse(msg)
                if decision is None or _too_old(decision, max_age_s):
                    continue
                deliver(alerter.offer(decision, time.monotonic()))
            deliver(alerter.tick(time.monotonic()))
            if uncommitted and alerter.holding == 0:
                # everything read so far is announced: its offsets may go
                consumer.commit(asynchronous=True)
                uncommitted = False
        deliver(alerter.flush(time.monotonic()))
        if uncommitted:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return alerter


def _parse(msg: Any) -> Decision | None:
    try:
        return DECISION_ADAPTER.validate_json(msg.value() or b"")
    except (ValidationError, ValueError) as exc:
        log.error(
            "alerts: %s[%d]@%d is not a Decision, skipped: %s",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            str(exc).splitlines()[0],
        )
        return None


def _too_old(decision: Decision, max_age_s: float) -> bool:
    if not max_age_s or decision.decided_at is None:
        return False
    decided = decision.decided_at
    decided = decided.replace(tzinfo=UTC) if decided.tzinfo is None else decided
    return (datetime.now(UTC) - decided).total_seconds() > max_age_s
