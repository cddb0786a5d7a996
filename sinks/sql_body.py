"""Request bodies of the SQL endpoint decoded per Content-Encoding, at most a limit of bytes out."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from typing import Any

__all__ = ["BodyTooLarge", "decode_body"]


class BodyTooLarge(Exception):
    """The body decodes to more than the limit: the request is refused, not read on."""


def decode_body(body: bytes, encoding: str | None, limit: int | None) -> bytes:
    """``body`` decoded per its Content-Encoding; more than ``limit`` bytes out raises
    BodyTooLarge (a small gzip body can expand a thousandfold)."""
    encoding = (encoding or "").strip().lower()
    if not encoding or encoding == "identity" or not body:
        return body
    if encoding == "gzip":
        if limit is None:
            return gzip.decompress(body)
        return _inflate(body, lambda: _ZlibStream(zlib.decompressobj(16 + zlib.MAX_WBITS)), limit)
    if encoding == "deflate":
        if limit is None:
            return zlib.decompress(body)
        return _inflate(body, lambda: _ZlibStream(zlib.decompressobj()), limit)
    if encoding == "lz4":
        import lz4.frame

        # clickhouse-connect sends one LZ4 frame per block: decode them one after another
        return _inflate(body, lz4.frame.LZ4FrameDecompressor, limit)
    if encoding == "zstd":
        try:
            # Python 3.14+ has it in the standard library
            from compression import zstd  # type: ignore[import-not-found]
        except ImportError:
            from backports import zstd  # type: ignore[import-not-found,no-redef]
        return _inflate(body, zstd.ZstdDecompressor, limit)
    if encoding == "br" and limit is None:
        import brotli  # type: ignore[import-not-found]

        return bytes(brotli.decompress(body))
    raise ValueError(f"unsupported Content-Encoding {encoding!r} (gzip, deflate, lz4, zstd)")


class _ZlibStream:
    """zlib's decompressor with the ``decompress(data, max_length)``/``eof``/``unused_data``
    shape of lz4's and zstd's (zlib's max_length 0 means unlimited, theirs -1)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        return bytes(self.inner.decompress(data, max(max_length, 0)))

    @property
    def eof(self) -> bool:
        return bool(self.inner.eof)

    @property
    def unused_data(self) -> bytes:
        return bytes(self.inner.unused_data)


def _inflate(body: bytes, new: Callable[[], Any], limit: int | None) -> bytes:
    """Decode concatenated frames (members) of one codec, at most ``limit`` bytes out."""
    out: list[bytes] = []
    total = 0
    rest = body
    while rest:
        decoder = new()
        chunk = decoder.decompress(rest, -1 if limit is None else limit - total + 1)
        total += len(chunk)
        out.append(chunk)
        if limit is not None and total > limit:
            raise BodyTooLarge
        rest = decoder.unused_data if decoder.eof else b""
    return b"".join(out)
