"""Which runs `baton replay --from-kafka` may decide on another side of a command than the worker.

The replay reads each partition at its clock, the running maximum of its stamps
(``replay_read_order``), so a record stamped ahead amid a partition (a writer of the topic; a
stamp may be anything up to the replay's start) moves the clock on for every record after it:
those records, written and read by the worker long before, are read at that stamp. A kill
switch or a policy update made in between was then applied before them in the replay, after
them by the worker: the worker allowed a run's handoffs that the replay stopped as killed
(its stops replayed as recorded, so a stricter policy's stop of one was hidden, exit 0); a
command read late on gov.control the same way held late. A record is *read late* when its
partition's clock is more than :data:`LATE_AFTER_S` past its own time (its stamp; a control
record's: its stamp or its signing time, whichever is later), the clock skew Baton allows
elsewhere (``CONTROL_CLOCK_SKEW_S``). A run event read late whose decision a command held
between its own time and its read time would have changed (a kill or release covering its
run, a policy update), or such a command read late with a run event decided in between, names
its run: in which order the worker read the two is unknown (the caller lists the run broken,
exit 7). "In between" is from the skew *before* the late record's own time to its read time: a
record read late has no order of its own in the replay (the writer of the stamp ahead chose
it), so a command within the skew before or after its own time may be on either side of it
for the worker (H3, session 19: counting from own time *plus* the skew, ra's handoffs written
within 60 s before a kill of ra and read after it were stopped as killed under both policies,
the stricter policy's stop hidden, exit 0). Not guaranteed: a record read within the skew of
its own time keeps the replay's order, taken as the worker's.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Sequence

from baton.processors.control_apply import ControlInForce
from baton.processors.engine_control import CONTROL_CLOCK_SKEW_S
from baton.schemas.decision import Decision

__all__ = ["LATE_AFTER_S", "ReadLate"]

#: how far past its own time a record may be read and its order against a command still be
#: taken as the replay's
LATE_AFTER_S = CONTROL_CLOCK_SKEW_S
_LATE_MS = int(LATE_AFTER_S * 1000)


def _changes(before: ControlInForce, after: ControlInForce, run_id: str, tenant: str) -> bool:
    """The command that took ``before`` to ``after`` decides the run otherwise."""
    return before.policy.version != after.policy.version or before.kills.killed(
        run_id, tenant
    ) != after.kills.killed(run_id, tenant)


class ReadLate:
    """The runs whose order against a control command is unknown, fed in the replay's order:
    :meth:`command` for each control record applied, :meth:`event` for each run event's
    decisions; ``own_ms``: a record's own time (ms) where it is read late, else None.
    ``commands_late``: a control record may be read late (else the run events' decisions
    are not kept: a command read on time needs none of them)."""

    __slots__ = ("_commands", "_decided", "_keep")

    def __init__(self, commands_late: bool = True) -> None:
        self._keep = commands_late
        #: (read time, in force before, in force after) of each command that changed anything
        self._commands: list[tuple[int, ControlInForce, ControlInForce]] = []
        #: (read time, run, tenant) of each run event's decisions, in read order
        self._decided: list[tuple[int, str, str]] = []

    def command(
        self, at: int, own_ms: int | None, before: ControlInForce, after: ControlInForce
    ) -> set[str]:
        """A control record read at ``at`` took ``before`` to ``after``: the runs decided
        after its own time (less the skew) and before it, that it decides otherwise."""
        if before.kills == after.kills and before.policy.version == after.policy.version:
            return set()
        self._commands.append((at, before, after))
        if own_ms is None or at - own_ms <= _LATE_MS:
            return set()
        start = bisect.bisect_right(self._decided, own_ms - _LATE_MS, key=lambda r: r[0])
        decided = self._decided[start:]
        return {run for _, run, tenant in decided if _changes(before, after, run, tenant)}

    def event(
        self, at: int, own_ms: int | None, decisions: Sequence[tuple[int, Decision]]
    ) -> Collection[str]:
        """A run event read at ``at`` was decided ``decisions`` (the batch step's (index,
        decision) pairs): the runs of them that a command held after its own time (less the
        skew) and before it decides otherwise."""
        if self._keep:
            self._decided += [(at, d.run_id, d.tenant) for _, d in decisions]
        if own_ms is None or at - own_ms <= _LATE_MS:
            return ()
        start = bisect.bisect_right(self._commands, own_ms - _LATE_MS, key=lambda c: c[0])
        return {
            d.run_id
            for _, before, after in self._commands[start:]
            for _, d in decisions
            if _changes(before, after, d.run_id, d.tenant)
        }
