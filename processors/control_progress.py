"""How complete a worker's view of the control topic is: pure bookkeeping on a monotonic clock.

The control follower (``processors/control.py``) sends *probes* (the topic's watermarks, asked
at a time t) and reports the consumer's *positions*; once the positions reach every high
watermark of a probe sent at t, every control event committed before t has been applied.
No I/O and no clock reads here, so the rules are tested without a broker.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["NO_POSITION", "ControlProgress"]

#: librdkafka's position of a partition nothing was consumed from since its assignment
NO_POSITION = -1001
_ERROR_CHARS = 500


def _reached(position: int, low: int, high: int) -> bool:
    """True when a partition holding offsets [low, high) has been read to ``high``."""
    return high <= low or position >= high


@dataclass(frozen=True)
class _Probe:
    at: float  #: monotonic time the watermarks were asked for (before the request left)
    ends: Mapping[int, tuple[int, int]]  #: partition -> (low, high) watermarks


class ControlProgress:
    """How complete the follower's view of the control topic is, on a monotonic clock.

    Pure bookkeeping, no I/O and no clock reads: the follower thread feeds it probes and
    consumer positions with their times. Other threads only read its fields (each is one
    assignment, so a reader sees an old or a new value, never half of one).
    """

    def __init__(self, started_at: float, *, max_pending: int = 64) -> None:
        self.started_at = started_at
        #: every control event committed before this time has been applied (None: not yet)
        self.complete_as_of: float | None = None
        #: last successful probe (the broker answered metadata and watermarks)
        self.last_contact: float | None = None
        #: last time a position moved forward (reading, even if not yet complete)
        self.last_progress = started_at
        #: source ("probe", "client", "reading") -> (time, message) of its last error: a
        #: probe timing out must not hide the authentication error librdkafka reported
        self.errors: dict[str, tuple[float, str]] = {}
        #: when the probe now on its way was sent (None: none is)
        self.waiting_since: float | None = None
        self.ends: dict[int, tuple[int, int]] = {}
        self.positions: dict[int, int] = {}
        # unanswered probes, oldest first; dropping the oldest when full only delays freshness
        self._pending: deque[_Probe] = deque(maxlen=max_pending)

    @property
    def caught_up(self) -> bool:
        return self.complete_as_of is not None

    def sent(self, at: float) -> None:
        """A probe left at ``at``; its answer (``probed``) or failure (``failed``) follows."""
        self.waiting_since = at

    def probed(self, at: float, ends: Mapping[int, tuple[int, int]]) -> None:
        """The broker answered a probe sent at ``at`` with these watermarks."""
        self.waiting_since = None
        if not ends:
            self.failed(at, "the topic has no partitions")
            return
        self.last_contact = at
        self.ends = dict(ends)
        self._pending.append(_Probe(at, self.ends))

    @property
    def last_error(self) -> str | None:
        return max(self.errors.values())[1] if self.errors else None

    def failed(self, at: float, error: str, source: str = "probe") -> None:
        """Something failed at ``at`` (a probe: no contact); ``error`` says why, kept short."""
        if source == "probe":
            self.waiting_since = None
        self.errors[source] = (at, error[:_ERROR_CHARS])

    def advanced(self, at: float, positions: Mapping[int, int]) -> bool:
        """The consumer's positions at ``at`` (queue drained); True if ``complete_as_of`` moved.

        The newest probe whose every high watermark is reached completes the kill switches
        as of its own time; it and every older probe are then answered.
        """
        if any(pos > self.positions.get(p, NO_POSITION) for p, pos in positions.items()):
            self.last_progress = at
        self.positions = dict(positions)
        newest = -1
        for i, probe in enumerate(self._pending):
            if all(
                p in positions and _reached(positions[p], low, high)
                for p, (low, high) in probe.ends.items()
            ):
                newest = i
        if newest < 0:
            return False
        probe = self._pending[newest]
        for _ in range(newest + 1):
            self._pending.popleft()
        if self.complete_as_of is not None and probe.at <= self.complete_as_of:
            return False
        self.complete_as_of = probe.at
        return True

    def age(self, now: float) -> float:
        """Seconds the kill switches have not been known complete (since start if never)."""
        since = self.complete_as_of if self.complete_as_of is not None else self.started_at
        return max(0.0, now - since)

    def is_fresh(self, now: float, max_age_s: float) -> bool:
        return self.complete_as_of is not None and now - self.complete_as_of <= max_age_s

    def given_up(self, now: float, after_s: float) -> bool:
        """Neither complete nor moving for ``after_s``: a restart is the better chance."""
        return self.age(now) > after_s and now - self.last_progress > after_s

    def describe(self, now: float, topic: str, bootstrap: str) -> str:
        """One line for an operator: where, how old, how far read, and the last error."""
        where = f"control topic {topic} at {bootstrap}"
        if self.complete_as_of is None:
            state = f"not read to its end since the follower started {self.age(now):.1f} s ago"
        else:
            state = f"kill switches last known complete {self.age(now):.1f} s ago"
        parts = [f"{where}: {state}"]
        if self.last_contact is None:
            parts.append("no answer from the broker yet")
        else:
            parts.append(
                f"last answer from the broker {max(0.0, now - self.last_contact):.1f} s ago"
            )
        if self.waiting_since is not None and now - self.waiting_since >= 0.5:
            parts.append(f"no answer to a probe sent {now - self.waiting_since:.1f} s ago")
        if self.ends:
            read = ", ".join(
                f"[{p}] {self.positions.get(p, NO_POSITION)}/{high}"
                for p, (_low, high) in sorted(self.ends.items())
            )
            parts.append(f"read position/high watermark {read}")
        since = self.complete_as_of if self.complete_as_of is not None else -math.inf
        for source, (at, error) in sorted(self.errors.items(), key=lambda e: -e[1][0]):
            if at >= since:  # older ones were overcome by a complete read since
                parts.append(f"last {source} error ({max(0.0, now - at):.1f} s ago): {error}")
        return "; ".join(parts)
