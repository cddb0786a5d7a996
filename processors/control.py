"""Follows gov.control on every worker: kill switches and policy updates, applied in order.

Every worker must see *all* control events (a kill switch stops a run wherever it lives), so
this is a plain confluent-kafka consumer that assigns the whole topic from the beginning
instead of joining the worker's consumer group. It runs in a thread and swaps immutable
values (``KillSwitches``, ``Policy``), which the hot path reads without locks.

**Complete as of t.** About once a second the follower *probes* the broker: the topic's
description, then each partition's watermarks (ListOffsets ``read_committed``, as the consumer
reads, so Kafka answers the last stable offset). Once the consumer's *position* has reached
every partition's high watermark of a probe sent at time t, every control event committed
before t has been applied: the kill switches are complete as of t. Positions, not offsets of
delivered records: a transaction's commit marker, and an aborted transaction, take offsets
that are never delivered. ``caught_up`` is set by the first complete probe; a worker decides
nothing before it. Probes go through their own admin client and never block the reading:
librdkafka drops a connection on its first timed-out request (``socket.max.fails=1``), and a
probe queued behind the consumer's long-poll fetch once took the fetch connection down with
it. A probe answered late still counts from the time it was sent.

**Fail closed.** ``is_fresh()`` is False while the kill switches are not known complete as of
``max_staleness_s`` ago (``BATON_CONTROL_MAX_STALENESS_S``, 15 s by default), whatever the
cause: broker unreachable or frozen, topic deleted, authorization refused, partition without
a leader, or a consumer that does not advance (a probe is answered, but the position never
reaches its high watermark). While stale the worker (``processors/app.py``) stops deciding:
batches wait in ``wait_until_fresh`` (clients fail closed on their own timeout, with
``governance_unavailable``), the approval sweep pauses, and the follower logs why every 5 s
(topic, broker, positions, last errors). After ``give_up_after_s`` (10 x the bound by
default) without a complete read *and* without the position moving, the follower gives up:
the process exits with ``EXIT_CONTROL_LOST`` committing nothing, so a supervisor restarts it
and the restart reads the topic from the beginning.

What this guarantees: a kill switch committed at time t is in force for every decision this
worker makes after t + ``max_staleness_s`` (on the worker's monotonic clock).

Not guaranteed: decisions made before a kill switch was read are not revoked. A control topic
flooded faster than the follower drains it keeps the worker stale while the flood lasts
(positions are judged only after a poll that did not fill its batch of 500; it does not exit
while the position moves). Deleting the control topic under a running worker crashes it on
Tansu (librdkafka 2.16 segfaults on the Fetch answer for an unknown topic): closed, but by a
crash. Tansu answers ListOffsets with the first offset of the last record batch + 1, which
is why positions are judged only once the consumer's queue is drained (a fetched batch
arrives whole); it keeps no aborted records at all, and answers a read_committed ListOffsets
below an open transaction's data. Real Kafka does neither.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from baton.processors.batch import DeadLetter, InputRecord, dead_letter_record
from baton.processors.control_progress import ControlProgress
from baton.processors.engine import (
    NO_KILLS,
    KillSwitches,
    Origin,
    apply_control,
    apply_policy_update,
)
from baton.processors.exits import EXIT_CONTROL_LOST, exit_without_commit
from baton.processors.recorded import input_text
from baton.schemas.decision import Decision, Reason
from baton.schemas.errors import ConfigError
from baton.schemas.events import EventError, KillSwitch, KillSwitchReleased, parse_control_event
from baton.schemas.policy import Policy

__all__ = ["DEFAULT_MAX_STALENESS_S", "GIVE_UP_FACTOR", "ControlFollower", "ControlProgress"]

log = logging.getLogger(__name__)

#: default of BATON_CONTROL_MAX_STALENESS_S: how old the kill switches may be when deciding
DEFAULT_MAX_STALENESS_S = 15.0
#: the follower gives up (the process exits) after this many times the staleness bound
GIVE_UP_FACTOR = 10
_MIN_STALENESS_S, _MAX_STALENESS_S = 1.0, 3600.0
_MAX_GIVE_UP_S = 86_400.0
_CONSUME_BATCH = 500
_POLL_S = 0.2
_PROBE_POLL_S = 0.02
_LOG_EVERY_S = 5.0


class _Unreadable(Exception):
    """The control topic cannot be read as it is (partitions gone)."""


@dataclass
class _ProbeInFlight:
    at: float  #: monotonic time before the first request left
    described: Future[Any]
    lows: dict[int, Future[Any]] | None = None
    highs: dict[int, Future[Any]] | None = None


def _reason(exc: Exception) -> str:
    """librdkafka's own words for a failure ("Broker: Unknown topic or partition")."""
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)


