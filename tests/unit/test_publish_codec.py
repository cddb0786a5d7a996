"""The publisher's Produce v7/v8 codec (processors/publish_codec.py) gives aiokafka's bytes and
objects, and aiokafka's errors; the schemas it was written for are pinned."""

from __future__ import annotations

import hashlib
import random
import struct
from io import BytesIO
from typing import Any

import pytest
from aiokafka.protocol import produce as aiokafka_produce

from baton.processors import publish_codec as codec
from tests.unit.test_faust_fetch_codec import _array, _i, _shape, _text

pytestmark = pytest.mark.unit

Request = aiokafka_produce.ProduceRequest_v8
Response = aiokafka_produce.ProduceResponse_v8
V7 = aiokafka_produce.ProduceResponse_v7


def _generic(cls: Any, raw: bytes) -> Any:
    return codec._generic_decode[cls](cls, BytesIO(raw))


def test_the_schemas_the_codec_was_written_for_are_unchanged() -> None:
    assert aiokafka_produce.ProduceRequest_v7.SCHEMA is Request.SCHEMA
    shapes = repr([_shape(Request.SCHEMA), _shape(Response.SCHEMA), _shape(V7.SCHEMA)])
    digest = hashlib.sha256(shapes.encode()).hexdigest()[:16]
    assert digest == "3df375732a5461ec", (
        f"aiokafka's Produce v7/v8 schemas changed (hash {digest}): re-check "
        "processors/publish_codec.py against them, then update this pin"
    )


def _request(rng: random.Random, cls: Any = Request) -> Any:
    def partition(r: random.Random) -> tuple[Any, ...]:
        messages: Any = None if r.random() < 0.1 else r.randbytes(r.randrange(0, 400))
        if messages is not None and r.random() < 0.3:
            messages = bytearray(messages)  # what aiokafka's record batch builder gives
        return (_i(r, 32), messages)

    topics = _array(rng, lambda r: (_text(r), _array(r, partition)))
    return cls(_text(rng), _i(rng, 16), _i(rng, 32), topics)


def _response(rng: random.Random, cls: Any = Response) -> Any:
    def partition(r: random.Random) -> tuple[Any, ...]:
        head = (_i(r, 32), _i(r, 16), _i(r, 64), _i(r, 64), _i(r, 64))
        if cls is V7:
            return head
        return (*head, _array(r, lambda q: (_i(q, 32), _text(q))), _text(r))

    return cls(_array(rng, lambda r: (_text(r), _array(r, partition))), _i(rng, 32))


VERSIONS = [(aiokafka_produce.ProduceRequest_v7, V7), (Request, Response)]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("version", VERSIONS, ids=["v7", "v8"])
def test_requests_encode_to_aiokafka_bytes(seed: int, version: Any) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        request = _request(rng, version[0])
        assert codec.encode_produce_request(request) == codec._generic_encode(request)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("version", VERSIONS, ids=["v7", "v8"])
def test_responses_decode_to_what_aiokafka_decodes(seed: int, version: Any) -> None:
    rng = random.Random(seed)
    cls = version[1]
    for _ in range(300):
        raw = _response(rng, cls).encode()
        ours = codec.decode_produce_response(cls, BytesIO(raw))
        theirs = _generic(cls, raw)
        assert type(ours) is cls and ours.__dict__ == theirs.__dict__
        assert codec.decode_produce_response(cls, raw).__dict__ == theirs.__dict__


def test_negative_lengths_read_as_aiokafka_reads_them() -> None:
    for count, expected in ((-1, None), (-4, []), (0, [])):
        raw = struct.pack(">ii", count, 5)
        for cls in (V7, Response):
            assert codec.decode_produce_response(cls, raw).topics == expected
            assert _generic(cls, raw).topics == expected


@pytest.mark.parametrize("cut", [2, 6, 12, 30, 45, 60])
def test_short_data_raises_what_aiokafka_raises(cut: int) -> None:
    for response in (
        Response([("t", [(0, 0, 5, -1, 0, [(1, "bad")], "msg")])], 0),
        V7([("t", [(0, 0, 5, -1, 0), (1, 0, 5, -1, 0)])], 0),
    ):
        raw = response.encode()[:cut]
        with pytest.raises(Exception) as theirs:
            _generic(type(response), raw)
        with pytest.raises(type(theirs.value)):
            codec.decode_produce_response(type(response), raw)


def test_a_value_out_of_range_raises_what_aiokafka_raises() -> None:
    request = Request(None, 2**20, 30_000, [("t", [(0, b"x")])])
    with pytest.raises(Exception) as theirs:
        codec._generic_encode(request)
    with pytest.raises(type(theirs.value)):
        codec.encode_produce_request(request)


def test_install_puts_both_in_place_and_is_idempotent() -> None:
    codec.install()
    codec.install()
    for request_cls, response_cls in VERSIONS:
        request = _request(random.Random(5), request_cls)
        assert request.encode() == codec._generic_encode(request)
        raw = _response(random.Random(5), response_cls).encode()
        assert response_cls.decode(raw).__dict__ == _generic(response_cls, raw).__dict__
