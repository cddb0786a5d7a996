"""Request bodies of the SQL endpoint: every codec decoded, none inflated past the limit."""

from __future__ import annotations

import gzip
import zlib

import lz4.frame
import pytest

from baton.sinks.sql_body import BodyTooLarge, decode_body

pytestmark = pytest.mark.unit

QUERY = b"SELECT count() FROM governance.decisions FINAL"


def _zstd(data: bytes) -> bytes:
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        from backports import zstd  # type: ignore[import-not-found,no-redef]
    return bytes(zstd.compress(data))


CODECS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "lz4": lz4.frame.compress,
    "zstd": _zstd,
}


@pytest.mark.parametrize("encoding", sorted(CODECS))
def test_each_codec_decodes_and_concatenated_frames_too(encoding: str) -> None:
    compress = CODECS[encoding]
    assert decode_body(compress(QUERY), encoding, limit=1024) == QUERY
    if encoding != "deflate":  # one zlib stream; the others frame (clickhouse-connect's lz4)
        two = compress(QUERY[:10]) + compress(QUERY[10:])
        assert decode_body(two, encoding.upper(), limit=1024) == QUERY


@pytest.mark.parametrize("encoding", sorted(CODECS))
def test_a_small_body_that_inflates_past_the_limit_is_refused(encoding: str) -> None:
    bomb = CODECS[encoding](b" " * 5_000_000)
    assert len(bomb) < 50_000
    with pytest.raises(BodyTooLarge):
        decode_body(bomb, encoding, limit=1024 * 1024)
    # exactly at the limit is fine
    assert len(decode_body(CODECS[encoding](b" " * 4096), encoding, limit=4096)) == 4096


def test_identity_and_unknown_encodings() -> None:
    assert decode_body(QUERY, None, limit=10) == QUERY  # the raw size is checked by the caller
    assert decode_body(QUERY, "identity", limit=10) == QUERY
    with pytest.raises(ValueError, match="unsupported Content-Encoding 'br'"):
        decode_body(b"\x0b", "br", limit=1024)  # no bounded brotli decoder: not for queries
    with pytest.raises(ValueError, match="unsupported Content-Encoding 'compress'"):
        decode_body(b"x", "compress", limit=None)
