"""aiokafka's Fetch v11 request encoded and response decoded by code written for that one shape.

The worker's consumer thread (Faust's, running aiokafka's fetcher) spent much of a fetch in
aiokafka's generic protocol walk: a ``FetchRequest_v11`` for the worker's 16 partitions (requests
and approvals) encoded field by field, its ``FetchResponse_v11`` decoded the same way, of ~0.5 ms
of the thread's CPU a fetch; a worker at 2,000 events/s fetches ~250 times a second. Written
for the shape: ~90 us less CPU a fetch (an idle worker's consumer thread 48 -> 40 ms a second,
docs/performance.md, session 13).

``install()`` replaces ``FetchRequest_v11.encode`` and ``FetchResponse_v11.decode`` (the version
aiokafka 0.14 and Tansu agree on; other versions keep aiokafka's) with ``struct``-level code that
gives the same bytes and the same objects: lists and tuples where aiokafka's give them, None for
a null array, string or bytes, ``[]`` for an array of any other negative length, text decoded as
UTF-8. Anything these do not take as expected (short data, a value out of range, a shape not
the schema's) goes to aiokafka's own code from the start, so errors are aiokafka's, unchanged.
tests/unit/test_faust_fetch_codec.py holds both equal to aiokafka's on random messages and
pins the upstream schemas.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

from aiokafka.protocol import fetch as aiokafka_fetch

__all__ = [
    "decode_fetch_response_v11",
    "encode_fetch_request_v11",
    "install",
    "put_text",
    "read_text",
]

_HEAD = struct.Struct(">ihi")  # throttle_time_ms, error_code, session_id
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
#: partition, error_code, highwater_offset, last_stable_offset, log_start_offset
_PARTITION = struct.Struct(">ihqqq")
_ABORTED = struct.Struct(">qq")  # producer_id, first_offset
#: replica_id, max_wait_time, min_bytes, max_bytes, isolation_level, session_id, session_epoch
_REQUEST_HEAD = struct.Struct(">iiiibii")
#: partition, current_leader_epoch, fetch_offset, log_start_offset, max_bytes
_REQUEST_PARTITION = struct.Struct(">iiqqi")

_Response = aiokafka_fetch.FetchResponse_v11
_Request = aiokafka_fetch.FetchRequest_v11
_generic_decode = _Response.decode.__func__  # type: ignore[attr-defined]
_generic_encode = _Request.encode


def read_text(raw: bytes, at: int) -> tuple[str | None, int]:
    """A Kafka STRING at ``at`` (None when null) and the offset after it (publish_codec too)."""
    (length,) = _I16.unpack_from(raw, at)
    at += 2
    if length < 0:
        return None, at
    end = at + length
    if end > len(raw):
        raise ValueError("short string")
    return raw[at:end].decode("utf-8"), end


def _fast_decode(raw: bytes) -> Any:
    throttle, error, session = _HEAD.unpack_from(raw, 0)
    at = _HEAD.size
    (count,) = _I32.unpack_from(raw, at)
    at += 4
    topics: list[Any] | None = None if count == -1 else []
    size = len(raw)
    for _ in range(max(count, 0)):
        topic, at = read_text(raw, at)
        (parts,) = _I32.unpack_from(raw, at)
        at += 4
        partitions: list[Any] | None = None if parts == -1 else []
        for _ in range(max(parts, 0)):
            head = _PARTITION.unpack_from(raw, at)
            at += _PARTITION.size
            (aborted_count,) = _I32.unpack_from(raw, at)
            at += 4
            aborted: list[Any] | None = None if aborted_count == -1 else []
            for _ in range(max(aborted_count, 0)):
                aborted.append(_ABORTED.unpack_from(raw, at))  # type: ignore[union-attr]
                at += _ABORTED.size
            (replica,) = _I32.unpack_from(raw, at)
            (length,) = _I32.unpack_from(raw, at + 4)
            at += 8
            records: bytes | None = None
            if length >= 0:
                if at + length > size:
                    raise ValueError("short record set")
                records = raw[at : at + length]
                at += length
            partitions.append((*head, aborted, replica, records))  # type: ignore[union-attr]
        topics.append((topic, partitions))  # type: ignore[union-attr]
    return _Response(throttle, error, session, topics)


def decode_fetch_response_v11(cls: Any, data: BytesIO | bytes) -> Any:
    """``FetchResponse_v11.decode``: the same object as aiokafka's, read with ``struct``."""
    if isinstance(data, bytes):
        data = BytesIO(data)
    if cls is not _Response:
        return _generic_decode(cls, data)
    start = data.tell()
    try:
        return _fast_decode(data.read())
    except Exception:
        data.seek(start)  # aiokafka's own reading, and its error
        return _generic_decode(cls, data)


def put_text(out: list[bytes], value: Any) -> None:
    """``value`` as a Kafka STRING (null for None) onto ``out`` (publish_codec too)."""
    if value is None:
        out.append(b"\xff\xff")
        return
    encoded = str(value).encode("utf-8")
    out.append(_I16.pack(len(encoded)))
    out.append(encoded)


def _fast_encode(fields: dict[str, Any]) -> bytes:
    out = [
        _REQUEST_HEAD.pack(
            fields["replica_id"],
            fields["max_wait_time"],
            fields["min_bytes"],
            fields["max_bytes"],
            fields["isolation_level"],
            fields["session_id"],
            fields["session_epoch"],
        )
    ]
    topics = fields["topics"]
    if topics is None:
        out.append(b"\xff\xff\xff\xff")
    else:
        out.append(_I32.pack(len(topics)))
        for topic in topics:
            put_text(out, topic[0])
            partitions = topic[1]
            if partitions is None:
                out.append(b"\xff\xff\xff\xff")
                continue
            out.append(_I32.pack(len(partitions)))
            pack = _REQUEST_PARTITION.pack
            for p in partitions:
                out.append(pack(p[0], p[1], p[2], p[3], p[4]))
    forgotten = fields["forgotten_topics_data"]
    if forgotten is None:
        out.append(b"\xff\xff\xff\xff")
    else:
        out.append(_I32.pack(len(forgotten)))
        for topic in forgotten:
            put_text(out, topic[0])
            partitions = topic[1]
            if partitions is None:
                out.append(b"\xff\xff\xff\xff")
                continue
            out.append(_I32.pack(len(partitions)))
            out.extend(_I32.pack(p) for p in partitions)
    put_text(out, fields["rack_id"])
    return b"".join(out)


def encode_fetch_request_v11(self: Any) -> bytes:
    """``FetchRequest_v11.encode``: aiokafka's bytes, written with ``struct``."""
    if type(self) is not _Request:
        return bytes(_generic_encode(self))
    try:
        return _fast_encode(self.__dict__)
    except Exception:
        return bytes(_generic_encode(self))  # aiokafka's own writing, and its error


def install() -> None:
    """Use these for Fetch v11 in this process (idempotent)."""
    _Response.decode = classmethod(decode_fetch_response_v11)  # type: ignore[method-assign, assignment]
    _Request.encode = encode_fetch_request_v11  # type: ignore[method-assign]
