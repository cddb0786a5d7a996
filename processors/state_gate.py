"""Which of the runs' changelog records a worker restores: only its workers', newest last.

Why: a run's budget, stop and dedup marks live in its changelog record, and a worker restores
them from the changelog at every restart and rebalance. Anyone who can write
``<app_id>-runs-changelog`` (under `baton up`, any local user: the embedded broker has no
ACL) could write a record that gave a stopped run its budget back, or write one of the run's
own older records again (its spend before the last reports), and the next worker to restore
the run decided on it.

What holds: a worker with a seal key (``control_seal.seal_key``: BATON_AUDIT_CHAIN_KEY, else
its data dir's ``seal.key``, as every `baton up` stack has) ends each state record it writes
with its ``seq`` (``RunState.seq``: one more than the state it was copied from, a new run's the
millisecond it began, shifted 16 bits: a later life's is past all the earlier's) and a MAC:
``...,"sq":12,"sm":"<32 hex>"}``, a keyed BLAKE2b (person ``PERSON``) of the changelog topic's
name, the record's key and its JSON before the MAC (``StateMac``). A restore
(processors/faust_restore.py: the fast read and Faust's own recovery) takes a run's records in
offset order through ``StateGate.admit``:

* a record without a key, with one past ``MAX_KEY_BYTES`` (refused before it is hashed), or
  on a partition other than its key's (murmur2) is never the run's: not taken, and the run's
  partition is not changed by it (a record moved the run to a partition a later rebalance
  took away, and the worker forgot it);
* a record whose MAC holds and whose seq is not below what the run holds: taken;
* a record whose MAC does not hold (forged, another run's or another deployment's record, or
  written by a worker without the key), or an older record of the run written again (its seq
  below what the run holds): not taken, the run keeps what it held (on Tansu, which never
  compacts, that is the workers' own newest record);
* a deletion (a record without a value, which carries no MAC): taken only when the run holds
  a tombstone that is due (``tombstone_retention_s`` after its last event or its eviction:
  the sweep forgets nothing else); the run then holds a ``FLOOR`` mark for the rest of the
  restore, so an older record of its forgotten life is not taken (a new life's records are
  newer: their seq starts at their start's millisecond); the restore drops the marks at its
  end (``drop_floors``);
* a record not taken when the run holds nothing (a forged first record, or on a compacted
  changelog the only one left): the run is **refused**, held as a ``REFUSED`` mark naming the
  record (``state_of`` raises it: the run's events are ``state_unreadable`` dead letters,
  never decided as a new run nor on the record) until a record of the workers' follows
  (``baton runs rebuild`` writes one from the audit: cli/runs_refused.py).

Every record not taken is counted and the first five named in the restore's log (``NotTaken``),
but for the worker's own older records read again under what it holds in memory (Faust's
recovery of a partition it kept reads them all). A run this worker holds in memory (a partition
it kept through a rebalance, whose records Faust's recovery reads again, or one the fast read
meets) counts as held: its own older records, or its newest one still in flight, leave it as it
is.

Not covered: a changelog Kafka compacts (not Tansu's) may remove the workers' records that a
forged or older newer one replaced (the older one is then taken), and after a deletion the
run's older records (it comes back as it was then: never less spent than a new run); there,
only the broker's ACLs keep writers out. A worker without a key checks nothing (it warns at
start); workers and restores must share the key, and a new key refuses every run whose newest
record the old one marked (docs/deploy.md); a run a keyed worker and then one without the key
decided (a key rolled in one worker at a time) is restored from the keyed worker's older
record (`baton runs refused` names it OLDER). Two deployments under one key and one app id
take each other's records. A deletion written while the run's partition has a backlog holding
a late event of the run (which would have kept its tombstone) is taken once the tombstone is
due by the restoring worker's clock (the sweep waits for the backlog); a restoring clock
behind the deleting worker's keeps the tombstone (logged). Under at-least-once, a worker that
lost the run's partition and still writes it (for the moments before it learns so) can have
its record taken over the new owner's when its seq is higher (exactly-once fences it).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final

import orjson

from baton.processors.batch_records import MAX_KEY_BYTES
from baton.processors.state import RunState
from baton.processors.state_held import is_held, record_of, record_size
from baton.streams.partitioner import partition_for

__all__ = [
    "FLOOR",
    "REFUSED",
    "NotTaken",
    "RefusedRun",
    "StateGate",
    "StateMac",
    "drop_floors",
    "refusal_of",
    "state_of",
]

#: BLAKE2b's personalisation of the state MAC: never an audit MAC's, a chain hash's or a seal's
PERSON: Final = b"baton-state-mac1"
#: the first byte of a refused run's mark, and of a forgotten run's during a restore (a JSON
#: record starts with ``{``, a held one with 0)
REFUSED: Final = 1
FLOOR: Final = 2
_REFUSED: Final = bytes((REFUSED,))
_FLOOR: Final = bytes((FLOOR,))
_SEQ_BYTES: Final = 8
_HEX: Final = 32
_HEAD: Final = b',"sm":"'
#: how a MACed state record ends: its seq, then its MAC
_TAIL: Final = re.compile(rb',"sq":([0-9]{1,19}),"sm":"([0-9a-f]{32})"\}\Z')
#: an unMACed record's seq (a held record: this process's, read back)
_SEQ: Final = re.compile(rb',"sq":([0-9]{1,19})\}\Z')
#: a tombstone's record is small (counters and its reports' marks): a larger one is none,
#: read without parsing (a flood of deletions must not parse a large run's record each)
_TOMBSTONE_MAX: Final = 64 * 1024


def _context(topic: str, key: bytes) -> bytes:
    name = topic.encode()
    return b"%d:%s%d:%s" % (len(name), name, len(key), key)


def _keyed(key: bytes) -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=_HEX // 2, key=key, person=PERSON)


class StateMac:
    """A worker's state MAC: ``marked`` ends a state record with it."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        self._keyed = _keyed(key)

    def marked(self, topic: str, key: bytes, value: bytes) -> bytes:
        """``value`` (a state's record, ending ``,"sq":N}``) with its MAC as its last member."""
        h = self._keyed.copy()
        h.update(_context(topic, key))
        h.update(value[:-1])
        return b"".join((value[:-1], _HEAD, h.hexdigest().encode(), b'"}'))

    @classmethod
    def of(cls, key: bytes) -> StateMac | None:
        """A worker's MAC under its seal key (None: no key, nothing marked)."""
        return cls(key) if key else None


