"""Request bodies of the SQL endpoint: plain and lz4 read, nothing inflated past the limit,
every other encoding refused by name."""

from __future__ import annotations

import gzip

import lz4.frame
import pytest

from baton.sinks.sql_body import BodyTooLarge, UnsupportedEncoding, decode_body

pytestmark = pytest.mark.unit

QUERY = b"SELECT count() FROM governance.decisions FINAL"


def test_lz4_decodes_and_concatenated_frames_too() -> None:
    assert decode_body(lz4.frame.compress(QUERY), "lz4", limit=1024) == QUERY
    # clickhouse-connect sends one LZ4 frame per block
    two = lz4.frame.compress(QUERY[:10]) + lz4.frame.compress(QUERY[10:])
    assert decode_body(two, " LZ4 ", limit=1024) == QUERY


def test_a_small_lz4_body_that_inflates_past_the_limit_is_refused() -> None:
    bomb = lz4.frame.compress(b" " * 5_000_000)
    assert len(bomb) < 50_000
    with pytest.raises(BodyTooLarge):
        decode_body(bomb, "lz4", limit=1024 * 1024)
    # frames that pass the limit only together are refused too
    with pytest.raises(BodyTooLarge):
        decode_body(lz4.frame.compress(b" " * 3000) * 2, "lz4", limit=4096)
    # exactly at the limit is fine
    assert len(decode_body(lz4.frame.compress(b" " * 4096), "lz4", limit=4096)) == 4096


def test_identity_passes_and_every_other_encoding_is_refused_by_name() -> None:
    assert decode_body(QUERY, None, limit=10) == QUERY  # the raw size is checked by the caller
    assert decode_body(QUERY, "identity", limit=10) == QUERY
    for encoding in ("gzip", "deflate", "zstd", "br", "compress"):
        with pytest.raises(UnsupportedEncoding, match=f"unsupported Content-Encoding '{encoding}'"):
            decode_body(gzip.compress(QUERY), encoding, limit=1024)
    with pytest.raises(UnsupportedEncoding) as refused:
        decode_body(b"x", "x" * 60_000, limit=None)  # a 60 KB header value is not echoed whole
    assert len(str(refused.value)) < 200


def test_a_corrupt_lz4_body_raises_for_the_caller_to_report() -> None:
    with pytest.raises(RuntimeError):
        decode_body(b"\x04\x22\x4d\x18garbage", "lz4", limit=1024)
