"""Session 14 (H5): record batches whose header ends them before they start, and the fetch
codecs fed mutated bytes (processors/fetch_bound.py, processors/faust_fetch_codec.py,
processors/publish_codec.py).

A v2 batch's last offset delta is the client's (Tansu 0.6 stores a batch as sent and numbers
the partition's next batch from it: /tmp/l14/H5_findings.md F1). A negative one made
aiokafka set the position back to the batch's "end" (``next_offset`` below its base), so the
partition was fetched again and again from there: every later record unread, no dead letter.
Now such a batch is refused (one ``batch_undecodable`` dead letter at its base offset) and
the position never moves back.
"""

from __future__ import annotations

import random
import struct
from io import BytesIO
from typing import Any

import pytest
from aiokafka.protocol import fetch as aiokafka_fetch
from aiokafka.protocol import produce as aiokafka_produce
from aiokafka.record._crecords import cutil

from baton.processors import faust_fetch_codec, publish_codec
from baton.processors.fetch_bound import KIND_UNDECODABLE, InflateRefused, RefusedBatch
from tests.unit import test_publish_codec
from tests.unit.test_attacks_session13_fetch import _fetched, records_class  # noqa: F401
from tests.unit.test_faust_fetch_codec import _response
from tests.unit.test_fetch_bound import _batch, installed  # noqa: F401  (the fixtures)

pytestmark = pytest.mark.unit


def _ending_at(batch: bytes, last_delta: int, count: int | None = None) -> bytes:
    """``batch`` with its header's last offset delta (and record count) as a client sets them,
    its CRC valid."""
    raw = bytearray(batch)
    struct.pack_into(">i", raw, 23, last_delta)
    if count is not None:
        struct.pack_into(">i", raw, 57, count)
    struct.pack_into(">I", raw, 17, cutil.crc32c_cython(bytes(raw[21:])))
    return bytes(raw)


@pytest.mark.parametrize("last_delta", [-1, -2, -5, -(2**31)])
def test_a_batch_ending_before_it_starts_is_one_dead_letter_and_the_position_moves_on(
    installed: None,  # noqa: F811
    records_class: Any,  # noqa: F811
    last_delta: int,
) -> None:
    # before: the position went back to base + last_delta + 1 (the refused record at
    # offset base + last_delta): the same batch fetched for ever, the next never read
    bad = _ending_at(_batch(0, [b"hostile"], base=7), last_delta)
    got, next_offset = _fetched(records_class, "src", bad + _batch(0, [b"good"], base=8))
    refused = got[0].value
    assert type(refused) is RefusedBatch and refused.kind == KIND_UNDECODABLE, got
    assert f"last offset delta is {last_delta}" in refused.reason, refused.reason
    assert [r.offset for r in got] == [7, 8] and got[1].value == b"good"
    assert next_offset == 9


def test_an_empty_batch_ending_before_it_starts_is_refused_too(
    installed: None,  # noqa: F811
    records_class: Any,  # noqa: F811
) -> None:
    # no record to be past the batch: aiokafka set the position to its "end" (back) at once
    bad = _ending_at(_batch(0, [b"x"], base=7)[:61], -3, count=0)
    bad = bad[:8] + struct.pack(">i", len(bad) - 12) + bad[12:]
    bad = _ending_at(bad, -3, count=0)
    got, next_offset = _fetched(records_class, "src", bad + _batch(0, [b"good"], base=8))
    assert type(got[0].value) is RefusedBatch and got[0].offset == 7, got
    assert got[1].value == b"good" and next_offset == 9


def test_a_batch_ending_before_it_starts_on_another_topic_raises(
    installed: None,  # noqa: F811
    records_class: Any,  # noqa: F811
) -> None:
    bad = _ending_at(_batch(0, [b"x"], base=7), -2)
    with pytest.raises(InflateRefused, match="last offset delta is -2"):
        _fetched(records_class, "runs-changelog", bad)


def test_a_record_past_a_one_offset_batch_keeps_the_position_at_its_end(
    installed: None,  # noqa: F811
    records_class: Any,  # noqa: F811
) -> None:
    # three records under a header saying one (last delta 0): the first reads, the batch
    # then stops at its end, the next batch reads from there (session 13's F10, at the edge)
    bad = _ending_at(_batch(0, [b"a", b"b", b"c"], base=7), 0)
    got, next_offset = _fetched(records_class, "src", bad + _batch(0, [b"good"], base=8))
    assert [r.offset for r in got] == [7, 7, 8], got
    assert got[0].value == b"a" and type(got[1].value) is RefusedBatch
    assert got[2].value == b"good" and next_offset == 9


# ---------------------------------------------------------------------- the codecs, mutated
def _mutated(rng: random.Random, raw: bytes) -> bytes:
    out = bytearray(raw)
    for _ in range(rng.randrange(1, 4)):
        if not out:
            out += rng.randbytes(4)
            continue
        at, kind = rng.randrange(len(out)), rng.random()
        if kind < 0.5:
            out[at] = rng.randrange(256)
        elif kind < 0.65:  # a length or count at an edge
            edge = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\0\0\0", bytes(4)])
            out[at : at + 4] = edge
        elif kind < 0.8:
            del out[at : at + rng.randrange(1, 5)]
        else:
            out[at:at] = rng.randbytes(rng.randrange(1, 5))
    return bytes(out)


def _outcome(decode: Any, raw: bytes) -> Any:
    try:
        return decode(BytesIO(raw)).__dict__
    except Exception as exc:
        return type(exc)


@pytest.mark.parametrize("seed", range(2))
def test_mutated_fetch_responses_decode_or_fail_as_aiokafkas_own(seed: int) -> None:
    # 40,000 mutations (two runs of this, other seeds) gave no difference: no wrong answer
    # in place of an error, no error aiokafka would not raise
    rng, cls = random.Random(seed), aiokafka_fetch.FetchResponse_v11
    for _ in range(1_500):
        raw = _mutated(rng, _response(rng).encode())
        ours = _outcome(lambda d: faust_fetch_codec.decode_fetch_response_v11(cls, d), raw)
        assert ours == _outcome(lambda d: faust_fetch_codec._generic_decode(cls, d), raw), raw


@pytest.mark.parametrize(
    "cls", [aiokafka_produce.ProduceResponse_v7, aiokafka_produce.ProduceResponse_v8]
)
def test_mutated_produce_responses_decode_or_fail_as_aiokafkas_own(cls: Any) -> None:
    rng = random.Random(cls.__name__)
    for _ in range(1_500):
        raw = _mutated(rng, test_publish_codec._response(rng, cls).encode())
        ours = _outcome(lambda d: publish_codec.decode_produce_response(cls, d), raw)
        assert ours == _outcome(lambda d: publish_codec._generic_decode[cls](cls, d), raw), raw