class RefusedRun(ValueError):
    """A run the restore refused (or is still forgetting): its events are ``state_unreadable``
    (processors/batch.py takes any ValueError so), the sweep leaves it without a word."""


class NotTaken:
    """The records a restore did not take: how many, and the first five named."""

    __slots__ = ("count", "first")
    #: every restore's in this process (the worker's /metrics serves it: on-call's alert)
    total: ClassVar[int] = 0

    def __init__(self) -> None:
        self.count = 0
        self.first: list[str] = []

    def append(self, note: str) -> None:
        self.count += 1
        NotTaken.total += 1
        if len(self.first) < 5:
            self.first.append(note)


class StateGate:
    """What a restore takes of the changelog ``topic`` of ``partitions`` partitions (see the
    module docstring)."""

    __slots__ = ("_clock", "_keyed", "_partitions", "_retention_s", "_topic")

    def __init__(
        self,
        keys: Iterable[bytes],
        topic: str,
        partitions: int,
        tombstone_retention_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keyed = tuple(_keyed(k) for k in dict.fromkeys(keys) if k)
        if not self._keyed:
            raise ValueError("a state gate needs a key")
        self._topic, self._partitions = topic, partitions
        self._retention_s, self._clock = tombstone_retention_s, clock

    def admit(
        self, key: Any, partition: int, value: bytes | None, held: Any, notes: NotTaken, at: str
    ) -> Any:
        """What the run ``key`` holds after its record ``value`` (None: a deletion) at ``at``
        (``partition@offset``) on ``partition``, given what it held before (``held``: None, a
        record, a held or marked one, or a RunState). ``held`` itself (the same object) when
        the record is not taken: nothing of the run changes, its partition neither."""
        if type(key) is not bytes or not 0 < len(key) <= MAX_KEY_BYTES:  # (before any hash)
            notes.append(f"{at}: a key no run has")
            return held
        if partition_for(key, self._partitions) != partition:
            notes.append(f"{at}: not on its key's partition")
            return held
        if value is None:
            if held is None or _is_mark(held):
                return held
            if self._due_tombstone(held):
                return _FLOOR + _seq_of(held).to_bytes(_SEQ_BYTES, "big")
            notes.append(f"{at}: a deletion of a run that is no tombstone due to be forgotten")
            return held
        new = self._marked_seq(key, value)
        if new is None:
            notes.append(f"{at}: no workers' state MAC")
            return _REFUSED + _seq(-1) + at.encode() if held is None else held
        seq = _seq_of(held)
        if new < seq:
            if type(held) is bytes and not is_held(held):  # (the worker's own older records,
                # read again under what it holds in memory, are no news: h46b G3)
                notes.append(f"{at}: an older record written again (seq {new} after {seq})")
            return held
        return value

    def newer(self, value: bytes | None, held: Any) -> bool:
        """Whether a fast read's last word on a run (``value``: a record it took, a mark, or
        None) is to replace what this worker holds of it in memory (``held``)."""
        if held is None:
            return True
        if value is None or _is_mark(value):
            return False  # a run held here is no forged first record, nor due to be forgotten
        return _seq_of(value) >= _seq_of(held)

    def _marked_seq(self, key: bytes, value: bytes) -> int | None:
        """The seq of the record ``value`` of run ``key`` when a workers' MAC ends it, else
        None."""
        found = _TAIL.search(value, max(len(value) - 80, 0))
        if found is None:
            return None
        said, at = found.group(2), found.start(2) - len(_HEAD)
        context = _context(self._topic, key)
        for keyed in self._keyed:
            h = keyed.copy()
            h.update(context)
            h.update(memoryview(value)[:at])
            if hmac.compare_digest(h.hexdigest().encode(), said):
                return int(found.group(1))
        return None

    def _due_tombstone(self, held: Any) -> bool:
        """Whether what a run holds is its tombstone, due to be forgotten now."""
        if isinstance(held, RunState):
            ev, last = held.evicted_at, held.last_event_at
        else:
            if _is_mark(held) or record_size(held) > _TOMBSTONE_MAX:
                return False
            try:
                record = record_of(held) if is_held(held) else held
                if b'"ev":null' in record:  # a live run's (a tombstone writes no null ev)
                    return False
                doc = orjson.loads(record)
            except (ValueError, orjson.JSONDecodeError):
                return False
            if type(doc) is not dict:
                return False
            ev, last = doc.get("ev"), doc.get("t")
        numbers = (int, float)
        if type(ev) not in numbers or type(last) not in numbers:
            return False
        return bool(self._clock() - max(ev, last) >= self._retention_s)


def drop_floors(data: Any, key_partition: dict[Any, int], keys: Iterable[Any]) -> None:
    """A restore's end: the runs of ``keys`` it holds as forgotten are forgotten."""
    for key in keys:
        value = data.get(key)
        if type(value) is bytes and value[:1] == _FLOOR:
            del data[key]
            key_partition.pop(key, None)


def state_of(key: bytes, raw: bytes) -> RunState:
    """The state of the run ``key`` held as ``raw`` (``RunState.from_record``); a ValueError
    naming the record for a run the restore refused."""
    if raw[:1] == _REFUSED and (why := refusal_of(raw)) is not None:
        raise RefusedRun(f"the restore refused the run: {why}")
    if raw[:1] == _FLOOR:
        raise RefusedRun("the run is being restored: its tombstone is forgotten at the end")
    return RunState.from_record(key, raw)


def refusal_of(value: bytes) -> str | None:
    """Why the run held as ``value`` is refused (None: ``value`` is no refusal mark)."""
    if value[:1] != _REFUSED or len(value) <= 1 + _SEQ_BYTES:
        return None
    at = value[1 + _SEQ_BYTES :].decode("ascii", "replace")
    return (
        f"its changelog record at {at} does not carry the workers' state MAC and no record of "
        "theirs comes before it (forged, written by a worker without their seal key, or "
        "theirs compacted away); `baton runs rebuild` rebuilds it from the audit"
    )


def _is_mark(held: Any) -> bool:
    """Whether what a run holds is a restore's mark (refused, or forgotten)."""
    return type(held) is bytes and held[:1] in (_REFUSED, _FLOOR)


def _seq(seq: int) -> bytes:
    return max(seq, 0).to_bytes(_SEQ_BYTES, "big")


def _seq_of(held: Any) -> int:
    """The seq of what a run holds (-1: nothing, or a record without one); never raises."""
    if held is None:
        return -1
    if isinstance(held, RunState):
        return held.seq  # type: ignore[no-any-return]
    if _is_mark(held):
        return int.from_bytes(held[1 : 1 + _SEQ_BYTES], "big")
    try:
        record = record_of(held) if is_held(held) else held
    except ValueError:
        return -1
    found = _TAIL.search(record, max(len(record) - 80, 0)) or _SEQ.search(
        record, max(len(record) - 30, 0)
    )
    return int(found.group(1)) if found is not None else -1
