"""Request bodies of the SQL endpoint, decoded as their clients send them, at most a limit out.

Who sends what (read from their sources): ``baton sql`` and clickhouse-connect send a query as
a plain body (clickhouse-connect's ``Accept-Encoding`` and ``enable_http_compression`` only
ask for a compressed *response*, which the endpoint does not send); ``curl --data-binary``
sends the bytes it is given. Only clickhouse-connect's inserts (the writable test stand-in)
carry a ``Content-Encoding``: its first available codec, ``lz4`` - one LZ4 frame per block,
and ``lz4`` is a dependency of clickhouse-connect. Every other encoding is refused by name.
"""

from __future__ import annotations

import lz4.frame

__all__ = ["BodyTooLarge", "UnsupportedEncoding", "decode_body"]


class BodyTooLarge(Exception):
    """The body decodes to more than the limit: the request is refused, not read on."""


class UnsupportedEncoding(ValueError):
    """A Content-Encoding none of the endpoint's clients sends; the message names it."""


def decode_body(body: bytes, encoding: str | None, limit: int | None) -> bytes:
    """``body`` decoded per its Content-Encoding (none, ``identity`` or ``lz4``); more than
    ``limit`` bytes out raises BodyTooLarge (a small lz4 body can expand 250-fold)."""
    encoding = (encoding or "").strip().lower()
    if not encoding or encoding == "identity" or not body:
        return body
    if encoding != "lz4":
        raise UnsupportedEncoding(
            f"unsupported Content-Encoding {encoding[:40]!r}: the SQL endpoint reads plain "
            "bodies and lz4 (clickhouse-connect's); send the query uncompressed"
        )
    return _inflate_lz4_frames(body, limit)


def _inflate_lz4_frames(body: bytes, limit: int | None) -> bytes:
    """Decode concatenated LZ4 frames, at most ``limit`` bytes out."""
    out: list[bytes] = []
    total = 0
    rest = body
    while rest:
        decoder = lz4.frame.LZ4FrameDecompressor()
        chunk = decoder.decompress(rest, -1 if limit is None else limit - total + 1)
        total += len(chunk)
        out.append(chunk)
        if limit is not None and total > limit:
            raise BodyTooLarge
        rest = decoder.unused_data if decoder.eof else b""
    return b"".join(out)
