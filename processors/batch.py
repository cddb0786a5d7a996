"""One batch of run events through the engine: parse, route, decide, and collect what to publish.

Faust-agnostic on purpose: the Faust agent (``processors.app``), the benchmark and the tests
feed it ``InputRecord``s and a state mapping, and get back an ``Outputs`` to publish. Nothing
here touches Kafka, so the ordering rules below are checked in one place:

* decisions are published and acknowledged *before* the run states they come from are
  written to the changelog, so a crash between the two re-decides (same decision ids)
  rather than remembering a decision nobody saw;
* a bad event becomes a dead-letter record and the batch goes on;
* an event whose key does not murmur2-hash to the partition it arrived on is forwarded,
  unchanged, to its run's partition and decided there (a producer with another
  partitioner would otherwise split the run's state across workers).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from baton.processors.engine import NO_KILLS, KillSwitches, Origin, decide
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome
from baton.schemas.events import MAX_EVENT_BYTES, EventError, parse_event
from baton.schemas.policy import Policy
from baton.streams.partitioner import partition_for

__all__ = [
    "FORWARDED_FROM",
    "BatchProcessor",
    "DeadLetter",
    "InputRecord",
    "Outputs",
    "dead_letter_record",
]

#: header on an event the worker moved to its run's partition: topic/partition/offset
FORWARDED_FROM = "baton-forwarded-from"


@dataclass(slots=True)
class InputRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None


@dataclass(slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes  # the JSON envelope: error, where it came from, the original bytes


@dataclass(slots=True)
class Forward:
    topic: str
    partition: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(slots=True)
class Outputs:
    """What one batch produced, in the order it must be published."""

    decisions: list[tuple[int, Decision]] = field(default_factory=list)  # (partition, decision)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)
    #: run key -> (partition, state or None for a deletion), written after decisions are acked
    changed: dict[bytes, tuple[int, RunState | None]] = field(default_factory=dict)

    @property
    def stops(self) -> list[tuple[int, Decision]]:
        return [(p, d) for p, d in self.decisions if d.outcome == Outcome.STOP]


def dead_letter_record(
    rec: InputRecord, kind: str, error: str, worker: str | None, now: datetime
) -> DeadLetter:
    """The dead-letter envelope: what was wrong, where it came from, and the original bytes."""
    raw = rec.value or b""
    envelope: dict[str, Any] = {
        "error_kind": kind,
        "error": error,
        "topic": rec.topic,
        "partition": rec.partition,
        "offset": rec.offset,
        "key": rec.key.decode("utf-8", "replace") if rec.key is not None else None,
        "worker": worker,
        "failed_at": now,
        "original_size": len(raw),
    }
    kept = raw[:MAX_EVENT_BYTES]
    try:
        envelope["original"] = kept.decode("utf-8")
    except UnicodeDecodeError:
        envelope["original_b64"] = base64.b64encode(kept).decode()
    if len(raw) > len(kept):
        envelope["original_truncated"] = True
    return DeadLetter(rec.key, orjson.dumps(envelope))


def _same_record(decisions: list[Decision], rec: InputRecord) -> bool:
    partition, offset = rec.partition, rec.offset
    return all(d.partition == partition and d.offset == offset for d in decisions)


class BatchProcessor:
    """Decides batches of run events against a state mapping (the Faust table's store)."""

    def __init__(
        self,
        policy: Policy,
        partitions: int,
        states: MutableMapping[bytes, RunState],
        worker: str | None = None,
        kills: Callable[[], KillSwitches] | None = None,
        exactly_once: bool = False,
    ) -> None:
        self.policy = policy
        self.exactly_once = exactly_once
        self.partitions = partitions
        self.states = states
        self.worker = worker
        self._kills = kills or (lambda: NO_KILLS)
        self.decided = 0
        self.dead_lettered = 0
        self.forwarded = 0
        #: records decided before (same partition and offset), answered with nothing
        self.redelivered = 0

    def process(self, records: list[InputRecord], now: datetime) -> Outputs:
        out = Outputs()
        policy = self.policy
        kills = self._kills()
        states = self.states
        changed = out.changed
        worker = self.worker
        partitions = self.partitions
        for rec in records:
            if rec.value is None:
                out.dead_letters.append(
                    dead_letter_record(rec, "schema", "empty message (null value)", worker, now)
                )
                continue
            try:
                event = parse_event(rec.value, rec.key)
            except EventError as exc:
                out.dead_letters.append(dead_letter_record(rec, exc.kind, str(exc), worker, now))
                continue
            key: bytes = rec.key  # type: ignore[assignment]  # parse_event checked it
            home = partition_for(key, partitions)
            if home != rec.partition:
                if any(h[0] == FORWARDED_FROM for h in rec.headers or ()):
                    # forwarded once already and still misplaced: the topic's partition count
                    # differs from BATON_PARTITIONS somewhere; bouncing it would never end
                    out.dead_letters.append(
                        dead_letter_record(
                            rec,
                            "misrouted",
                            f"forwarded to partition {rec.partition} but run "
                            f"{event.run_id} hashes to {home} of {partitions}: do all workers use "
                            f"the topic's partition count as BATON_PARTITIONS?",
                            worker,
                            now,
                        )
                    )
                    continue
                out.forwards.append(
                    Forward(
                        rec.topic,
                        home,
                        key,
                        rec.value,
                        [
                            *(rec.headers or ()),
                            (FORWARDED_FROM, f"{rec.topic}/{rec.partition}/{rec.offset}".encode()),
                        ],
                    )
                )
                continue
            try:
                state = states.get(key)
                new, decisions = decide(
                    state, event, policy, now, kills, Origin(worker, rec.partition, rec.offset)
                )
            except Exception as exc:  # a bad stored state or an engine bug: not a crash loop
                out.dead_letters.append(
                    dead_letter_record(
                        rec, "engine_error", f"{type(exc).__name__}: {exc}", worker, now
                    )
                )
                continue
            if new is not state:
                states[key] = new
                changed[key] = (rec.partition, new)
            elif self.exactly_once and decisions and _same_record(decisions, rec):
                # Kafka delivered this very record again (its decisions and the state that
                # remembers them were committed in one transaction, its offset apparently
                # not): they are out already, and re-emitting them would publish them twice.
                # A client retry is another record and still gets them re-emitted. (Under
                # at-least-once a redelivery re-emits, as the design has it: duplicates with
                # the same decision_id are allowed there.)
                self.redelivered += 1
                continue
            for d in decisions:
                out.decisions.append((rec.partition, d))
        self.decided += len(out.decisions)
        self.dead_lettered += len(out.dead_letters)
        self.forwarded += len(out.forwards)
        return out
