"""Split a SQL script (a file of several statements) into its statements, as ClickHouse reads it."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ScriptError", "Statement", "split_statements"]

#: a `-- name: x` line names the statement that follows it (docs/queries.sql does this)
_NAME_RE = re.compile(r"^\s*--\s*name:\s*(\S+)", re.M)
#: quote character -> how that quoted text ends (strings, "identifiers", `identifiers`)
_QUOTES = frozenset("'\"`")


class ScriptError(ValueError):
    """The script cannot be split: a quote or block comment is never closed."""


@dataclass(frozen=True)
class Statement:
    """One statement of a script: its text (leading comments kept), a name and its first line."""

    sql: str
    number: int
    line: int

    @property
    def name(self) -> str:
        """The `-- name:` of its comments, else its first line of SQL (cut at 60 characters)."""
        match = _NAME_RE.search(self.sql)
        if match:
            return match.group(1)
        first = next(
            (s.strip() for s in self.sql.splitlines() if s.strip() and not _is_comment(s)), ""
        )
        return first if len(first) <= 60 else first[:57] + "..."


def _is_comment(line: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(("--", "# ", "#!", "/*"))


def split_statements(script: str) -> list[Statement]:
    """The statements of ``script``, split at each `;` outside strings, quoted names and
    comments; a part that holds only comments and blanks is no statement."""
    statements: list[Statement] = []
    start = 0
    for end in _semicolons(script):
        _append(statements, script, start, end)
        start = end + 1
    _append(statements, script, start, len(script))
    return statements


def _append(statements: list[Statement], script: str, start: int, end: int) -> None:
    text = script[start:end]
    if not _has_code(text):
        return
    leading = len(text) - len(text.lstrip())
    line = script.count("\n", 0, start + leading) + 1
    statements.append(Statement(text.strip(), len(statements) + 1, line))


def _has_code(text: str) -> bool:
    """True unless ``text`` is only whitespace and comments."""
    return any(kind == "code" and part.strip() for kind, part in _scan(text))


def _semicolons(script: str) -> list[int]:
    """Offsets of the `;` that end statements (those in code, not in quotes or comments)."""
    found: list[int] = []
    offset = 0
    for kind, part in _scan(script):
        if kind == "code":
            found.extend(offset + i for i, ch in enumerate(part) if ch == ";")
        offset += len(part)
    return found


def _scan(text: str) -> list[tuple[str, str]]:
    """``text`` cut into ("code" | "quoted" | "comment", part) pieces that add up to it."""
    pieces: list[tuple[str, str]] = []
    i = code_start = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in _QUOTES:
            end = _quote_end(text, i)
        elif text.startswith("--", i) or text.startswith(("# ", "#!"), i):
            newline = text.find("\n", i)
            end = n if newline < 0 else newline + 1
        elif text.startswith("/*", i):
            end = _block_comment_end(text, i)
        else:
            i += 1
            continue
        if code_start < i:
            pieces.append(("code", text[code_start:i]))
        pieces.append(("quoted" if ch in _QUOTES else "comment", text[i:end]))
        i = code_start = end
    if code_start < n:
        pieces.append(("code", text[code_start:]))
    return pieces


def _quote_end(text: str, start: int) -> int:
    """The offset just past the quote opened at ``start`` (backslash escapes and doubled
    quotes stay inside)."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == quote:
            if text.startswith(quote * 2, i):
                i += 2
                continue
            return i + 1
        i += 1
    line = text.count("\n", 0, start) + 1
    raise ScriptError(f"the quote {quote} opened on line {line} is never closed")


def _block_comment_end(text: str, start: int) -> int:
    """The offset just past the /* comment */ opened at ``start`` (nested ones included, as
    ClickHouse reads them)."""
    depth = 0
    i = start
    while i < len(text):
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    line = text.count("\n", 0, start) + 1
    raise ScriptError(f"the comment /* opened on line {line} is never closed")
