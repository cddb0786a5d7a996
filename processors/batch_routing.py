"""Where one input record goes: parsed, checked against its topic and key, then decided on its
run's partition or forwarded there.

An event whose key does not murmur2-hash to the partition it arrived on is forwarded,
unchanged but for one header naming where it came from, to its run's partition and decided
there: a producer with another partitioner (kcat's CRC32, another language's client) would
otherwise split the run's state across workers. One forward only: a forwarded event still
misplaced means the topic's partition count differs from ``BATON_PARTITIONS`` somewhere.
"""

from __future__ import annotations

from typing import Any

from baton.processors.batch_records import (
    MAX_KEY_BYTES,
    ErrorKind,
    Forward,
    InputRecord,
    Outputs,
    RecordError,
)
from baton.processors.fetch_bound import RefusedBatch
from baton.schemas.events import ApprovalDenied, ApprovalGranted, RunEvent, parse_event
from baton.streams.partitioner import partition_for

__all__ = ["FORWARDED_FROM", "MAX_HEADER_BYTES", "route"]

#: header on an event the worker moved to its run's partition: topic/partition/offset
FORWARDED_FROM = "baton-forwarded-from"
#: headers a forwarded event may carry (ours adds one); more is no orchestrator's
MAX_HEADER_BYTES = 16 * 1024


def _headers(rec: Any) -> Any:
    """``rec``'s headers as the consumer gave them (a list, a tuple, a value None: read
    untyped, so that the compiled build never checks them against InputRecord's annotation)."""
    return rec.headers or ()


def _has_header(headers: Any, name: str) -> bool:
    return any(h[0] == name for h in headers)


def route(
    rec: InputRecord, partitions: int, approvals_topic: str | None, out: Outputs
) -> tuple[bytes, RunEvent] | None:
    """Parse ``rec`` and find its run: (key, event), or None when it was forwarded to its
    run's partition (added to ``out.forwards``); raises ``RecordError``/``EventError`` for a
    record that is no run's event here (its dead letter's kind and message).

    ``approvals_topic``: approvals count only from there, run events never (None: no check,
    for tests): whoever may write requests must not approve, whoever may approve must not
    hand off."""
    if rec.value is None:
        raise RecordError(ErrorKind.EMPTY, "empty message (null value)")
    if type(rec.value) is RefusedBatch:  # a batch not decompressed (processors/fetch_bound.py)
        raise RecordError(rec.value.kind, rec.value.reason)
    if rec.key is None:
        raise RecordError(
            ErrorKind.MISSING_KEY,
            "record has no Kafka key; key every event by its run_id "
            "(kcat: -K with a key separator)",
        )
    if len(rec.key) > MAX_KEY_BYTES:
        raise RecordError(
            ErrorKind.OUT_OF_RANGE,
            f"Kafka key of {len(rec.key)} bytes; a run_id (the key) is at most 256 "
            f"characters ({MAX_KEY_BYTES} bytes)",
        )
    event = parse_event(rec.value, rec.key)
    if approvals_topic is not None:
        approval = type(event) is ApprovalGranted or type(event) is ApprovalDenied
        if approval != (rec.topic == approvals_topic):
            raise RecordError(
                ErrorKind.WRONG_TOPIC,
                f"{event.type} on {rec.topic}: approvals belong on {approvals_topic}, "
                f"every other run event on the requests topic",
            )
    key = rec.key
    home = partition_for(key, partitions)
    if home == rec.partition:
        return key, event
    headers = _headers(rec)
    header_bytes = sum(len(h[0]) + len(h[1] or b"") for h in headers)
    if header_bytes > MAX_HEADER_BYTES:
        raise RecordError(
            ErrorKind.OUT_OF_RANGE,
            f"{header_bytes} bytes of headers on a misplaced event (at most "
            f"{MAX_HEADER_BYTES} are forwarded)",
        )
    if _has_header(headers, FORWARDED_FROM):
        # forwarded once already and still misplaced: the topic's partition count
        # differs from BATON_PARTITIONS somewhere; bouncing it would never end
        raise RecordError(
            ErrorKind.MISROUTED,
            f"forwarded to partition {rec.partition} but run {event.run_id} hashes to "
            f"{home} of {partitions}: do all workers use the topic's partition count "
            f"as BATON_PARTITIONS?",
        )
    out.forwards.append(
        Forward(
            rec.topic,
            home,
            key,
            rec.value,
            [
                *headers,
                (FORWARDED_FROM, f"{rec.topic}/{rec.partition}/{rec.offset}".encode()),
            ],
        )
    )
    return None
