"""Split a SQL script (a file of several statements) into its statements, as ClickHouse reads it."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ScriptError", "Statement", "split_statements"]

#: a `-- name: x` line names the statement that follows it (docs/queries.sql does this)
_NAME_RE = re.compile(r"^\s*--\s*name:\s*(\S+)", re.M)
#: strings, "identifiers" and `identifiers`: backslash escapes and doubled quotes stay inside
_QUOTES = frozenset("'\"`")
#: possessive (Python 3.11): an unclosed quote fails in linear time, without backtracking
_QUOTED_RE = {q: re.compile(f"{q}(?:[^{q}\\\\]++|\\\\.|{q}{q})*+{q}", re.S) for q in _QUOTES}
#: where something that is not code may start: a quote, a comment
_SPECIAL_RE = re.compile(r"['\"`]|--|#[ !]|/\*")
_COMMENT_MARK_RE = re.compile(r"/\*|\*/")
#: a run of line comments (each to its line's end) and the blanks between them, read at once
_LINE_COMMENTS_RE = re.compile(r"(?:(?:--|#[ !])[^\n]*+(?:\n|\Z)\s*+)++")


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
    parts = _Parts(script)
    offset = 0
    for kind, piece in _scan(script):
        if kind == "code":
            previous = 0
            semicolon = piece.find(";")
            while semicolon >= 0:
                parts.code = parts.code or bool(piece[previous:semicolon].strip())
                parts.close(offset + semicolon)
                previous = semicolon + 1
                semicolon = piece.find(";", previous)
            parts.code = parts.code or bool(piece[previous:].strip())
        offset += len(piece)
    parts.close(len(script))
    return parts.statements


class _Parts:
    """The statements found so far, and whether the one being read holds any code."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.statements: list[Statement] = []
        self.start = 0
        self.line = 1  # the line self.start is on
        self.code = False

    def close(self, end: int) -> None:
        """The statement being read ends at ``end`` (a `;` or the script's end)."""
        text = self.script[self.start : end]
        if self.code:
            first = self.line + text.count("\n", 0, len(text) - len(text.lstrip()))
            self.statements.append(Statement(text.strip(), len(self.statements) + 1, first))
        self.line += text.count("\n")
        self.start = end + 1
        self.code = False


def _scan(text: str) -> list[tuple[str, str]]:
    """``text`` cut into ("code" | "quoted" | "comment", part) pieces that add up to it."""
    pieces: list[tuple[str, str]] = []
    i = 0
    n = len(text)
    while i < n:
        special = _SPECIAL_RE.search(text, i)
        if special is None:
            break
        start = special.start()
        opener = special.group(0)
        if opener in _QUOTES:
            end = _quote_end(text, start)
        elif opener == "/*":
            end = _block_comment_end(text, start)
        else:  # --, "# " or "#!": to the end of the line, with the comment lines after it
            comments = _LINE_COMMENTS_RE.match(text, start)
            end = comments.end() if comments else n
        if i < start:
            pieces.append(("code", text[i:start]))
        pieces.append(("quoted" if opener in _QUOTES else "comment", text[start:end]))
        i = end
    if i < n:
        pieces.append(("code", text[i:]))
    return pieces


def _quote_end(text: str, start: int) -> int:
    """The offset just past the quote opened at ``start`` (backslash escapes and doubled
    quotes stay inside)."""
    match = _QUOTED_RE[text[start]].match(text, start)
    if match is None:
        line = text.count("\n", 0, start) + 1
        raise ScriptError(f"the quote {text[start]} opened on line {line} is never closed")
    return match.end()


def _block_comment_end(text: str, start: int) -> int:
    """The offset just past the /* comment */ opened at ``start`` (nested ones included, as
    ClickHouse reads them)."""
    depth = 0
    for mark in _COMMENT_MARK_RE.finditer(text, start):
        depth += 1 if mark.group(0) == "/*" else -1
        if depth == 0:
            return mark.end()
    line = text.count("\n", 0, start) + 1
    raise ScriptError(f"the comment /* opened on line {line} is never closed")
