"""aiokafka's Produce v7/v8 requests encoded and responses decoded by code written for their shape.

Each batch the aiokafka publisher sends costs two produce requests (its decisions, then its run
states), and aiokafka encodes each request and decodes each response by its generic protocol
walk, on the worker's event loop, per batch whatever its size: 50-82 and 81-105 us against 7-17
and 20-29 us written for the shape, 14 partitions (wall time in-process at load ~11;
docs/performance.md, session 13).

``install()`` replaces ``encode`` of ``ProduceRequest_v7``/``_v8`` (one schema) and ``decode``
of ``ProduceResponse_v7``/``_v8`` (v7: what aiokafka 0.14 and Tansu agree on; v8 adds each
partition's record errors and message; other versions keep aiokafka's) with ``struct``-level
code giving the same bytes and objects (lists and tuples where aiokafka's give them, None for a
null array, string or bytes, ``[]`` for an array of another negative length, text as UTF-8).
Anything they do not take as expected goes to aiokafka's own code from the start, so its
errors are aiokafka's. tests/unit/test_publish_codec.py holds both equal to aiokafka's on
random messages and pins the schemas.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

from aiokafka.protocol import produce as aiokafka_produce

from baton.processors.faust_fetch_codec import put_text, read_text

__all__ = ["decode_produce_response", "encode_produce_request", "install"]

_I32 = struct.Struct(">i")
_REQUEST_HEAD = struct.Struct(">hi")  # required_acks, timeout (after transactional_id)
#: partition, error_code, offset, timestamp, log_start_offset
_PARTITION = struct.Struct(">ihqqq")

_REQUESTS = (aiokafka_produce.ProduceRequest_v7, aiokafka_produce.ProduceRequest_v8)
_V7 = aiokafka_produce.ProduceResponse_v7
_V8 = aiokafka_produce.ProduceResponse_v8
#: aiokafka's own (the two request classes share theirs; each response class its own)
_generic_encode = _REQUESTS[1].encode
_generic_decode = {cls: cls.decode.__func__ for cls in (_V7, _V8)}  # type: ignore[attr-defined]
_NULL32 = b"\xff\xff\xff\xff"


def _fast_encode(fields: dict[str, Any]) -> bytes:
    out: list[bytes] = []
    put_text(out, fields["transactional_id"])
    out.append(_REQUEST_HEAD.pack(fields["required_acks"], fields["timeout"]))
    topics = fields["topics"]
    if topics is None:
        out.append(_NULL32)
        return b"".join(out)
    out.append(_I32.pack(len(topics)))
    for topic in topics:
        put_text(out, topic[0])
        partitions = topic[1]
        if partitions is None:
            out.append(_NULL32)
            continue
        out.append(_I32.pack(len(partitions)))
        for p in partitions:
            out.append(_I32.pack(p[0]))
            messages = p[1]
            if messages is None:
                out.append(_NULL32)
            else:
                out.append(_I32.pack(len(messages)))
                out.append(messages)
    return b"".join(out)


def encode_produce_request(self: Any) -> bytes:
    """``ProduceRequest_v7/_v8.encode``: aiokafka's bytes, written with ``struct``."""
    if type(self) not in _REQUESTS:
        return bytes(_generic_encode(self))
    try:
        return _fast_encode(self.__dict__)
    except Exception:
        return bytes(_generic_encode(self))  # aiokafka's own writing, and its error


def _fast_decode(raw: bytes, cls: Any) -> Any:
    (count,) = _I32.unpack_from(raw, 0)
    at = 4
    topics: list[Any] | None = None if count == -1 else []
    for _ in range(max(count, 0)):
        topic, at = read_text(raw, at)
        (parts,) = _I32.unpack_from(raw, at)
        at += 4
        partitions: list[Any] | None = None if parts == -1 else []
        for _ in range(max(parts, 0)):
            head = _PARTITION.unpack_from(raw, at)
            at += _PARTITION.size
            if cls is _V7:
                partitions.append(head)  # type: ignore[union-attr]
                continue
            (errors_count,) = _I32.unpack_from(raw, at)
            at += 4
            errors: list[Any] | None = None if errors_count == -1 else []
            for _ in range(max(errors_count, 0)):
                (index,) = _I32.unpack_from(raw, at)
                message, at = read_text(raw, at + 4)
                errors.append((index, message))  # type: ignore[union-attr]
            message, at = read_text(raw, at)
            partitions.append((*head, errors, message))  # type: ignore[union-attr]
        topics.append((topic, partitions))  # type: ignore[union-attr]
    (throttle,) = _I32.unpack_from(raw, at)
    return cls(topics, throttle)


def decode_produce_response(cls: Any, data: BytesIO | bytes) -> Any:
    """``ProduceResponse_v7/_v8.decode``: the same object as aiokafka's, read with ``struct``."""
    if isinstance(data, bytes):
        data = BytesIO(data)
    generic = _generic_decode.get(cls)
    if generic is None:  # a subclass: aiokafka's own
        return aiokafka_produce.Response.decode.__func__(cls, data)  # type: ignore[attr-defined]
    start = data.tell()
    try:
        return _fast_decode(data.read(), cls)
    except Exception:
        data.seek(start)  # aiokafka's own reading, and its error
        return generic(cls, data)


def install() -> None:
    """Use these for Produce v7 and v8 in this process (idempotent)."""
    for request in _REQUESTS:
        request.encode = encode_produce_request  # type: ignore[method-assign]
    for response in (_V7, _V8):
        response.decode = classmethod(decode_produce_response)  # type: ignore[method-assign, assignment]
