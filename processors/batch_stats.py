"""The worker's periodic log line of what its hot path did: events, batches, where time went."""

from __future__ import annotations

import logging
import time

__all__ = ["BatchStats"]

log = logging.getLogger("baton.processors.app")


class BatchStats:
    """Logs, every 10 s of traffic, the events and batches decided and the share of time
    spent deciding and publishing, and the records read again whose answer was already out
    (after a worker before this one died uncommitted), answered with nothing."""

    def __init__(self, worker_id: str, every_s: float = 10.0) -> None:
        self.worker_id = worker_id
        self.every_s = every_s
        self.redelivered = 0  # the batch step's count when the last line was logged
        self._reset(time.monotonic())

    def _reset(self, now: float) -> None:
        self.since = now
        self.events = self.batches = 0
        self.decide_s = self.publish_s = 0.0

    def add(self, events: int, decide_s: float, publish_s: float, redelivered: int = 0) -> None:
        """One batch; ``redelivered``: the batch step's count so far (``BatchProcessor``)."""
        self.events += events
        self.batches += 1
        self.decide_s += decide_s
        self.publish_s += publish_s
        now = time.monotonic()
        if now - self.since >= self.every_s:
            span = now - self.since
            log.info(
                "worker %s: %d events in %.1f s (%.0f/s), %d batches (avg %.0f), "
                "decide %.0f%%, publish %.0f%% of the time",
                self.worker_id,
                self.events,
                span,
                self.events / span,
                self.batches,
                self.events / self.batches,
                100 * self.decide_s / span,
                100 * self.publish_s / span,
            )
            if redelivered > self.redelivered:
                log.info(
                    "worker %s: %d records read again were answered before (their decisions "
                    "are out), not answered again",
                    self.worker_id,
                    redelivered - self.redelivered,
                )
                self.redelivered = redelivered
            self._reset(now)
