"""Which gov.stops offsets the alerter may commit: only past records whose alerts are all out.

A record's alerts are out when they are printed, not held back in a storm, and the webhook
sender is done with them (posted or given up). Until then its offset is not committed, so a
crash or a shutdown that could not post re-reads it: at least once, never silently dropped.

The sender finishes alerts in the order they were queued, so "the first n are done" is one
number. After reading, whenever no storm holds stops back, the alerter takes a *mark*: the
offsets read so far and how many alerts had been queued by then. A mark is due once the
sender has finished that many. Marks are few: a new one replaces the last when nothing was
queued in between, so there are never more than the alerts in flight, plus one. A mark also
counts the stops the alerter had taken by then (``announced``): once it is due, those are out,
and :attr:`CommitPoints.settled` says how many (the state file writes them: alert_seen.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

__all__ = ["CommitPoints"]

Partition = tuple[str, int]


class CommitPoints:
    """The offsets read, the marks taken, and the offsets due for a commit (no Kafka here)."""

    def __init__(self) -> None:
        self._read: dict[Partition, int] = {}
        self._marks: deque[tuple[int, dict[Partition, int], int]] = deque()
        self._unmarked = False
        #: the offsets of the last mark that fell due (committed again at shutdown)
        self.last_due: dict[Partition, int] = {}
        #: the ``announced`` of the last mark that fell due
        self.settled = 0

    def read(self, topic: str, partition: int, offset: int) -> None:
        """A record at ``offset`` was read (and offered to the alerter)."""
        self._read[(topic, partition)] = offset + 1
        self._unmarked = True

    def mark(self, queued: int, announced: int = 0) -> None:
        """Everything read so far is announced or queued, and ``queued`` alerts have been
        queued in all, for the first ``announced`` stops taken; call it only while no summary
        holds stops back."""
        if not self._unmarked:
            return
        if self._marks and self._marks[-1][0] == queued:
            self._marks.pop()  # nothing queued since: the newer offsets replace it
        self._marks.append((queued, dict(self._read), announced))
        self._unmarked = False

    def due(self, finished: int) -> dict[Partition, int]:
        """Offsets that may be committed now that the sender finished ``finished`` alerts;
        empty when nothing new fell due."""
        offsets: dict[Partition, int] = {}
        while self._marks and self._marks[0][0] <= finished:
            _, offsets, announced = self._marks.popleft()
            self.settled = max(self.settled, announced)
        if offsets:
            self.last_due = offsets
        return offsets

    def revoke(self, partitions: Iterable[Partition]) -> None:
        """Another member owns ``partitions`` now: never commit our position over its own."""
        for key in partitions:
            self._read.pop(key, None)
            self.last_due.pop(key, None)
            for _, offsets, _ in self._marks:
                offsets.pop(key, None)

    def __len__(self) -> int:
        """Marks not yet due."""
        return len(self._marks)
