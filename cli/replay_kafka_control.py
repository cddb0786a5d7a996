"""gov.control as `baton replay --from-kafka --redecide` reads and applies it.

The control topic is read whole (a kill made before the range holds in it) and applied with
the run events in the order the follower read them; a command applied holds from its clock or
its signing time, whichever is later, and one read past ``--until`` though stamped well
before it was applied by the workers in the range (``replay_kafka``'s docstring).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from baton.processors.batch import InputRecord
from baton.processors.control_apply import ControlInForce, apply_control_record
from baton.processors.replay_read_late import LATE_AFTER_S
from baton.processors.replay_read_order import Stamped
from baton.schemas.events import parse_control_event

__all__ = ["ControlRead", "commands_in_range", "signed_ms"]


class ControlRead:
    """gov.control as the control follower applies it (``read_order``'s ``held_from``, called
    in offset order with the clock each record's own stamp read): an applied command holds
    from its signing time if later (a kill re-published stamped before its signing held
    early), a record that applies nothing (refused, unsigned, no command: anyone's) from its
    clock only. H3, session 19: a writer's refused policy update saying 1000 s as its own
    time moved the clock there, the release after it read at 1000 s, unseen as late (that
    was measured on the stamps), the run's handoffs after the release replayed as killed
    under both policies, the stricter policy's stop hidden, exit 0."""

    __slots__ = ("_held", "in_force", "read")

    def __init__(self, in_force: ControlInForce) -> None:
        self.in_force = in_force
        #: (partition, offset) -> the clock its own stamp read (ms)
        self.read: dict[tuple[int, int], int] = {}
        #: (partition, offset) -> its signing time (ms) where applied
        self._held: dict[tuple[int, int], int] = {}

    def __call__(self, rec: InputRecord, at: int) -> int:
        now = datetime.fromtimestamp(at / 1000, UTC)
        after = apply_control_record(self.in_force, rec, "replay", now)
        applied = after.policy_changed or after.in_force.kills is not self.in_force.kills
        self.in_force = after.in_force
        self.read[rec.partition, rec.offset] = at
        if not applied:
            return -1
        self._held[rec.partition, rec.offset] = signed = signed_ms(rec)
        return signed

    def late(
        self,
        records: list[Stamped],
        control: str,
        latest_ms: int,
        read_late: Mapping[tuple[str, int, int], int],
    ) -> dict[tuple[int, int], int]:
        """(partition, offset) -> the own time (its stamp, or its signing if applied and
        later) of each control record of ``records`` that the clock read_order holds it at
        reads more than LATE_AFTER_S later (``read_late``: the stamps of those read so late
        on the stamps alone)."""
        late: dict[tuple[int, int], int] = {}
        for stamp, topic, rec in records:
            where = (rec.partition, rec.offset)
            if topic != control or not -1 <= stamp < latest_ms:
                continue  # (a stamp out of the bounds moves no clock: when is unknown)
            signed = self._held.get(where, -1)
            at = max(self.read[where], signed if signed < latest_ms else -1)
            own = max(read_late.get((topic, *where), stamp), signed)
            if at - own > LATE_AFTER_S * 1000:
                late[where] = own
        return late


def commands_in_range(
    commands: list[Stamped], until: datetime | None, late: Mapping[tuple[str, int, int], int]
) -> list[Stamped]:
    """The control records (``commands``: gov.control read whole) read before ``until``, and
    those read at or after it though stamped more than LATE_AFTER_S before it (``late``: the
    stamps of those read late): a stamp ahead amid gov.control moved its clock on, the worker
    applied them in the range. They are decided after the range's run events, read late, so
    a run decided from the skew before such a command's own time on that it decides otherwise
    is broken (``ReadLate``), as a run with a request or approval cut so (H3, session 19: a
    release pushed past --to was dropped, the run's handoffs after it replayed as killed
    under both policies, the stricter policy's stop hidden, exit 0)."""
    if until is None:
        return commands
    stop_ms = int(until.timestamp() * 1000)
    cut_ms = stop_ms - LATE_AFTER_S * 1000
    return [
        read
        for read in commands
        if read[0] < stop_ms
        or late.get((read[1], read[2].partition, read[2].offset), stop_ms) < cut_ms
    ]


def signed_ms(rec: InputRecord) -> int:
    """When a control record was signed (ms; a record that does not read: -1). It holds from
    its stamp or this, whichever is later: a kill re-published stamped before its signing
    (a writer of gov.control; the worker refuses such a copy as a replay) held early in the
    replay, and the handoffs the worker allowed meanwhile were replayed as its stops."""
    try:
        return int(parse_control_event(rec.value or b"").event_time.timestamp() * 1000)
    except Exception:
        return -1
