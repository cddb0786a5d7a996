"""Follows gov.control on every worker: kill switches and policy updates, applied in order.

Every worker must see *all* control events (a kill switch stops a run wherever it lives), so
this is a plain confluent-kafka consumer that assigns the whole topic from the beginning
instead of joining the worker's consumer group. It runs in a thread and swaps immutable
values (``KillSwitches``, ``Policy``), which the hot path reads without locks.

**Complete as of t.** About once a second the follower *probes* the broker: the topic's
description, then each partition's watermarks (ListOffsets ``read_uncommitted``, as the
consumer reads: the high watermark). Once the consumer's *position* has reached
every partition's high watermark of a probe sent at time t, every control event committed
before t has been applied: the kill switches are complete as of t. Positions, not offsets of
delivered records: a transaction's commit marker, and an aborted transaction, take offsets
that are never delivered. ``caught_up`` is set by the first complete probe; a worker decides
nothing before it. Probes go through their own admin client and never block the reading:
librdkafka drops a connection on its first timed-out request (``socket.max.fails=1``), and a
probe queued behind the consumer's long-poll fetch once took the fetch connection down with
it. A probe answered late still counts from the time it was sent.

**Every record, committed or not.** No Baton writer sends to gov.control in a transaction,
and whatever a record says is checked (signed, newer) before it counts. Read
``read_committed``, one transaction left open (a writer of the topic that never commits:
Tansu never aborts it, Kafka after ``transaction.timeout.ms``, unless another begins first)
held the last stable offset, and so every kill switch sent after it, back from every worker,
while the follower, its position at that offset, called itself fresh (measured on Tansu: a
kill acknowledged by the broker not applied 20 s later, staleness 0.5 s). So an aborted
transaction's records are read too (Tansu serves them as committed anyway).

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

**Bounded while not fresh.** What the follower makes of each record (its ``control``
decision, or a dead letter) is handed to the worker's publisher, which sends it only once the
worker decides again: while the follower is not fresh (reading the topic at a start, or a
flood) nothing is sent. A topic of 3,000 junk records of 60 KB held 340 MB more in the worker
when it started (measured); 100,000 of them, out of memory at every start. So while not fresh
at most ``MAX_HELD_BYTES`` of refusals and dead letters are handed over; past it they are
counted, and the count, their bytes and offsets logged (the records stay on the control topic,
kept forever); while fresh, at most ``MAX_HELD_BYTES`` a second (a flood sent once the worker
was fresh was all handed over until the follower was judged stale). The record of a command
that was applied is always handed over (its audit row is what ``baton up`` re-issues after a
restart).

Not guaranteed: decisions made before a kill switch was read are not revoked. A control topic
flooded faster than the follower drains it keeps the worker stale while the flood lasts
(positions are judged only after a poll that did not fill its batch of 500; it does not exit
while the position moves). Deleting the control topic under a running worker crashes it on
Tansu (librdkafka 2.16 segfaults on the Fetch answer for an unknown topic): closed, but by a
crash. Tansu answers ListOffsets with the first offset of the last record batch + 1, which
is why positions are judged only once the consumer's queue is drained (a fetched batch
arrives whole). Real Kafka does not.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from baton.processors.batch import DeadLetter, InputRecord
from baton.processors.control_apply import ControlInForce, apply_control_record
from baton.processors.control_probe import ControlProbe, ProbeInFlight
from baton.processors.control_progress import ControlProgress
from baton.processors.control_seal import seal
from baton.processors.engine import NO_KILLS, KillSwitches
from baton.processors.exits import EXIT_CONTROL_LOST, exit_without_commit
from baton.schemas.decision import Decision, Reason
from baton.schemas.errors import ConfigError
from baton.schemas.policy import Policy

__all__ = [
    "DEFAULT_MAX_STALENESS_S",
    "GIVE_UP_FACTOR",
    "MAX_HELD_BYTES",
    "ControlFollower",
    "ControlProgress",
]

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
#: how often the policy in force is said again to the listeners (the worker records and seals
#: it each time): a `baton up` restart reads the policy in force from the sealed records, and
#: one that outlived the audit's retention (a stack running longer with no update or start)
#: left only forged rows to read (a helper's attack, session 42); the retention is >= 1 day
POLICY_RESTATED_EVERY_S = 3600.0
#: librdkafka's largest receive.message.max.bytes: a Kafka answer's size is an int32
MAX_RECEIVE_BYTES = 2_147_483_647
#: refusals and dead letters handed to the publisher while not fresh, and while fresh in each
#: HELD_WINDOW_S (the module doc)
MAX_HELD_BYTES = 32 * 1024 * 1024
HELD_WINDOW_S = 1.0
#: the reasons of a control record whose command was applied: always handed over
_APPLIED = frozenset({Reason.KILL_SWITCH, Reason.KILL_SWITCH_RELEASED, Reason.POLICY_UPDATED})


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
        held: KillSwitches = NO_KILLS,
        seal_key: bytes = b"",
        restate_every_s: float = POLICY_RESTATED_EVERY_S,
    ) -> None:
        give_up = GIVE_UP_FACTOR * max_staleness_s if give_up_after_s is None else give_up_after_s
        _check_bounds(max_staleness_s, give_up)
        self.topic = topic
        #: ``held``: switches a `baton up` restart could not issue again (held_kills.py)
        self.kills: KillSwitches = held
        self.policy = policy
        #: where the policy in force came from (logged when the topic is caught up)
        self.policy_source = "the worker's --policy file (or the seed policy)"
        #: event time of the last policy update applied (older ones are replays: applied_time)
        self._policy_signed_at: float | None = None
        self.max_staleness_s = float(max_staleness_s)
        self.give_up_after_s = float(give_up)
        # several probes per bound; a probe may take up to the bound (it never blocks the
        # reading, and a late answer still counts from the time the probe was sent)
        self._probe_every_s = min(1.0, self.max_staleness_s / 5)
        self._probe = ControlProbe(topic, self.max_staleness_s)
        self._worker = worker
        #: BATON_AUDIT_CHAIN_KEY: each command's record is sealed with it (control_seal.py)
        self._seal_key = seal_key
        self._restate_every_s = restate_every_s
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
            # a fetch answer past librdkafka's 100 MB default is never received: one record of
            # 120 MB on gov.control (Tansu takes it; Kafka refuses past 1 MB unless raised)
            # kept every worker from reading the topic, each start ending in "control
            # follower gives up" (measured). At the protocol's bound it is read, and refused
            # as oversized like any record past MAX_EVENT_BYTES
            "receive.message.max.bytes": MAX_RECEIVE_BYTES,
            # librdkafka's lines ("Connection refused" every second) into logging, not stderr
            "logger": logging.getLogger("baton.kafka"),
            **consumer_conf,
            # every record, whatever transaction sent it (the module doc: an open one held
            # back every kill switch after it, under read_committed, while this was fresh)
            "isolation.level": "read_uncommitted",
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
        #: bytes of refusals and dead letters handed over since ``_held_since`` (reset at most
        #: every HELD_WINDOW_S while fresh); those withheld past MAX_HELD_BYTES: count, bytes,
        #: first and last offset
        self._held = 0
        self._held_since = time.monotonic()
        self._withheld: list[int] = [0, 0, -1, -1]

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
        probe: ProbeInFlight | None = None
        next_probe = 0.0
        next_log = time.monotonic() + _LOG_EVERY_S
        was_fresh = warned = False
        restate_at = time.monotonic() + self._restate_every_s
        while not self._stop.is_set():
            now = time.monotonic()
            if probe is None and now >= next_probe:
                probe = self._probe.send(admin, now, self.progress)
                next_probe = now + self._probe_every_s
            elif probe is not None:
                probe, assigned = self._probe.advance(
                    probe, admin, consumer, assigned, self.progress
                )
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
            if fresh:
                self._fresh_again(began=not was_fresh)
            if fresh and warned:
                log.warning("control topic %s is read again: this worker decides", self.topic)
                warned = False
            if not fresh and (was_fresh or now >= next_log):
                log.warning("no decisions on this worker: %s", self.why_stale())
                next_log = now + _LOG_EVERY_S
                warned = True
            was_fresh = fresh
            if fresh and now >= restate_at:  # the policy in force, said again: see the constant
                restate_at = now + self._restate_every_s
                for listener in self._policy_listeners:
                    listener(self.policy)
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
        """One record through ``apply_control_record`` (which never raises), then published."""
        rec = InputRecord(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value())
        in_force = ControlInForce(
            self.kills, self.policy, self._policy_signed_at, self.policy_source
        )
        applied = apply_control_record(in_force, rec, self._worker, datetime.now(UTC))
        after = applied.in_force
        self.kills, self._policy_signed_at = after.kills, after.policy_signed_at
        self.policy, self.policy_source = after.policy, after.policy_source
        letter, decision = applied.dead_letter, applied.decision
        if decision is not None:
            seal(decision, self._seal_key)
        if letter is not None and self._hold(len(letter.value), rec.offset):
            self._on_dead_letter(letter)
        if decision is not None and (
            decision.reason in _APPLIED
            or self._hold(len(decision.input or "") + len(decision.detail or "") + 512, rec.offset)
        ):
            self._on_decision(decision)
        if applied.policy_changed:
            for listener in self._policy_listeners:
                listener(after.policy)

    def _hold(self, size: int, offset: int) -> bool:
        """Whether a refusal or dead letter of about ``size`` bytes is handed over: within
        MAX_HELD_BYTES while not fresh, and within MAX_HELD_BYTES a HELD_WINDOW_S while fresh
        (the publisher sends what it was handed every second). Unbounded while fresh, a flood
        sent just after the worker was fresh was all handed over for the next 15 s, until the
        follower, its batches full, was judged stale: 1,200 records of 60 KB, 72 MB at once
        (the follower makes 128-600 MB/s of dead letters of 60 KB junk)."""
        if self._held + size <= MAX_HELD_BYTES:
            self._held += size
            return True
        count, held, first, _ = self._withheld
        if not count:
            log.error(
                "control topic %s: more than %d MiB of refusals and dead letters while this "
                "worker is not fresh, or within a second (a flood of the control topic?): the "
                "next are not published, only counted (they stay on the topic)",
                self.topic,
                MAX_HELD_BYTES >> 20,
            )
        self._withheld = [count + 1, held + size, offset if first < 0 else first, offset]
        return False

    def _fresh_again(self, began: bool) -> None:
        """Fresh (``began``: again, or for the first time): what was handed over is sent
        within a second, so a new window of MAX_HELD_BYTES opens every HELD_WINDOW_S; name
        what was withheld."""
        now = time.monotonic()
        if not began and now - self._held_since < HELD_WINDOW_S:
            return
        self._held, self._held_since = 0, now
        count, held, first, last = self._withheld
        if count:
            log.error(
                "control topic %s: %d refusals and dead letters (%d bytes, offsets %d to %d) "
                "were not published: past %d MiB while this worker was not fresh, or within a "
                "second; the records are on the control topic",
                self.topic,
                count,
                held,
                first,
                last,
                MAX_HELD_BYTES >> 20,
            )
            self._withheld = [0, 0, -1, -1]
