"""A worker's runs against its caps, said in its log before new runs are refused.

Why: a worker holds every run and every tombstone (an evicted run's stop, kept
``BATON_TOMBSTONE_RETENTION_S``, 30 days by default, after the run's last event) against
``max_runs`` (500,000) and ``max_state_bytes``; past either, every new run is stopped
``worker_run_limit``. A run leaves the count only when its tombstone is forgotten, so a
worker takes at most ``max_runs / (run retention + tombstone retention)`` new runs a second
for good: ~0.19 a second (~16,700 a day) at the defaults. A deployment starting more runs
than that reaches the cap within the month and then refuses every new run (fail closed, but
every agent stopped), and nothing said so before the first refusal.

What it does: once a second (the worker's metrics tick) ``Capacity.check`` takes the share
of the fuller cap and logs a warning when it passes 50 %, 80 % and 95 %, each once until the
share falls back under 40 %, naming the runs and bytes held, how fast they grow, when the
cap is reached at that rate, the sustained rate the caps allow, and the settings that move
it; and an error once at the cap, when new runs are being refused. The caps are also served
as gauges (``baton_max_runs``, ``baton_max_state_bytes``) so an alert reads the share.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

__all__ = [
    "WARN_AT",
    "Capacity",
    "Trend",
    "capacity_of",
    "duration_text",
    "sustained_runs_per_day",
]

log = logging.getLogger("baton.processors.app")

#: the shares of the fuller cap a warning is logged at, once each
WARN_AT = (0.5, 0.8, 0.95)
#: a warning said is said again only after the share fell under this
_REARM_BELOW = 0.4
#: growth is measured over at most this long
_RATE_WINDOW_S = 600.0


def sustained_runs_per_day(max_runs: int, run_retention_s: float, tombstone_s: float) -> float:
    """New runs a day one worker takes for good: each is held until its tombstone is
    forgotten, ``run_retention_s + tombstone_s`` after its last event at the least."""
    return max_runs * 86400.0 / (run_retention_s + tombstone_s)


def duration_text(seconds: float) -> str:
    """``5 min``, ``3 h``, ``12 days``: a time left, as a log line says it."""
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{max(1, round(seconds / 60))} min"


class Trend:
    """A reading's values over the last ``window_s`` seconds, and how fast it grows (the
    worker's caps here, ``baton up``'s broker memory in cli/up_memory.py)."""

    def __init__(self, window_s: float, min_span_s: float = 10.0) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, value: float) -> None:
        self._samples.append((now, value))
        while now - self._samples[0][0] > self.window_s:
            self._samples.popleft()

    def per_s(self, now: float, value: float) -> float | None:
        """Growth a second since the window's first reading; None over less than
        ``min_span_s`` or when it did not grow."""
        first_at, first = self._samples[0]
        if now - first_at < self.min_span_s or value <= first:
            return None
        return (value - first) / (now - first_at)


class Capacity:
    """The fuller of a worker's two caps, checked every second (``check``)."""

    def __init__(
        self,
        worker_id: str,
        max_runs: int,
        max_state_bytes: int,
        run_retention_s: float,
        tombstone_s: float,
    ) -> None:
        self.worker_id = worker_id
        self.max_runs = max_runs
        self.max_state_bytes = max_state_bytes
        self.run_retention_s = run_retention_s
        self.tombstone_s = tombstone_s
        self._warned = 0  # how many of WARN_AT were said since the share was last low
        self._full = False
        self._trend = Trend(_RATE_WINDOW_S)

    def share(self, runs: int, state_bytes: int) -> float:
        return max(runs / self.max_runs, state_bytes / self.max_state_bytes)

    def check(self, runs: int, state_bytes: int, now: float) -> str | None:
        """Log what passing a share means; the line logged (for tests), or None."""
        share = self.share(runs, state_bytes)
        self._trend.add(now, share)
        if share < _REARM_BELOW:
            self._warned, self._full = 0, False
            return None
        if share >= 1.0:
            if self._full:
                return None
            self._full, self._warned = True, len(WARN_AT)
            line = (
                f"worker {self.worker_id} is full: {self._held(runs, state_bytes)}; every new "
                f"run is stopped worker_run_limit until runs leave it. {self._advice()}"
            )
            log.error(line)
            return line
        passed = sum(1 for at in WARN_AT if share >= at)
        if passed <= self._warned:
            return None
        self._warned = passed
        line = (
            f"worker {self.worker_id} holds {share:.0%} of what it may: "
            f"{self._held(runs, state_bytes)}{self._growth(now, share)}; at the cap every new "
            f"run is stopped worker_run_limit. {self._advice()}"
        )
        log.warning(line)
        return line

    def _held(self, runs: int, state_bytes: int) -> str:
        return (
            f"{runs:,} runs and tombstones of max_runs {self.max_runs:,}, "
            f"{state_bytes / (1 << 20):,.0f} MB of state of max_state_bytes "
            f"{self.max_state_bytes / (1 << 20):,.0f} MB"
        )

    def _growth(self, now: float, share: float) -> str:
        per_s = self._trend.per_s(now, share)
        if per_s is None:
            return ""
        return f", growing (the cap in ~{duration_text((1.0 - share) / per_s)} at this rate)"

    def _advice(self) -> str:
        per_day = sustained_runs_per_day(self.max_runs, self.run_retention_s, self.tombstone_s)
        held_for = duration_text(self.run_retention_s + self.tombstone_s)
        return (
            f"A run counts until its tombstone is forgotten, BATON_RUN_RETENTION_S + "
            f"BATON_TOMBSTONE_RETENTION_S ({held_for})"
            f" after its last event, so this worker takes ~{per_day:,.0f} new runs a day for "
            "good: raise BATON_MAX_RUNS (and BATON_MAX_STATE_BYTES, with the memory), lower "
            "BATON_TOMBSTONE_RETENTION_S, or add workers (and partitions)"
        )


def capacity_of(settings: Any, worker_id: str) -> Capacity:
    """The caps a worker with ``settings`` (``schemas.settings.Settings``) holds runs under."""
    return Capacity(
        worker_id,
        settings.max_runs,
        settings.max_state_bytes,
        settings.run_retention_s,
        settings.tombstone_retention_s,
    )
