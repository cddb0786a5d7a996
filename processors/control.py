"""Follows gov.control on every worker: kill switches and policy updates, applied in order.

Every worker must see *all* control events (a kill switch stops a run wherever it lives), so
this is a plain confluent-kafka consumer that assigns the whole topic from the beginning
instead of joining the worker's consumer group. It runs in a thread and swaps immutable
values (``KillSwitches``, ``Policy``), which the hot path reads without locks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from baton.processors.batch import DeadLetter, InputRecord, dead_letter_record
from baton.processors.engine import NO_KILLS, KillSwitches, Origin, apply_control
from baton.processors.exits import EXIT_CONTROL_LOST, exit_without_commit
from baton.schemas.decision import Decision
from baton.schemas.errors import BatonError
from baton.schemas.events import EventError, KillSwitch, KillSwitchReleased, parse_control_event
from baton.schemas.policy import Policy, parse_policy

__all__ = ["ControlFollower"]

log = logging.getLogger(__name__)


class ControlFollower:
    def __init__(
        self,
        consumer_conf: dict[str, Any],
        topic: str,
        policy: Policy,
        *,
        worker: str | None,
        on_decision: Callable[[Decision], None],
        on_dead_letter: Callable[[DeadLetter], None],
    ) -> None:
        self.topic = topic
        self.kills: KillSwitches = NO_KILLS
        self.policy = policy
        self._worker = worker
        self._on_decision = on_decision
        self._on_dead_letter = on_dead_letter
        self._conf = {
            "group.id": f"baton-control-{worker}",  # never joins: we assign() by hand
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **consumer_conf,
        }
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._policy_listeners: list[Callable[[Policy], None]] = []

    def on_policy(self, listener: Callable[[Policy], None]) -> None:
        self._policy_listeners.append(listener)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="baton-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        consumer = Consumer(self._conf)
        try:
            meta = consumer.list_topics(self.topic, timeout=10)
            parts = sorted(meta.topics[self.topic].partitions) if self.topic in meta.topics else [0]
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
            ends = {}
            for p in parts:
                _, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
                ends[p] = high
            done = {p for p, high in ends.items() if high <= 0}
            if len(done) == len(parts):
                self.caught_up.set()
            while not self._stop.is_set():
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("control topic %s: %s", self.topic, msg.error())
                    continue
                self._apply(msg)
                if not self.caught_up.is_set() and msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    done.add(msg.partition())
                    if len(done) == len(parts):
                        log.info(
                            "control topic caught up: kills=%s policy=%s",
                            self.kills,
                            self.policy.version,
                        )
                        self.caught_up.set()
        except Exception:
            # a dead follower would silently stop enforcing kill switches (fail open): the
            # worker must not outlive it. Exit; a restart reads the control topic again.
            exit_without_commit(
                EXIT_CONTROL_LOST,
                "control follower crashed; the worker exits rather than decide "
                "without kill switches",
            )
        finally:
            consumer.close()

    def _apply(self, msg: Any) -> None:
        now = datetime.now(UTC)
        raw = msg.value()
        rec = InputRecord(msg.topic(), msg.partition(), msg.offset(), msg.key(), raw)
        try:
            event = parse_control_event(raw or b"")
        except EventError as exc:
            self._on_dead_letter(dead_letter_record(rec, exc.kind, str(exc), self._worker, now))
            return
        if isinstance(event, (KillSwitch, KillSwitchReleased)):
            self.kills, record = apply_control(
                self.kills,
                event,
                self.policy,
                now,
                Origin(self._worker, msg.partition(), msg.offset()),
            )
            log.warning("%s %s %s by %s", event.type, event.scope, event.target, event.operator)
            self._on_decision(record)
            return
        try:
            policy = parse_policy(event.policy_yaml, f"policy_updated at offset {msg.offset()}")
        except BatonError as exc:
            self._on_dead_letter(dead_letter_record(rec, "policy", str(exc), self._worker, now))
            return
        log.warning("policy %s -> %s (by %s)", self.policy.version, policy.version, event.operator)
        self.policy = policy
        for listener in self._policy_listeners:
            listener(policy)
