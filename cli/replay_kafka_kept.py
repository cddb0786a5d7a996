"""What `baton replay --from-kafka` read before its range, kept for the runs that go on in it.

A run a worker still held when the range began is replayed from its first record, so the
records before the range are kept by their place (not their bytes) run by run, until the
run is idle for the workers' run retention (evicted to a tombstone: partial if it goes on in
the range) or for run and tombstone retention (forgotten: a new run from its next record).
Idle is counted from the run's last record of any kind: one the worker read as no event of
it (a dead letter under its key) keeps it begun before the range, never new too early; and
up to a record's own stamp when that is earlier than its partition's clock.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict

__all__ = ["Kept", "KeptRuns", "Said"]


#: a record read before the range, kept by where it is (read time ms, topic, partition,
#: offset), not by its bytes: read again at the end for the runs that go on in the range
Kept = tuple[int, str, int, int]
#: what a kept record the worker decided as its run's event says (``begun``): an answer,
#: the run, its tenant (with ``tenants``)
Said = tuple[bool, str, str | None]


class KeptRuns:
    """The records read before the range of the runs a worker still held: each partition's
    runs by the clock of their last record there, a run idle past ``horizon_ms`` (the
    workers' run_retention_s: evicted to a tombstone, its later handoffs stopped under either
    policy) dropped with its records, so that what is kept is the records of the last
    retention before the range, not of the whole topic. Idle means on every partition: a
    run's last record anywhere (a run with a grant on a quiet approvals partition and a
    handoff every 20 minutes on its requests one is not idle; H3, session 19: it was
    dropped, partial, its change hidden, exit 0)."""

    __slots__ = (
        "_lanes", "_last", "closed", "dropped", "forget", "horizon", "idle_done", "records", "said",
    )  # fmt: skip

    def __init__(self, horizon_ms: float, forget_ms: float = math.inf) -> None:
        self.horizon = horizon_ms
        #: idle this long (run and tombstone retention), the worker had forgotten the run:
        #: its id is a new run's from its next record, whatever was read of it before
        self.forget = forget_ms
        self._lanes: dict[tuple[str, int], OrderedDict[str, int]] = {}
        #: run -> the clock of its last record read, on any partition
        self._last: dict[str, int] = {}
        #: run -> its records read before the range, in the order read
        #: (a partition's records: its read times and offsets in turn, 16 bytes a record)
        self.records: dict[str, dict[tuple[str, int], array[int]]] = {}
        #: run -> what its kept records said (their bytes are not held), up to one that
        #: makes it known begun; such a run is in ``closed``
        self.said: dict[str, list[Said]] = {}
        self.closed: set[str] = set()
        #: the runs dropped idle: begun before the range (partial), as their later records;
        #: each with the clock of its last record read
        self.dropped: dict[str, int] = {}
        #: :meth:`idle_before` was called: no record before the range is left to read
        self.idle_done = False

    def drop(self, run: str) -> list[Said]:
        """Forget ``run``'s kept records; what they said."""
        self.records.pop(run, None)
        self.closed.discard(run)
        return self.said.pop(run, [])

    def latest(self, run: str) -> int | None:
        """The latest read time of ``run``'s kept records (None: none kept)."""
        kept = self.records.get(run)
        return max(max(read[::2]) for read in kept.values()) if kept else None

    def kept(self, run: str) -> list[Kept]:
        """``run``'s kept records."""
        return [
            (read[n], *where, read[n + 1])
            for where, read in self.records.get(run, {}).items()
            for n in range(0, len(read), 2)
        ]

    def keep(
        self, run: str, where: tuple[str, int], at: int, read: int, offset: int, own: int
    ) -> list[str]:
        """Keep ``run``'s record at ``offset`` of partition ``where``, read at ``at`` (its
        read time ``read``: ``at``, or its own stamp out of the clock's bound; ``own``: the
        earlier of its clock and its own stamp, what forgetting is judged on); the runs this
        drops, idle on every partition that long (their records: :meth:`drop`)."""
        lane = self._lanes.setdefault(where, OrderedDict())
        gone = []
        last = self._last.get(run)
        if last is not None and own - last > self.forget:  # forgotten: a new run from here
            self.records.pop(run, None)
            self.said.pop(run, None)
            self.closed.discard(run)
        elif last is not None and at - last > self.horizon:  # idle that long itself: evicted
            lane.pop(run, None)
            del self._last[run]
            self.dropped[run] = at  # (this record keeps its tombstone: counted from it)
            return [run]
        self._last[run] = at if last is None else max(last, at)
        lane[run] = at
        lane.move_to_end(run)
        self.records.setdefault(run, {}).setdefault(where, array("q")).extend((read, offset))
        while lane and next(iter(lane.values())) < at - self.horizon:
            idle, _ = lane.popitem(last=False)
            if self._last.get(idle, at) >= at - self.horizon:
                continue  # read on another partition since: not idle
            last = self._last.pop(idle, at)
            if idle in self.records:
                self.dropped[idle] = last
                gone.append(idle)
        return gone

    def anew(self, run: str, at: int, before: dict[str, str | None], own: int) -> bool:
        """``run`` was dropped idle, and its record read at ``at`` comes so long after its
        last one that the worker had forgotten it: no longer begun before the range (taken
        from ``before``), its records from this one on kept as a new run's. False for a run
        not dropped, and for one still dropped (begun before the range) at ``at``. Judged on
        ``own``, the earlier of ``at`` and the record's own stamp: a stamp ahead amid its
        partition (a writer's) moves the clock of every record after it, and made runs
        there look forgotten, replayed on a history cut short."""
        last = self.dropped.get(run)
        if last is None:
            return False
        if own - last <= self.forget:
            self.dropped[run] = max(last, at)  # its records keep its tombstone
            return False
        del self.dropped[run]
        before.pop(run, None)
        return True

    def idle_before(self, start: int) -> list[str]:
        """Drop the runs whose last record is more than the horizon before ``start`` (the
        range's): called once every partition is read to the range or its end, when no
        record before the range is left to read, so no later one keeps such a run (a run
        that goes on in the range is partial: resumed past the horizon, evicted by the
        worker), as :meth:`keep`'s."""
        # by the read times the end of read_topics compares (a record whose own stamp is out
        # of the bound keeps it: one stamped ahead is not idle, its run judged there)
        idle = [run for run in self.records if start - (self.latest(run) or 0) > self.horizon]
        for lane in self._lanes.values():
            for run in idle:
                lane.pop(run, None)
        for run in idle:
            self.dropped[run] = self._last.pop(run, None) or self.latest(run) or 0
        return idle
