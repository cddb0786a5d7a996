"""Which runs the worker's sweep must look at now: a due-time index, so a sweep is O(due).

The sweep expires approvals, turns idle runs into tombstones and forgets old tombstones
(``engine.evict``). Walking and decoding every run each second made its cost grow with the
table; this index keeps a heap of (due time, run key) instead. Entries are lazy: a run that
changed is pushed again with its new due time, and a popped entry whose run is due later
(or gone) is put back or dropped, so nothing is missed and nothing is acted on early.

Not guaranteed: the index knows only the runs it was told about. After a rebalance (new
partitions, states restored from the changelog) the worker rebuilds it from the table.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from baton.processors.engine import next_due
from baton.processors.state import RunState

__all__ = ["DueIndex"]


class DueIndex:
    def __init__(self, retention_s: float, tombstone_retention_s: float) -> None:
        self.retention_s = retention_s
        self.tombstone_retention_s = tombstone_retention_s
        self._heap: list[tuple[float, bytes]] = []
        #: key -> the earliest due time pushed for it and not popped yet
        self._due: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self._due)

    def due_of(self, state: RunState) -> float:
        return next_due(state, self.retention_s, self.tombstone_retention_s)

    def touch(self, key: bytes, state: RunState | None) -> None:
        """``key``'s run changed to ``state`` (None: it left the table)."""
        if state is None:
            self._due.pop(key, None)  # its heap entries are dropped when popped
            return
        self.push(key, self.due_of(state))

    def push(self, key: bytes, due: float) -> None:
        known = self._due.get(key)
        if known is None or due < known:
            self._due[key] = due
            heapq.heappush(self._heap, (due, key))

    def rebuild_keys(self, keys: Iterable[bytes], now_ts: float) -> None:
        """Index ``keys`` as due now, without reading their states: after a rebalance the
        sweep then looks at them ``limit`` at a time (decoding every restored run at once
        would stall the worker for seconds on a big table)."""
        self._due = dict.fromkeys(keys, now_ts)
        self._heap = [(now_ts, key) for key in self._due]
        heapq.heapify(self._heap)

    def pop_due(self, now_ts: float, limit: int | None = None) -> Iterator[bytes]:
        """Keys whose earliest known due time has come (at most ``limit``); the caller acts on
        each and then calls :meth:`touch` with the run's new state (or :meth:`push`)."""
        heap, dues = self._heap, self._due
        popped = 0
        while heap and heap[0][0] <= now_ts and (limit is None or popped < limit):
            due, key = heapq.heappop(heap)
            if dues.get(key) != due:
                continue  # superseded by an earlier push, or the run left the table
            del dues[key]
            popped += 1
            yield key
