"""Records on gov.stops that are not Decisions: read, classified by kind, counted, and logged
without flooding the log.

Anyone who can write gov.stops can put anything there (random bytes, no value, JSON of the
wrong shape, a megabyte of text). The alerter must neither stop nor stall on it, nor write a
log line per bad record: :func:`read_stop` never raises for bad bytes, and
:class:`SkippedRecords` logs the first record of each kind and then at most one line per kind
per interval, saying how many it stands for. A log line never quotes the record's content.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from pydantic import ValidationError

from baton.schemas.decision import DECISION_ADAPTER, Decision
from baton.schemas.decision_signing import DecisionKeys
from baton.sinks.alert_text import clean_field

__all__ = ["MAX_RECORD_BYTES", "UNSIGNED_DETAIL", "BadRecord", "SkippedRecords", "read_stop"]

log = logging.getLogger(__name__)

#: a record larger than this is not parsed (a real Decision is well under a kilobyte)
MAX_RECORD_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class BadRecord:
    """Why a record on gov.stops is not a Decision: a ``kind`` to count, a ``detail`` to log
    (one line, capped; never the record's content)."""

    kind: str
    detail: str


#: why a stop the keys did not sign is skipped (a writer of gov.stops pages on-call at will)
UNSIGNED_DETAIL = (
    "no key of decision_keys signed it: forged, or the workers sign with another key "
    "(BATON_DECISION_KEYS, BATON_DECISION_SIGNING_KEY)"
)


def read_stop(value: bytes | None, keys: DecisionKeys | None = None) -> Decision | BadRecord:
    """The Decision a gov.stops record holds, or why it holds none (never raises for bad
    bytes). With ``keys``, a record none of them signed is ``unsigned`` (session 44)."""
    if not value:
        return BadRecord("empty", "no value")
    if len(value) > MAX_RECORD_BYTES:
        return BadRecord("too_large", f"{len(value)} bytes, at most {MAX_RECORD_BYTES} expected")
    if keys and not keys.verifies(value):
        return BadRecord("unsigned", UNSIGNED_DETAIL)
    try:
        return DECISION_ADAPTER.validate_json(value)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        kind = "not_json" if first["type"] == "json_invalid" else "not_a_decision"
        where = ".".join(str(part) for part in first["loc"])
        detail = f"{where}: {first['msg']}" if where else first["msg"]
        if exc.error_count() > 1:
            detail += f" (and {exc.error_count() - 1} more errors)"
        return BadRecord(kind, clean_field(detail, 200))


class SkippedRecords:
    """Counts skipped records by kind and logs them without flooding: the first of a kind at
    once, then at most one line per kind every ``interval_s``, saying how many it stands for."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self.counts: Counter[str] = Counter()
        self._last: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def skip(self, bad: BadRecord, where: str, now: float) -> bool:
        """Count ``bad`` (found at ``where``: topic[partition]@offset); True when logged."""
        self.counts[bad.kind] += 1
        last = self._last.get(bad.kind)
        if last is not None and now - last < self.interval_s:
            self._unlogged[bad.kind] += 1
            return False
        self._last[bad.kind] = now
        also = self._unlogged.pop(bad.kind, 0)
        log.error(
            "alerts: %s skipped (%s): %s%s",
            where,
            bad.kind,
            bad.detail,
            f"; {also} more {bad.kind} record(s) skipped since the last such line" if also else "",
        )
        return True
