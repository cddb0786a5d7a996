"""The order the workers read Kafka records in, for `baton replay --from-kafka`: each partition's.

A worker reads a partition in offset order, and the records of many partitions (and topics)
as they come. A record's timestamp is its producer's (any int64: two hosts of one run with
skewed clocks, a writer of the topic stamping what it likes), so stamp order is not read
order: deciding a partition's records by their stamps judged a run on an order it never had.
So each partition keeps its offset order, read on its *clock*: the running maximum of its
records' stamps (:class:`PartitionClock`), which never goes back along the partition; the
partitions are merged by their clocks (a k-way merge, well defined because each partition's
clock only goes forward), and a ``first`` topic's record (gov.control) goes first at an equal
time (fail closed: a kill applies).

A stamp outside ``[-1, latest)`` (before the epoch's "no timestamp", or past the read's
bound) does not move its partition's clock: when that record was read is unknown, so it is
read at the clock (its offset order kept) and marked ``stamped=False``; the caller decides
what that means for its run. Not guaranteed: a stamp within the bounds but ahead of when its
record was written moves its partition's clock forward for every record after it (a record
after it is read no earlier than it; the bound stops a stamp of a year ahead, not of a day;
``replay_read_late`` names the runs this may put on another side of a control command).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from baton.processors.batch import InputRecord

__all__ = ["PartitionClock", "ReadRecord", "Stamped", "read_order"]

#: (record timestamp ms, topic, record), as read from Kafka
Stamped = tuple[int, str, InputRecord]


class ReadRecord(NamedTuple):
    """A record at the time its partition's clock says it was read (ms)."""

    at: int
    topic: str
    record: InputRecord
    #: its own stamp was within the bounds (False: when it was read is unknown)
    stamped: bool


class PartitionClock:
    """One partition's clock: the running maximum of its records' stamps, in offset order
    (-1, Kafka's "no timestamp", before the first)."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = -1

    def read(self, stamp: int, latest: int) -> bool:
        """Move the clock to ``stamp`` if later; False (the clock unmoved): the stamp is
        outside ``[-1, latest)``."""
        if not -1 <= stamp < latest:
            return False
        if stamp > self.at:
            self.at = stamp
        return True


def read_order(
    records: Iterable[Stamped],
    latest: int,
    first: str = "",
    held_from: Callable[[InputRecord, int], int] | None = None,
) -> Iterator[ReadRecord]:
    """``records`` (of any partitions, in any order) as the workers read them: each
    partition in offset order on its clock, the partitions merged by clock, a ``first``
    topic's record first at an equal time. ``held_from``: called with each ``first`` topic's
    record, in its partition's offset order, and its clock read so far (its own stamp read):
    the record holds from that clock or the time returned, whichever is later (an applied
    control command from its signing; -1: from the clock). Every lane is made before this
    returns (``held_from`` has been called for every such record)."""
    partitions: dict[tuple[str, int], list[tuple[int, int, int, InputRecord]]] = {}
    for n, (stamp, topic, rec) in enumerate(records):
        partitions.setdefault((topic, rec.partition), []).append((rec.offset, n, stamp, rec))
    lanes = []
    for (topic, _), read in sorted(partitions.items()):
        read.sort(key=lambda r: (r[0], r[1]))  # offset order (a hand-built list: as listed)
        clock = PartitionClock()
        lane = []
        for _, _, stamp, rec in read:
            stamped = clock.read(stamp, latest)
            if held_from is not None and topic == first:
                clock.read(held_from(rec, clock.at), latest)
            lane.append(ReadRecord(clock.at, topic, rec, stamped))
        lanes.append(lane)
    # heapq.merge keeps each lane's order and takes the earlier lane at an equal key
    return heapq.merge(*lanes, key=lambda r: (r.at, r.topic != first))
