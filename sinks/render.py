"""Plain-text rendering of query results for terminals: aligned tables, CSV, JSON lines."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson

__all__ = [
    "cell",
    "printable_json",
    "render",
    "render_table",
    "shown",
    "shown_cut",
    "shown_refusals",
]


def cell(value: Any) -> str:
    """How one value reads in a table: no microsecond noise, no 'None'."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # 0.250000 -> 0.25, never 2.5E-1
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def shown(text: object) -> str:
    """``text`` (as ``str()`` gives it) as printable characters only: a control or format
    character (ESC, a newline, a bidi override) as its escape. Ids in the audit and names in
    commands come from clients (a run id may hold any character), from approvers or from a
    writer of the table: printed raw, one clears the terminal, starts a forged line of a
    table, hides a link or rewrites what an approver reads."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in s)


def shown_cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters ("..." after when it was longer) and ``shown``: a
    client's id or a forged row's text in one line of a message (a run id may be 60 KB)."""
    return shown(text[:limit]) + ("..." if len(text) > limit else "")


def render_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[str] = ()
) -> str:
    """An aligned table with a header rule; numbers (and the ``right`` columns) right-aligned;
    every cell :func:`shown` (one row, one line)."""
    texts = [[shown(cell(v)) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in texts:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    numeric = [
        columns[i] in right
        or (
            bool(rows)
            and all(isinstance(r[i], (int, float, Decimal)) or r[i] is None for r in rows)
        )
        for i in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in texts)
    return "\n".join(out)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value) if value != value.to_integral() else int(value)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


def render(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, *, terminal: bool = False
) -> str:
    """``fmt``: table | csv (with a header) | json (one object per line).

    CSV gives back the stored text, read by any CSV reader (a field holding a CR or an LF is
    quoted: with LF row ends Python's writer quoted an LF only, so a run id holding a bare CR
    split its row in two and shifted the rest, session 29); for a ``terminal`` its cells are
    :func:`shown`, so no control in a client's id reaches the screen."""
    if fmt == "table":
        footer = f"({len(rows)} row{'s' if len(rows) != 1 else ''})"
        return (render_table(columns, rows) + "\n" + footer) if columns else footer
    if fmt == "csv":
        # written with CRLF row ends, so that a CR in a field is quoted too, then each row's
        # end made LF
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n")
        lines = []
        shown_or_not = shown if terminal else str
        header = [shown_or_not(c) for c in columns]
        for row in [header, *([shown_or_not(cell(v)) for v in row] for row in rows)]:
            buf.seek(0)
            buf.truncate()
            writer.writerow(row)
            lines.append(buf.getvalue()[:-2])
        return "\n".join(lines)
    if fmt == "json":
        opts = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
        return "\n".join(
            printable_json(
                orjson.dumps(
                    dict(zip(columns, row, strict=True)), default=_json_default, option=opts
                ).decode()
            )
            for row in rows
        )
    raise ValueError(f"output format: expected table, csv or json, got {fmt!r}")


def printable_json(text: str) -> str:
    """A JSON line with every character a terminal could obey written as a ``\\u`` escape:
    orjson escapes only C0 controls, so DEL, C1 controls (U+009B is a CSI to some terminals),
    bidi overrides and line separators in a value reached the terminal as they are (every
    JSON line `render` and `baton tail` print). Outside its strings the JSON is ASCII: the
    document is the same."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _json_escape(ch) for ch in text)


def _json_escape(ch: str) -> str:
    """``ch`` as a JSON ``\\uXXXX`` escape (a surrogate pair past U+FFFF)."""
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def shown_refusals(refused: list[str], most: int = 10) -> list[str]:
    """The first ``most`` of the policy records ``replay_source.policies_of`` refused, and one
    line counting the rest: each is a record a writer of gov.decisions may have put there, and
    100,000 of them printed a line each at every restart and replay."""
    if len(refused) <= most:
        return refused
    more = f"{len(refused) - most:,} more policy records are not policy documents of their version"
    return [*refused[:most], more]
