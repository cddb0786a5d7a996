"""Where one input record goes: parsed, checked against its topic and key, then decided on its
run's partition or forwarded there.

An event whose key does not murmur2-hash to the partition it arrived on is forwarded,
unchanged but for one header naming where it came from, to its run's partition and decided
there: a producer with another partitioner (kcat's CRC32, another language's client) would
otherwise split the run's state across workers. One forward only: a forwarded event still
misplaced means the topic's partition count differs from ``BATON_PARTITIONS`` somewhere.
"""

from __future__ import annotations

from collections.abc import Callable
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
from baton.processors.state import RunState
from baton.processors.state_row_checks import (
    FORWARDS_KEPT,
    MAX_OFFSET,
    MAX_PARTITION,
    NO_DIGEST,
)
from baton.schemas.decision import Decision, Reason
from baton.schemas.events import ApprovalDenied, ApprovalGranted, RunEvent, parse_event
from baton.streams.partitioner import partition_for

__all__ = [
    "FORWARDED_FROM",
    "MAX_HEADER_BYTES",
    "forwarded_at",
    "mark_forwarded",
    "mark_read",
    "not_kept",
    "read_before",
    "route",
    "value_digest",
]

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


# ====================================================== redeliveries: the positions a run read
# A run's events are decided in offset order on its partition, and its state is written only
# once the outputs of the events it has decided are acknowledged (processors/publish.py), so
# a record at or below the newest position its state has read was decided before and its
# answer is out: Kafka delivered it again (a worker died between its state write and its
# offset commit, `BATON_COMMIT_INTERVAL_S`). Its decision, if the run still keeps it, is
# re-emitted as any retry's; otherwise (older than the six kept, or than the 512 keys
# remembered) it is answered with nothing, never stopped after its allow or counted again.
# Positions are the ones Kafka gave the records here, never a header's: a forwarded event's
# FORWARDED_FROM is written by whoever wrote the record, and a forged one far ahead would
# have the run's next events taken for redeliveries. A misplaced event read again is
# forwarded again, a new record: known by its header's position, exactly (the run keeps
# the newest FORWARDS_KEPT it decided) and by a digest of its bytes: a header is anyone's to
# write, and a forged one on a record sent to the run's own partition, naming the position a
# misplaced event of the run would take next (its partition's end, predictable), had the
# worker take that event, forwarded later, for a redelivery: no decision, no dead letter, its
# spend never counted (H1, session 36). Now only a record of the same bytes as the one
# decided under that header passes for it: the same event, counted once.


def read_before(
    state: RunState,
    rec: InputRecord,
    approval: bool,
    log_end: Callable[[str, int], int] | None,
) -> bool:
    """``state`` has read ``rec``'s position on the approvals topic (``approval``) or the
    requests topic, or a later one of its partition, and that position is below the
    partition's log end (``log_end(topic, partition)``; -1 or no ``log_end``: not known). A
    position at or past the end was read on a log since made again from offset 0 (a topic
    deleted and created, truncated, mirrored to another cluster, the runs' changelog kept):
    its records are new, never taken for redeliveries of the old log's."""
    if state.forwarded and rec.headers and _forwarded(state, rec, approval):
        return True
    if state.read_partition != rec.partition:
        return False
    read = state.read_approvals if approval else state.read_requests
    if rec.offset > read:
        return False
    end = -1 if log_end is None else log_end(rec.topic, rec.partition)
    return end < 0 or read < end


def forwarded_at(topic: str, headers: Any) -> tuple[int, int] | None:
    """The (partition, offset) a forwarded event's FORWARDED_FROM header names on ``topic``,
    or None: no header, another topic's, one that is not ``topic/partition/offset``, or one
    past Kafka's int32 partitions or int64 offsets (noted, a run's state would not read back:
    a forged header would have the run's events refused ``state_unreadable``)."""
    for name, value in headers:
        if name == FORWARDED_FROM and type(value) is bytes and len(value) <= 400:
            where, _, offset = value.rpartition(b"/")
            source, _, partition = where.rpartition(b"/")
            if (
                source == topic.encode()
                and 0 < len(partition) <= 10
                and 0 < len(offset) <= 19
                and partition.isdigit()
                and offset.isdigit()
            ):
                at = int(partition), int(offset)
                return at if at[0] <= MAX_PARTITION and at[1] <= MAX_OFFSET else None
            return None
    return None


def value_digest(value: bytes | None) -> int:
    """A forwarded record's bytes as the run notes them beside its header's position: 63 bits
    of BLAKE2b (a non-negative int64)."""
    from hashlib import blake2b

    return int.from_bytes(blake2b(value or b"", digest_size=8).digest(), "big") >> 1


def _forwarded(state: RunState, rec: InputRecord, approval: bool) -> bool:
    at = forwarded_at(rec.topic, _headers(rec))
    if at is None:
        return False
    kept, flag = state.forwarded, 1 if approval else 0
    digest = -2  # computed at the first position that matches
    for i in range(0, len(kept), 4):
        if kept[i] == flag and kept[i + 1] == at[0] and kept[i + 2] == at[1]:
            if kept[i + 3] == NO_DIGEST:  # noted before digests were (format 4's 3-field row)
                return True
            if digest == -2:
                digest = value_digest(rec.value)
            if kept[i + 3] == digest:
                return True
    return False


def mark_forwarded(state: RunState, rec: InputRecord, approval: bool) -> None:
    """Note in ``state`` (the event's new state) the position a forwarded ``rec`` names, with
    its bytes' digest."""
    at = forwarded_at(rec.topic, _headers(rec))
    if at is not None:
        kept = (*state.forwarded, 1 if approval else 0, at[0], at[1], value_digest(rec.value))
        state.forwarded = kept[-4 * FORWARDS_KEPT :]


def mark_read(
    state: RunState, partition: int, offset: int, approval: bool, rec: InputRecord | None = None
) -> None:
    """Note in ``state`` (the event's new state, changed in place) that it read this
    position of the approvals topic (``approval``) or of the requests topic. Records come
    in offset order, so this is the newest; one below the position noted before was not
    taken for a redelivery (``read_before``: its log was made again), and replaces it. A
    forwarded ``rec``'s header position is noted too (``mark_forwarded``)."""
    if rec is not None and rec.headers:
        mark_forwarded(state, rec, approval)
    if state.read_partition != partition:  # (a run's first event, or its partition moved)
        state.read_partition, state.read_requests, state.read_approvals = partition, -1, -1
    if approval:
        state.read_approvals = offset
    else:
        state.read_requests = offset


def not_kept(decisions: list[Decision]) -> bool:
    """``decisions`` are the one refusal of an event whose decision the run no longer keeps."""
    return len(decisions) == 1 and decisions[0].reason == Reason.REPLY_NOT_KEPT
