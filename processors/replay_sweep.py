"""The worker's table and 1 s sweep, run by a replay (`baton replay --from-kafka --redecide`).

A worker's sweep expires approvals, turns a run idle for its run retention into a tombstone
(its handoffs stopped ``run_expired``) and forgets the tombstone its tombstone retention
later: the run id is then a new run's. Deciding recorded requests with the batch step alone
kept every run for good, so a run id used again after its tombstone was forgotten was
decided on the old run (a finish: every new handoff stopped ``run_finished`` under either
policy, a stricter policy's change hidden). :class:`ReplaySweep` runs the worker's own
``sweep_due`` with its due index over the replay's batch step, once a second of the
records' clock, before the record that reaches it, with the workers' retentions.

The replay decides every partition with one batch step, whose runs are counted per partition
(:class:`PartitionRuns`): a worker stops a new run past ``max_runs`` (``worker_run_limit``), and
the replay does only where that partition alone holds as many, as any worker that owns it
does (one worker's cap over the whole topic stopped a run a fleet had taken, under both
policies: a stricter policy's change hidden, exit 0; session 19 H3).

Not guaranteed: the worker sweeps once a second of its own clock, so a record read within a
second after its run fell due may have been decided on the live run, where the replay
decides it on the tombstone (or the other way round).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from baton.processors.batch import BatchProcessor
from baton.processors.engine import KillSwitches
from baton.processors.state import RunState
from baton.processors.sweep import DueIndex
from baton.processors.sweep_step import sweep_due
from baton.schemas.decision import Decision
from baton.streams.partitioner import partition_for

__all__ = ["PartitionRuns", "ReplaySweep"]

#: sweeps made between two records at most (one a second some run fell due in): a run put
#: back at each sweep's time must not make a gap of years a sweep a second
_MAX_SWEEPS = 100_000


class PartitionRuns(dict[bytes, RunState]):
    """The replay's runs by key, whose ``len()`` is the runs of partition ``at`` (the one
    being decided): what the batch step's ``max_runs`` counts, as a worker owning only that
    partition would."""

    __slots__ = ("_counts", "_partitions", "at")

    def __init__(self, partitions: int) -> None:
        super().__init__()
        self._partitions = partitions
        self._counts = [0] * partitions
        #: the partition the batch step decides a record of now
        self.at = 0

    def __len__(self) -> int:
        return self._counts[self.at]

    def __setitem__(self, key: bytes, state: RunState) -> None:
        if key not in self:
            self._counts[partition_for(key, self._partitions)] += 1
        super().__setitem__(key, state)

    def __delitem__(self, key: bytes) -> None:
        super().__delitem__(key)
        self._counts[partition_for(key, self._partitions)] -= 1

    def pop(self, key: bytes, *default: Any) -> Any:
        if key in self:
            self._counts[partition_for(key, self._partitions)] -= 1
        return super().pop(key, *default)


class ReplaySweep:
    """The sweep of one replay's batch step (``proc``), with the workers' retentions."""

    __slots__ = ("_acted", "_due", "_partitions", "_proc", "_second")

    def __init__(self, proc: BatchProcessor, retention_s: float, tombstone_s: float) -> None:
        self._proc = proc
        self._due = DueIndex(retention_s, tombstone_s, hold_idle_s=0.0)
        self._partitions = frozenset(range(proc.partitions))
        self._second = -sys.maxsize  # the last second swept
        #: run id -> the last second the sweep changed it (expired, evicted, forgot)
        self._acted: dict[str, int] = {}

    def changed(self, changed: Mapping[bytes, tuple[int, RunState | None]]) -> None:
        """The batch step changed these runs (``Outputs.changed``): index their due times."""
        for key, (_, state) in changed.items():
            self._due.touch(key, state)

    def until(self, at_ms: int, kills: KillSwitches) -> tuple[list[Decision], list[str]]:
        """Every sweep the worker made since the last one until the clock ``at_ms``: one
        at each second a run fell due in (the worker sweeps every second: a run evicted at
        its due time, its tombstone forgotten from then), then one at ``at_ms``'s second.
        The decisions they made (approvals expired) and the run ids they forgot (new runs
        from their next event)."""
        second = at_ms // 1000
        decisions: list[Decision] = []
        forgotten: list[str] = []
        for _ in range(_MAX_SWEEPS):
            if second <= self._second:
                break
            earliest = self._due.earliest()
            if earliest is None or earliest >= second:
                self._second = second
            else:
                self._second = max(earliest, self._second + 1)
            self._sweep(self._second, kills, decisions, forgotten)
        else:  # (a gap of more due seconds than that: the rest swept at once)
            self._second = second
            self._sweep(second, kills, decisions, forgotten)
        return decisions, forgotten

    def acted_after(self, own_ms: int, runs: Iterable[str]) -> list[str]:
        """The ``runs`` the sweep changed after ``own_ms``: for a record read long after its
        own stamp (a stamp ahead amid its partition moved the clock), whether the worker
        decided it before or after the sweep changed its run is unknown."""
        acted = self._acted
        return [run for run in runs if acted.get(run, -sys.maxsize) * 1000 > own_ms]

    def _sweep(
        self, second: int, kills: KillSwitches, decisions: list[Decision], forgotten: list[str]
    ) -> None:
        now = datetime.fromtimestamp(second, UTC)
        due = self._due
        out = sweep_due(
            self._proc,
            due,
            now,
            active=self._partitions,
            ready=self._partitions,
            kills=kills,
            run_retention_s=due.retention_s,
            tombstone_retention_s=due.tombstone_retention_s,
            limit=sys.maxsize,  # every due run: a replay has no second to keep
        )
        # the index's idle lists serve a store that holds runs as records; a replay's dict
        # does not: dropped as they age, not kept a slot a touch for the whole replay
        due.idle_keys(float(second), sys.maxsize, _not_held)
        decisions += [d for _, d in out.decisions]
        for key in out.changed:
            self._acted[key.decode("utf-8", "replace")] = second
        gone = [key for key, (_, state) in out.changed.items() if state is None]
        forgotten += [key.decode("utf-8", "replace") for key in gone]


def _not_held(_key: bytes) -> None:
    return None