def _check_bounds(max_staleness_s: float, give_up_after_s: float) -> None:
    if not _MIN_STALENESS_S <= max_staleness_s <= _MAX_STALENESS_S:  # also refuses NaN
        raise ConfigError(
            f"BATON_CONTROL_MAX_STALENESS_S: must be between {_MIN_STALENESS_S:g} and "
            f"{_MAX_STALENESS_S:g} seconds, got {max_staleness_s!r}"
        )
    if not max_staleness_s < give_up_after_s <= _MAX_GIVE_UP_S:  # also refuses NaN
        raise ConfigError(
            f"control follower give_up_after_s: must be above the staleness bound "
            f"({max_staleness_s:g} s) and at most {_MAX_GIVE_UP_S:g} s, got {give_up_after_s!r}"
        )


class ControlFollower:
    """The kill switches and policy of ``topic``, and how fresh they are (see the module doc).

    API for the worker: ``start()``, ``caught_up`` (an Event), ``kills``, ``policy``,
    ``on_policy(listener)``, ``is_fresh()``, ``staleness_s()``, ``why_stale()`` and
    ``await wait_until_fresh()`` before deciding.
    """

    def __init__(
        self,
        consumer_conf: dict[str, Any],
        topic: str,
        policy: Policy,
        *,
        worker: str | None,
        on_decision: Callable[[Decision], None],
        on_dead_letter: Callable[[DeadLetter], None],
        max_staleness_s: float = DEFAULT_MAX_STALENESS_S,
        give_up_after_s: float | None = None,
        on_give_up: Callable[[str], None] | None = None,
    ) -> None:
        give_up = GIVE_UP_FACTOR * max_staleness_s if give_up_after_s is None else give_up_after_s
        _check_bounds(max_staleness_s, give_up)
        self.topic = topic
        self.kills: KillSwitches = NO_KILLS
        self.policy = policy
        #: where the policy in force came from (logged when the topic is caught up)
        self.policy_source = "the worker's --policy file (or the seed policy)"
        #: event time of the last signed policy update applied (older ones are replays)
        self._policy_signed_at: float | None = None
        self.max_staleness_s = float(max_staleness_s)
        self.give_up_after_s = float(give_up)
        # several probes per bound; a probe may take up to the bound (it never blocks the
        # reading, and a late answer still counts from the time the probe was sent)
        self._probe_every_s = min(1.0, self.max_staleness_s / 5)
        self._probe_timeout_s = self.max_staleness_s
        self._worker = worker
        self._on_decision = on_decision
        self._on_dead_letter = on_dead_letter
        self._on_give_up = on_give_up or self._exit
        self._bootstrap = str(consumer_conf.get("bootstrap.servers", "?"))
        self._conf = {
            "group.id": f"baton-control-{worker}",  # never joins: we assign() by hand
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # librdkafka backs reconnects off up to 10 s: a broker back from an outage would
            # stay unread (and this worker stale) that long
            "reconnect.backoff.max.ms": 1000,
            # measured on Tansu: a kill switch took up to 0.38 s to apply with librdkafka's
            # 500 ms fetch wait, up to 0.19 s with 100 ms (10 idle fetches/s: nothing)
            "fetch.wait.max.ms": 100,
            # librdkafka's lines ("Connection refused" every second) into logging, not stderr
            "logger": logging.getLogger("baton.kafka"),
            **consumer_conf,
            # aborted records are not control events; and a read_committed ListOffsets
            # answers the last stable offset, so an open transaction cannot hold "caught up"
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
            "error_cb": self._on_client_error,
        }
        self._admin_conf = {
            "reconnect.backoff.max.ms": 1000,
            "logger": logging.getLogger("baton.kafka"),
            **consumer_conf,
            "error_cb": self._on_client_error,
        }
        self.progress = ControlProgress(time.monotonic())
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._policy_listeners: list[Callable[[Policy], None]] = []
        self._give_up_lock = threading.Lock()
        self._gave_up = False

    # ------------------------------------------------------------------ public
    def on_policy(self, listener: Callable[[Policy], None]) -> None:
        self._policy_listeners.append(listener)

    def start(self) -> None:
        self.progress = ControlProgress(time.monotonic())
        self._thread = threading.Thread(target=self._run, name="baton-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def is_fresh(self) -> bool:
        """True when every control event committed ``max_staleness_s`` ago has been applied."""
        return self.progress.is_fresh(time.monotonic(), self.max_staleness_s)

    def staleness_s(self) -> float:
        """Seconds since the kill switches were last known complete (since start if never)."""
        return self.progress.age(time.monotonic())

    def why_stale(self) -> str:
        """Why the kill switches are (or may soon be) stale: topic, broker, positions, error."""
        return self.progress.describe(time.monotonic(), self.topic, self._bootstrap)

    async def wait_until_fresh(self) -> None:
        """Return once fresh (at once when it is): the worker must not decide on stale kills.

        Also the watchdog of a follower thread that would hang: after ``give_up_after_s``
        without a complete read and without progress, the process exits from here too.
        """
        while not self.is_fresh():
            if self.progress.given_up(time.monotonic(), self.give_up_after_s):
                self._give_up()
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        consumer = None
        try:
            consumer = Consumer(self._conf)
            # probes get their own client: librdkafka drops a connection on its first timed
            # out request (socket.max.fails=1), and a probe waiting behind the consumer's
            # long-poll fetch timed out and tore down the fetch connection with it
            admin = AdminClient(self._admin_conf)
            self._follow(consumer, admin)
        except Exception:
            # a dead follower would silently stop enforcing kill switches (fail open): the
            # worker must not outlive it. Exit; a restart reads the control topic again.
            exit_without_commit(
                EXIT_CONTROL_LOST,
                "control follower crashed; the worker exits rather than decide "
                "without kill switches",
            )
        finally:
            if consumer is not None:
                consumer.close()

    def _follow(self, consumer: Consumer, admin: AdminClient) -> None:
        assigned: list[int] = []
        probe: _ProbeInFlight | None = None
        next_probe = 0.0
        next_log = time.monotonic() + _LOG_EVERY_S
        was_fresh = warned = False
        while not self._stop.is_set():
            now = time.monotonic()
            if probe is None and now >= next_probe:
                probe = self._send_probe(admin, now)
                next_probe = now + self._probe_every_s
            elif probe is not None:
                probe, assigned = self._advance_probe(probe, admin, consumer, assigned)
            # poll briefly while a probe is on its way, so its answer is taken up at once
            wait = _PROBE_POLL_S if probe is not None else max(0.0, min(_POLL_S, next_probe - now))
            msgs = consumer.consume(_CONSUME_BATCH, wait)
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    self.progress.failed(time.monotonic(), err.str(), "reading")
                else:
                    self._apply(msg)
            now = time.monotonic()
            if assigned and len(msgs) < _CONSUME_BATCH:  # drained: see the module docstring
                self._check_positions(consumer, assigned, now)
            fresh = self.progress.is_fresh(now, self.max_staleness_s)
            if fresh and warned:
                log.warning("control topic %s is read again: this worker decides", self.topic)
                warned = False
            if not fresh and (was_fresh or now >= next_log):
                log.warning("no decisions on this worker: %s", self.why_stale())
                next_log = now + _LOG_EVERY_S
                warned = True
            was_fresh = fresh
            if self.progress.given_up(now, self.give_up_after_s):
                self._give_up()
                return

    def _check_positions(self, consumer: Consumer, assigned: list[int], now: float) -> None:
        tps = consumer.position([TopicPartition(self.topic, p) for p in assigned])
        completed = self.progress.advanced(now, {tp.partition: tp.offset for tp in tps})
        if completed and not self.caught_up.is_set():
            log.info(
                "control topic %s caught up: kills=%s policy=%s from %s",
                self.topic,
                self.kills,
                self.policy.version,
                self.policy_source,
            )
            self.caught_up.set()

    def _send_probe(self, admin: AdminClient, at: float) -> _ProbeInFlight:
        """Ask for the topic's partitions (first step of a probe; ``at`` is before it left)."""
        topics = TopicCollection([self.topic])
        described = admin.describe_topics(topics, request_timeout=self._probe_timeout_s)
        self.progress.sent(at)
        return _ProbeInFlight(at, described[self.topic])

    def _advance_probe(
        self, probe: _ProbeInFlight, admin: AdminClient, consumer: Consumer, assigned: list[int]
    ) -> tuple[_ProbeInFlight | None, list[int]]:
        """Take up what has come back (never waits): (the probe if still on its way, assignment).

        Step one answered: assign the partitions and ask for their watermarks (read_committed,
        so the high one is the last stable offset). Step two answered: a probe for
        ``progress``. Any failure, including a request timeout: no contact, and a new probe.
        """
        try:
            if probe.highs is None:
                if not probe.described.done():
                    return probe, assigned
                parts = sorted(p.id for p in probe.described.result().partitions)
                if parts != assigned:
                    assigned = self._assign(consumer, parts, assigned)
                tps = [TopicPartition(self.topic, p) for p in parts]
                probe.lows = self._offsets(admin, tps, OffsetSpec.earliest())
                probe.highs = self._offsets(admin, tps, OffsetSpec.latest())
                return probe, assigned
            assert probe.lows is not None
            if not all(f.done() for f in (*probe.lows.values(), *probe.highs.values())):
                return probe, assigned
            ends = {
                p: (probe.lows[p].result().offset, high.result().offset)
                for p, high in probe.highs.items()
            }
        except (KafkaException, _Unreadable) as exc:
            step = "topic description" if probe.highs is None else "watermarks"
            self.progress.failed(time.monotonic(), f"{step}: {_reason(exc)}")
            return None, assigned
        self.progress.probed(probe.at, ends)
        return None, assigned

    def _offsets(
        self, admin: AdminClient, tps: list[TopicPartition], spec: OffsetSpec
    ) -> dict[int, Future[Any]]:
        futures = admin.list_offsets(
            {tp: spec for tp in tps},
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=self._probe_timeout_s,
        )
        return {tp.partition: f for tp, f in futures.items()}

    def _assign(self, consumer: Consumer, parts: list[int], assigned: list[int]) -> list[int]:
        gone = sorted(set(assigned) - set(parts))
        if gone:
            # never seen on Kafka (partitions only grow): the topic was deleted and made
            # again. Stay stale; giving up restarts the worker onto the new topic.
            raise _Unreadable(f"topic {self.topic}: partitions {gone} vanished")
        # partitions already followed go on from their positions, new ones from the start
        # (a partition with nothing consumed yet has no position: the start too)
        known = consumer.position([TopicPartition(self.topic, p) for p in assigned])
        start = {tp.partition: tp.offset for tp in known if tp.offset >= 0}
        consumer.assign(
            [TopicPartition(self.topic, p, start.get(p, OFFSET_BEGINNING)) for p in parts]
        )
        log.info("control topic %s: following partitions %s", self.topic, parts)
        return parts

    def _on_client_error(self, err: KafkaError) -> None:
        # librdkafka's own errors (all brokers down, authentication, ...): why, for the log
        self.progress.failed(time.monotonic(), err.str(), "client")

    def _give_up(self) -> None:
        with self._give_up_lock:
            if self._gave_up:
                return
            self._gave_up = True
        self._stop.set()
        self._on_give_up(
            f"control follower gives up after {self.give_up_after_s:g} s: {self.why_stale()}"
        )

    @staticmethod
    def _exit(reason: str) -> None:
        exit_without_commit(
            EXIT_CONTROL_LOST,
            "%s; the worker exits rather than decide on stale kill switches",
            reason,
        )

    # ------------------------------------------------------------------ control events
    def _apply(self, msg: Any) -> None:
        now = datetime.now(UTC)
        raw = msg.value()
        rec = InputRecord(msg.topic(), msg.partition(), msg.offset(), msg.key(), raw)
        try:
            event = parse_control_event(raw or b"")
        except EventError as exc:
            self._on_dead_letter(dead_letter_record(rec, exc.kind, str(exc), self._worker, now))
            return
        origin = Origin(self._worker, msg.partition(), msg.offset())
        if isinstance(event, (KillSwitch, KillSwitchReleased)):
            self.kills, record = apply_control(self.kills, event, self.policy, now, origin)
            record.input = input_text(event)  # `baton up` re-issues it after a restart
            if record.reason in (Reason.KILL_SWITCH, Reason.KILL_SWITCH_RELEASED):
                log.warning("%s %s %s by %s", event.type, event.scope, event.target, event.operator)
            else:
                log.error(
                    "refused %s %s %s claiming operator %s: %s (%s)",
                    event.type,
                    event.scope,
                    event.target,
                    event.operator,
                    record.reason,
                    record.detail,
                )
            self._on_decision(record)
            return
        before = self.policy
        step = apply_policy_update(
            before,
            self._policy_signed_at,
            event,
            now,
            origin,
            f"policy_updated at offset {msg.offset()}",
        )
        if step.record is None:
            self._on_dead_letter(
                dead_letter_record(rec, "policy", step.error or "", self._worker, now)
            )
            return
        step.record.input = input_text(event)
        self._on_decision(step.record)
        if not step.applied:
            log.error(
                "refused policy_updated at offset %d claiming operator %s: %s (%s); "
                "keeping policy %s",
                msg.offset(),
                event.operator,
                step.record.reason,
                step.record.detail,
                before.version,
            )
            return
        log.warning("policy %s -> %s (by %s)", before.version, step.policy.version, event.operator)
        self._policy_signed_at = step.signed_at
        self.policy = step.policy
        self.policy_source = (
            f"policy_updated at {self.topic}[{msg.partition()}]@{msg.offset()} by "
            f"{event.operator}{' (signed)' if before.operators else ''}"
        )
        for listener in self._policy_listeners:
            listener(step.policy)
