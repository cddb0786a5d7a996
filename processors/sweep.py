"""Which runs the worker's sweep must look at now: a due-time index, so a sweep is O(due).

The sweep expires approvals, turns idle runs into tombstones and forgets old tombstones
(``engine.evict``). Walking and decoding every run each second made its cost grow with the
table; this index keeps the runs in per-second buckets of their due times instead (a due
time rounded up to its second: a run is never looked at before it is due, and at most a
second after). Entries are lazy: a run that changed is put in an earlier bucket when its
due time moved earlier, and a popped run whose due time has not come (it had an event
since) is looked at by the caller and indexed again, so nothing is missed and nothing is
acted on early.

It also remembers which runs were decided lately, in per-second buckets of their last
event, so the sweep can hold the runs idle for HOLD_IDLE_S as their changelog record
(``idle_keys``): a decoded run takes about three times the memory of its held record, and
a run that waits that long for its next event can pay the decoding then
(bench/memory_bench.py).

Buckets rather than a heap entry and a dict entry a run (session 6): the index holds one dict
entry a run and one list slot a bucket it is in, where a heap tuple, a due float and the
touched map's entry and float took ~110 bytes more a run (bench/memory_bench.py), for every
run a worker holds.

Not guaranteed: the index knows only the runs it was told about. After a rebalance (new
partitions, states restored from the changelog) the worker rebuilds it from the table.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from math import ceil

from baton.processors.engine import next_due
from baton.processors.state import RunState
from baton.schemas.policy import MAX_APPROVAL_TTL_S

__all__ = ["HOLD_IDLE_S", "MAX_AHEAD_S", "DueIndex", "latest_trusted"]

#: a run no event has touched for this long is held as its changelog record, compressed
#: (processors/state_held.py: ~0.95 KB a short run with its index entries, against ~2.8 KB
#: decoded), until its next event; holding costs ~20 us a run and the return ~20 us more than
#: a decoded run's event (bench/memory_bench.py). 120 s until 2026-11-29: a worker at 20k
#: events/s may touch 2.4M runs in 120 s, so most of its runs were never held
HOLD_IDLE_S = 30.0

#: a run's start, last event or eviction more than this past the worker's clock is a time it
#: cannot trust (no worker stamps one: a changelog writer's, or a clock far off): the sweep
#: sets it to its clock's now (sweep_step.py), else the run would never fall due and stay for
#: good (last event 1e300). A time far in the past needs nothing: the run falls due at once
MAX_AHEAD_S = 3600.0


def latest_trusted(now_ts: float) -> tuple[float, float]:
    """The latest start, last event or eviction, and the latest approval expiry, that the
    sweep takes at their word at ``now_ts`` (an approval expires at most
    MAX_APPROVAL_TTL_S after it was asked)."""
    return now_ts + MAX_AHEAD_S, now_ts + MAX_AHEAD_S + MAX_APPROVAL_TTL_S


class _Bucket(list[bytes]):
    """The runs due in one second (a list: a run is one slot); the runs' dict entries point
    at it, so a run whose entry is another bucket (or none) was moved or left the table."""

    __slots__ = ("second",)

    def __init__(self, second: int, keys: Iterable[bytes] = ()) -> None:
        super().__init__(keys)
        self.second = second


class _Touched(list[str | bytes]):
    """The runs touched with one second as their last event, in the order they were touched,
    each by its run id, which its state holds already: the batch's own key bytes (a new
    object a record, from the consumer) kept a copy of the key a batch alive for
    hold_idle_s (~80 bytes a run touched by a second batch). A run's key is its id's UTF-8
    bytes (the batch step refuses an event whose key is not); a changelog writer's record
    whose id is not text is touched by its key, and one whose id is another run's only lets
    that run be held once idle, as it would be (``idle_keys`` asks the store).
    A run is touched by every batch that changes it: the list drops its repeats at ``room``
    slots (1,024, then twice what was left and 1,024), so a run whose last event stays in one
    second (a clock stepped back behind it) takes a bounded part of it, not a slot a batch
    until the clock catches up."""

    __slots__ = ("room",)

    def __init__(self, name: str | bytes) -> None:
        super().__init__((name,))
        self.room = _TOUCHED_ROOM

    def compact(self) -> None:
        """Drop the repeats (the first of each key stays, in its place)."""
        self[:] = dict.fromkeys(self)
        self.room = 2 * len(self) + _TOUCHED_ROOM


#: a second's touched list is first cleared of repeats at this length (a busy second of
#: fewer touches never pays for it: ~40 ns a touch when it did from 64)
_TOUCHED_ROOM = 1024


class DueIndex:
    def __init__(
        self, retention_s: float, tombstone_retention_s: float, hold_idle_s: float = HOLD_IDLE_S
    ) -> None:
        self.retention_s = retention_s
        self.tombstone_retention_s = tombstone_retention_s
        self.hold_idle_s = hold_idle_s
        #: key -> the bucket of the earliest due time put in for it and not popped yet
        self._due: dict[bytes, _Bucket] = {}
        #: second -> its bucket, and the seconds that have one (a heap: the earliest first)
        self._buckets: dict[int, _Bucket] = {}
        self._seconds: list[int] = []
        #: second of a last event -> the runs touched with it since they were last held, in
        #: the order they were touched (a run touched again is in two buckets: the caller's
        #: ``idle_since`` tells the current one)
        self._touched: dict[int, _Touched] = {}
        #: the latest sweep's time, and what a run's times and due time may be at most then
        #: (``latest_trusted``): a run past them is due at that time, for the sweep to fix.
        #: Unbounded until the first sweep or rebuild tells the clock
        self._now = self._ahead = self._latest_due = float("inf")

    def _clock(self, now_ts: float) -> None:
        """The sweep's clock is at ``now_ts`` (its times bound what a run may say)."""
        self._now = now_ts
        self._ahead, self._latest_due = latest_trusted(now_ts)

    def __len__(self) -> int:
        return len(self._due)

    def due_of(self, state: RunState) -> float:
        return next_due(state, self.retention_s, self.tombstone_retention_s)

    def touch(self, key: bytes, state: RunState | None) -> None:
        """``key``'s run changed to ``state`` (None: it left the table)."""
        if state is None:
            self._due.pop(key, None)  # its bucket slots are dropped when popped
            return
        due = self.due_of(state)
        ahead = self._ahead
        if not (
            due <= self._latest_due
            and state.last_event_at <= ahead
            and state.started_at <= ahead
            and (state.evicted_at is None or state.evicted_at <= ahead)
        ):
            # a time past the clock (or NaN): due at the latest sweep's time, never in the
            # touched lists (its second would be one no sweep reaches)
            self.push(key, self._now)
            return
        second = _second(state.last_event_at)
        name = state.run_id  # what the touched lists hold (_Touched)
        if type(name) is not str:
            name = key
        touched = self._touched.get(second)
        if touched is None:
            self._touched[second] = _Touched(name)
        elif touched[-1] is not name:
            touched.append(name)
            if len(touched) >= touched.room:
                touched.compact()
        self.push(key, due)

    def push(self, key: bytes, due: float) -> None:
        """Index ``key`` as due at ``due`` (a POSIX time), unless it is due earlier already."""
        second = _second(due)
        known = self._due.get(key)
        if known is None or second < known.second:
            bucket = self._buckets.get(second)
            if bucket is None:
                bucket = self._buckets[second] = _Bucket(second)
                heapq.heappush(self._seconds, second)
            bucket.append(key)
            self._due[key] = bucket

    def earliest(self) -> int | None:
        """The earliest second a run may fall due in (None: none indexed; an entry may
        be stale, so nothing may be due then)."""
        return self._seconds[0] if self._seconds else None

    def rebuild_keys(self, keys: Iterable[bytes], now_ts: float) -> None:
        """Index ``keys`` as due now, without reading their states: after a rebalance the
        sweep then looks at them ``limit`` at a time (decoding every restored run at once
        would stall the worker for seconds on a big table)."""
        self._clock(now_ts)
        second = _second(now_ts)
        bucket = _Bucket(second, keys)
        self._due = dict.fromkeys(bucket, bucket)
        self._buckets = {second: bucket}
        self._seconds = [second]
        self._touched = {}  # restored runs are bytes until their next event

    def pop_due(self, now_ts: float, limit: int | None = None) -> Iterator[bytes]:
        """Keys whose earliest known due time has come (at most ``limit``); the caller acts on
        each and then calls :meth:`touch` with the run's new state (or :meth:`push`)."""
        self._clock(now_ts)
        seconds, buckets, dues = self._seconds, self._buckets, self._due
        popped = 0
        while seconds and seconds[0] <= now_ts and (limit is None or popped < limit):
            second = heapq.heappop(seconds)
            bucket = buckets.pop(second)
            for i, key in enumerate(bucket):
                if limit is not None and popped >= limit:
                    self._put_back(bucket, i)
                    return
                if dues.get(key) is not bucket:
                    continue  # moved to an earlier bucket, or the run left the table
                del dues[key]
                popped += 1
                try:
                    yield key
                except GeneratorExit:  # the caller stopped early (an exception): the rest stays
                    self._put_back(bucket, i + 1)
                    raise

    def _put_back(self, bucket: _Bucket, reached: int) -> None:
        """The keys of a bucket a limited pop did not reach (from ``reached`` on): due still,
        first next time. They stay in their bucket, whose index entries point at it already:
        moving them cost a dict write each, and a restored table of a million runs is one
        bucket that the sweep takes 5,000 a second."""
        del bucket[:reached]
        second = bucket.second
        newer = self._buckets.get(second)  # a push into this second while it was popped
        if newer is None:
            heapq.heappush(self._seconds, second)
        else:
            dues = self._due
            for key in newer:
                if dues.get(key) is newer:
                    bucket.append(key)
                    dues[key] = bucket
        self._buckets[second] = bucket

    def idle_keys(
        self, now_ts: float, limit: int, idle_since: Callable[[bytes], float | None]
    ) -> list[bytes]:
        """Up to ``limit`` runs no event has touched for ``hold_idle_s`` (the longest idle
        first), forgotten here: the caller holds each as its record. ``idle_since(key)`` is
        the run's last event as its decoded state says, None when it is not decoded (held
        already, or gone): a run touched again since is left for its newer bucket."""
        horizon = now_ts - self.hold_idle_s
        touched = self._touched
        out: dict[bytes, None] = {}  # a run touched in one second may be in it twice
        for second in sorted(s for s in touched if s <= horizon):
            names = touched.pop(second)
            for i, name in enumerate(names):
                if len(out) >= limit:
                    del names[:i]
                    touched[second] = names
                    return list(out)
                key = name if type(name) is bytes else name.encode("utf-8", "surrogatepass")
                last = idle_since(key)
                if last is not None and _second(last) == second:
                    out[key] = None
        return list(out)


#: a time past any real one: one bucket at each end (a restored state's times are whatever
#: its record says: infinity, NaN or 1e300 must not break the index)
_FAR = 2.0**62
_FAR_SECOND = 2**62


def _second(t: float) -> int:
    """The bucket of time ``t``: its second rounded up (never early), clamped; NaN: never."""
    if -_FAR < t < _FAR:
        return ceil(t)
    return -_FAR_SECOND if t <= -_FAR else _FAR_SECOND
