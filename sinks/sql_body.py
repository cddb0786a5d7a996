"""Request bodies of the SQL endpoint, decoded as their clients send them, at most a limit out.

Who sends what (read from their sources): ``baton sql`` and clickhouse-connect send a query as
a plain body (clickhouse-connect's ``Accept-Encoding`` and ``enable_http_compression`` only ask
for a compressed *response*, which the endpoint does not send); ``curl --data-binary`` sends
the bytes it is given. Only clickhouse-connect's inserts (the writable test stand-in) carry a
``Content-Encoding``: its first available codec, ``lz4`` - one LZ4 frame per block, and ``lz4``
is a dependency of clickhouse-connect. Every other encoding is refused by name. A query whose
bound parameters pass 4 KB URL-encoded comes from clickhouse-connect as ``multipart/form-data``
(its ``query`` and ``param_*`` fields, ``binding.MAX_URL_BIND_PARAM_LENGTH``):
:func:`form_query` reads those fields and nothing else (a file part is external data, not
served).
"""

from __future__ import annotations

import re

import lz4.frame

__all__ = ["BodyTooLarge", "FormRefused", "UnsupportedEncoding", "decode_body", "form_query"]

_PARAM_FIELD = re.compile(r"param_[A-Za-z_][A-Za-z0-9_]*")


class BodyTooLarge(Exception):
    """The body decodes to more than the limit: the request is refused, not read on."""


class UnsupportedEncoding(ValueError):
    """A Content-Encoding none of the endpoint's clients sends; the message names it."""


class FormRefused(ValueError):
    """A form part the endpoint does not take (a file, another field); the message names it."""


def form_query(body: bytes, content_type: str, max_fields: int) -> tuple[bytes, dict[str, str]]:
    """A ``multipart/form-data`` body's SQL (its ``query`` field) and bound parameters (its
    ``param_*`` fields, UTF-8). Refused (FormRefused): a file part (external data), any
    other field, a field given twice, more than ``max_fields`` parts, no ``query``."""
    from email import policy
    from email.parser import BytesParser

    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise FormRefused("a multipart/form-data body without parts")
    query: bytes | None = None
    fields: dict[str, str] = {}
    for count, part in enumerate(message.iter_parts(), 1):
        name = part.get_param("name", header="content-disposition")
        if count > max_fields or part.get_filename() is not None or not isinstance(name, str):
            raise FormRefused("external data (a file part) or more than one query's fields")
        value = part.get_payload(decode=True) or b""
        if name == "query" and query is None:
            query = value
        elif _PARAM_FIELD.fullmatch(name) and name not in fields:
            try:
                fields[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise FormRefused(f"form field {name[:40]!r} is not UTF-8") from None
        else:
            raise FormRefused(f"form field {name[:40]!r}: only query and param_* fields, once")
    if query is None:
        raise FormRefused("a form without a query field")
    return query, fields


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
