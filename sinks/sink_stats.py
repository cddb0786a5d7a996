"""What the audit sink has done so far (rows, rejects, retries, lag), for its status line."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["SinkStats"]


@dataclass
class SinkStats:
    """What the sink has done; read it from another thread for status pages."""

    rows: int = 0
    rejected: int = 0
    batches: int = 0
    retries: int = 0
    last_error: str | None = None
    lag: dict[int, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _window: tuple[float, int] = field(default=(0.0, 0), repr=False)

    def __post_init__(self) -> None:
        self._window = (self.started, 0)

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
        return (
            f"{self.rows} decisions in {self.batches} batches ({self.rows_per_s():.0f}/s), "
            f"{self.rejected} rejected, {self.retries} retries, lag {self.total_lag} ({lag})"
            f"{error}"
        )
