"""One analyst statement for ``baton sql``: rows, the raw output of its own FORMAT, or a command."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.client import Client

__all__ = ["StatementResult", "first_keyword", "run_statement", "trailing_format"]

# statements that answer with a result set
ROW_KEYWORDS = frozenset(
    {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "CHECK"}
)
_LEADING_RE = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*", re.S)
_TRAILING_FORMAT_RE = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.I)


def first_keyword(sql: str) -> str:
    """The statement's first keyword, upper-cased, past comments and parentheses."""
    leading = _LEADING_RE.match(sql)  # always matches (possibly empty)
    rest = sql[leading.end() :] if leading else sql
    match = re.match(r"[A-Za-z]+", rest)
    return match.group(0).upper() if match else ""


def trailing_format(sql: str) -> str | None:
    """The FORMAT the statement asks for itself, if any (``... FORMAT JSON``)."""
    match = _TRAILING_FORMAT_RE.search(sql)
    return match.group(1) if match else None


@dataclass
class StatementResult:
    columns: tuple[str, ...] = ()
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    raw: bytes | None = None  # the statement chose its own FORMAT: print it as is
    summary: str | None = None  # a command: what the server said (written rows ...)


def run_statement(client: Client, sql: str) -> StatementResult:
    """Run ``sql``; rows for queries, the raw bytes when it names a FORMAT, else a summary."""
    sql = sql.strip().rstrip(";").strip()
    if trailing_format(sql):
        return StatementResult(raw=client.raw_query(sql))
    if first_keyword(sql) in ROW_KEYWORDS:
        result = client.query(sql)
        return StatementResult(tuple(result.column_names), [tuple(r) for r in result.result_rows])
    answer = client.command(sql)
    summary = getattr(answer, "summary", None)
    if isinstance(summary, dict) and summary.get("written_rows") not in (None, "0", 0):
        return StatementResult(summary=f"Ok. {summary['written_rows']} rows written")
    return StatementResult(
        summary="Ok."
        if not isinstance(answer, (str, int, list)) or answer in ("", None)
        else f"{answer}"
    )
