"""Which runs the worker's sweep must look at now: a due-time index, so a sweep is O(due).

The sweep expires approvals, turns idle runs into tombstones and forgets old tombstones
(``engine.evict``). Walking and decoding every run each second made its cost grow with the
table; this index keeps a heap of (due time, run key) instead. Entries are lazy: a run that
changed is pushed again with its new due time, and a popped entry whose run is due later
(or gone) is put back or dropped, so nothing is missed and nothing is acted on early.

It also remembers which runs were decided lately, in the order they were last touched, so
the sweep can hold the runs idle for HOLD_IDLE_S as their changelog record (``idle_keys``):
a decoded run takes about three times the memory of its held record, and a run that
waits that long for its next event can pay the decoding then (bench/memory_bench.py).

Not guaranteed: the index knows only the runs it was told about. After a rebalance (new
partitions, states restored from the changelog) the worker rebuilds it from the table.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from baton.processors.engine import next_due
from baton.processors.state import RunState

__all__ = ["HOLD_IDLE_S", "DueIndex"]

#: a run no event has touched for this long is held as its changelog record, compressed
#: (processors/state_held.py: ~0.95 KB a short run with its index entries, against ~2.8 KB
#: decoded), until its next event; holding costs ~20 us a run and the return ~20 us more than
#: a decoded run's event (bench/memory_bench.py). 120 s until 2026-11-29: a worker at 20k
#: events/s may touch 2.4M runs in 120 s, so most of its runs were never held
HOLD_IDLE_S = 30.0


class DueIndex:
    def __init__(
        self, retention_s: float, tombstone_retention_s: float, hold_idle_s: float = HOLD_IDLE_S
    ) -> None:
        self.retention_s = retention_s
        self.tombstone_retention_s = tombstone_retention_s
        self.hold_idle_s = hold_idle_s
        self._heap: list[tuple[float, bytes]] = []
        #: key -> the earliest due time pushed for it and not popped yet
        self._due: dict[bytes, float] = {}
        #: key -> its run's last_event_at, for the runs touched since they were last held,
        #: least recently touched first (a touch moves its key to the end)
        self._touched: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self._due)

    def due_of(self, state: RunState) -> float:
        return next_due(state, self.retention_s, self.tombstone_retention_s)

    def touch(self, key: bytes, state: RunState | None) -> None:
        """``key``'s run changed to ``state`` (None: it left the table)."""
        touched = self._touched
        touched.pop(key, None)
        if state is None:
            self._due.pop(key, None)  # its heap entries are dropped when popped
            return
        touched[key] = state.last_event_at
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
        self._touched = {}  # restored runs are bytes until their next event

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

    def idle_keys(self, now_ts: float, limit: int) -> list[bytes]:
        """Up to ``limit`` runs no event has touched for ``hold_idle_s`` (least recently
        touched first), forgotten here: the caller holds each as its record."""
        touched = self._touched
        horizon = now_ts - self.hold_idle_s
        out: list[bytes] = []
        for key, last in touched.items():
            if last > horizon or len(out) >= limit:
                break
            out.append(key)
        for key in out:
            del touched[key]
        return out
