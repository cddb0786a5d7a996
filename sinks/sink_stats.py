"""What the audit sink has done so far (rows, rejects, retries, lag), for its status line."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

__all__ = ["SinkStats"]

log = logging.getLogger("baton.sinks.sink")

#: librdkafka's words for a fetch answer past receive.message.max.bytes: it read the answer's
#: size only, drops the connection and sends the same fetch again, for ever
OVERSIZED_ANSWER = "Invalid response size"
#: a stalled partition's answers are refused about once a second: the ERROR line is written
#: for the first and then at most once this often, with the count since (a day of stall was
#: ~86k lines of the sink's log)
OVERSIZED_LOG_EVERY_S = 60.0


@dataclass
class SinkStats:
    """What the sink has done; read it from another thread for status pages."""

    rows: int = 0
    rejected: int = 0
    batches: int = 0
    retries: int = 0
    last_error: str | None = None
    #: fetch answers refused past the receive bound: each means a partition stalled behind a
    #: record batch larger than BATON_SINK_MAX_RECEIVE_BYTES (nothing after it is audited)
    oversized_answers: int = 0
    last_oversized: str | None = None
    lag: dict[int, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _window: tuple[float, int] = field(default=(0.0, 0), repr=False)
    #: (when the oversized ERROR line was last written, oversized_answers then)
    _oversized_logged: tuple[float, int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._window = (self.started, 0)

    def kafka_error(self, error: object) -> None:
        """librdkafka's ``error_cb``: logged; an answer past the receive bound is counted and
        named, since its partition is stalled until the bound is raised."""
        text = str(error)
        if OVERSIZED_ANSWER not in text:
            log.warning("audit sink: Kafka: %s", text)
            return
        self.oversized_answers += 1
        self.last_oversized = text
        now = time.monotonic()
        logged = self._oversized_logged
        if logged is not None and now - logged[0] < OVERSIZED_LOG_EVERY_S:
            return
        since = ""
        if logged is not None:
            since = f" ({self.oversized_answers - logged[1]} since the last line)"
        self._oversized_logged = (now, self.oversized_answers)
        log.error(
            "audit sink: a fetch answer past BATON_SINK_MAX_RECEIVE_BYTES%s: a record batch on "
            "gov.decisions is larger, and its partition is not read past it until the bound is "
            "raised (nothing is skipped; baton_audit_oversized_answers counts these; this line "
            "is repeated at most once a minute): %s",
            since,
            text,
        )

    @property
    def total_lag(self) -> int:
        return sum(self.lag.values())

    def rows_per_s(self) -> float:
        """Rows per second since the previous call (the first call: since the start)."""
        now = time.monotonic()
        since, rows = self._window
        self._window = (now, self.rows)
        return (self.rows - rows) / (now - since) if now > since else 0.0

    def describe(self) -> str:
        """One status line: rows, recent rate, rejects, lag per partition, the last error."""
        lag = " ".join(f"p{p}={n}" for p, n in sorted(self.lag.items())) or "-"
        error = f"; last error: {self.last_error}" if self.last_error else ""
        if self.oversized_answers:
            plural = "" if self.oversized_answers == 1 else "s"
            error += (
                f"; {self.oversized_answers} fetch answer{plural} past the receive bound, "
                f"a partition stalled (last: {self.last_oversized})"
            )
        return (
            f"{self.rows} decisions in {self.batches} batches ({self.rows_per_s():.0f}/s), "
            f"{self.rejected} rejected, {self.retries} retries, lag {self.total_lag} ({lag})"
            f"{error}"
        )
