"""The worker's Fetch v11 codec (processors/faust_fetch_codec.py) gives aiokafka's bytes and
objects, and aiokafka's errors; the schemas it was written for are pinned."""

from __future__ import annotations

import hashlib
import random
import struct
from io import BytesIO
from typing import Any

import pytest
from aiokafka.protocol import fetch as aiokafka_fetch

from baton.processors import faust_fetch_codec as codec

pytestmark = pytest.mark.unit

Response = aiokafka_fetch.FetchResponse_v11
Request = aiokafka_fetch.FetchRequest_v11


def _shape(field: Any) -> Any:
    """A schema's fields as names and type names, arrays and nested schemas spelled out."""
    if hasattr(field, "names"):
        return [(n, _shape(f)) for n, f in zip(field.names, field.fields, strict=True)]
    if hasattr(field, "array_of"):
        return ["Array", _shape(field.array_of)]
    return field.__name__ if isinstance(field, type) else type(field).__name__


def test_the_schemas_the_codec_was_written_for_are_unchanged() -> None:
    shapes = repr([_shape(Response.SCHEMA), _shape(Request.SCHEMA)])
    digest = hashlib.sha256(shapes.encode()).hexdigest()[:16]
    assert digest == "056fa4b9078a1dde", (
        f"aiokafka's Fetch v11 schemas changed (hash {digest}): re-check "
        "processors/faust_fetch_codec.py against them, then update this pin"
    )


def _generic_decode(raw: bytes) -> Any:
    return codec._generic_decode(Response, BytesIO(raw))


def _text(rng: random.Random) -> str | None:
    if rng.random() < 0.1:
        return None
    return "".join(rng.choice("abc.é-_\u20ac") for _ in range(rng.randrange(0, 12)))


def _array(rng: random.Random, item: Any) -> list[Any] | None:
    if rng.random() < 0.1:
        return None
    return [item(rng) for _ in range(rng.randrange(0, 5))]


def _i(rng: random.Random, bits: int) -> int:
    return rng.randrange(-(2 ** (bits - 1)), 2 ** (bits - 1))


def _partition(rng: random.Random) -> tuple[Any, ...]:
    records = None if rng.random() < 0.1 else rng.randbytes(rng.randrange(0, 300))
    return (
        _i(rng, 32), _i(rng, 16), _i(rng, 64), _i(rng, 64), _i(rng, 64),
        _array(rng, lambda r: (_i(r, 64), _i(r, 64))), _i(rng, 32), records,
    )  # fmt: skip


def _response(rng: random.Random) -> Any:
    topics = _array(rng, lambda r: (_text(r), _array(r, _partition)))
    return Response(_i(rng, 32), _i(rng, 16), _i(rng, 32), topics)


def _request(rng: random.Random) -> Any:
    part = lambda r: (_i(r, 32), _i(r, 32), _i(r, 64), _i(r, 64), _i(r, 32))  # noqa: E731
    topics = _array(rng, lambda r: (_text(r), _array(r, part)))
    forgotten = _array(rng, lambda r: (_text(r), _array(r, lambda q: _i(q, 32))))
    return Request(
        _i(rng, 32), _i(rng, 32), _i(rng, 32), _i(rng, 32), _i(rng, 8), _i(rng, 32),
        _i(rng, 32), topics, forgotten, _text(rng),
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(4))
def test_responses_decode_to_what_aiokafka_decodes(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        raw = _response(rng).encode()
        ours = codec.decode_fetch_response_v11(Response, BytesIO(raw))
        theirs = _generic_decode(raw)
        assert type(ours) is Response and ours.__dict__ == theirs.__dict__
        assert codec.decode_fetch_response_v11(Response, raw).__dict__ == theirs.__dict__


@pytest.mark.parametrize("seed", range(4))
def test_requests_encode_to_aiokafka_bytes(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        request = _request(rng)
        assert codec.encode_fetch_request_v11(request) == codec._generic_encode(request)


def test_the_request_aiokafka_builds_for_the_worker_encodes_the_same() -> None:
    topics = [(t, [(p, 12345 + p, 1_048_576) for p in range(8)]) for t in ("req", "appr")]
    built = aiokafka_fetch.FetchRequest(10, 1, 52_428_800, 1, topics, rack_id="").build(Request)
    assert codec.encode_fetch_request_v11(built) == codec._generic_encode(built)


def test_negative_lengths_read_as_aiokafka_reads_them() -> None:
    head = struct.pack(">ihi", 0, 0, 7)
    # an array of length -3 is an empty list (aiokafka's range of a negative length), -1 None
    for count, expected in ((-1, None), (-3, []), (0, [])):
        raw = head + struct.pack(">i", count)
        assert codec.decode_fetch_response_v11(Response, raw).topics == expected
        assert _generic_decode(raw).topics == expected
    # a topic named by a null string, its partitions a null array
    raw = head + struct.pack(">ih", 1, -1) + struct.pack(">i", -1)
    assert codec.decode_fetch_response_v11(Response, raw).topics == [(None, None)]


@pytest.mark.parametrize("cut", [3, 11, 15, 20, 40, 60])
def test_short_data_raises_what_aiokafka_raises(cut: int) -> None:
    response = Response(0, 0, 1, [("t", [(0, 0, 5, 5, 0, [(1, 2)], -1, b"x" * 30)])])
    raw = response.encode()[:cut]
    with pytest.raises(Exception) as theirs:
        _generic_decode(raw)
    with pytest.raises(type(theirs.value)):
        codec.decode_fetch_response_v11(Response, raw)


def test_a_value_out_of_range_raises_what_aiokafka_raises() -> None:
    request = Request(-1, 10, 1, 2**40, 1, 0, -1, [], [], "")
    with pytest.raises(Exception) as theirs:
        codec._generic_encode(request)
    with pytest.raises(type(theirs.value)):
        codec.encode_fetch_request_v11(request)


def test_install_puts_both_in_place_and_is_idempotent() -> None:
    codec.install()
    codec.install()
    raw = _response(random.Random(9)).encode()
    assert Response.decode(raw).__dict__ == _generic_decode(raw).__dict__
    request = _request(random.Random(9))
    assert request.encode() == codec._generic_encode(request)
