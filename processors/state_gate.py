"""Which of the runs' changelog records a worker restores: only its workers', newest last.

Why: a run's budget, stop and dedup marks live in its changelog record, and a worker restores
them from the changelog at every restart and rebalance. Anyone who can write
``<app_id>-runs-changelog`` (under `baton up`, any local user: the embedded broker has no
ACL) could write a record that gave a stopped run its budget back, or write one of the run's
own older records again (its spend before the last reports), and the next worker to restore
the run decided on it.

What holds: a worker with a seal key (``control_seal.seal_key``: BATON_AUDIT_CHAIN_KEY, else
its data dir's ``seal.key``, as every `baton up` stack has) ends each state record it writes
with its ``seq`` (``RunState.seq``: one more than the state it was copied from) and a MAC
(schemas/record_mac.py, ``STATE_PERSON``): ``...,"sq":12,"sm":"<32 hex>"}``. A restore
(processors/faust_restore.py: the fast read and Faust's own recovery) takes a run's records in
offset order through ``StateGate.admit``:

* a record whose MAC holds and whose seq is not below what the run holds: taken;
* a record whose MAC does not hold (forged, or written by a worker without the key), an older
  record of the run written again (its seq below what the run holds) and a deletion (a record
  without a value) of a run that is not a tombstone (the sweep forgets only tombstones): not
  taken, the run keeps what it held (on Tansu, which never compacts, that is the workers' own
  newest record), and the restore logs it;
* such a record when the run holds nothing (a forged first record, or on a compacted changelog
  the only one left): the run is **refused**, held as a ``REFUSED`` mark that names the record
  (``RunStore`` raises it: the run's events are ``state_unreadable`` dead letters, never
  decided as a new run nor on the record) until a record of the workers' follows.

A run this worker holds in memory (a partition it kept through a rebalance, whose records
Faust's recovery reads again) counts as held: its own older records, or its newest one still
in flight, leave it as it is.

Not covered: a changelog Kafka compacts (not Tansu's) may remove the workers' records that a
forged or older newer one replaced (the older one is then taken), and after a forged deletion
the run's records (it comes back new): there, only the broker's ACLs keep writers out. A
worker without a key checks nothing (it warns at start); workers and restores must share the
key (docs/deploy.md).
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

from baton.processors.state import RunState
from baton.processors.state_held import is_held, record_of
from baton.schemas.record_mac import STATE_FIELD, STATE_PERSON, MacKeys, RecordMac

__all__ = ["REFUSED", "NotTaken", "StateGate", "refusal_of", "state_mac", "state_of"]

#: the first byte of a refused run's mark (a JSON record starts with ``{``, a held one with 0)
REFUSED: Final = 1
_MARK: Final = bytes((REFUSED,))
_SEQ_BYTES: Final = 8
#: how a MACed state record ends: its seq, then its MAC
_TAIL: Final = re.compile(
    rb',"sq":([0-9]{1,19}),"' + STATE_FIELD.encode() + rb'":"[0-9a-f]{32}"\}\Z'
)
#: an unMACed record's seq (a held record: this process's, read back)
_SEQ: Final = re.compile(rb',"sq":([0-9]{1,19})\}\Z')


def state_mac(key: bytes) -> RecordMac | None:
    """What a worker marks its state records with (None: no key, nothing marked)."""
    return RecordMac(key, STATE_PERSON, STATE_FIELD) if key else None


def state_of(key: bytes, raw: bytes) -> RunState:
    """The state of the run ``key`` held as ``raw`` (``RunState.from_record``); a ValueError
    naming the record for a run the restore refused."""
    if raw[:1] == _MARK and (why := refusal_of(raw)) is not None:
        raise ValueError(f"the restore refused the run: {why}")
    return RunState.from_record(key, raw)


def refusal_of(value: bytes) -> str | None:
    """Why the run held as ``value`` is refused (None: ``value`` is no refusal mark)."""
    if value[:1] != _MARK or len(value) <= 1 + _SEQ_BYTES:
        return None
    return value[1 + _SEQ_BYTES :].decode("utf-8", "replace")


class NotTaken:
    """The records a restore did not take: how many, and the first five named."""

    __slots__ = ("count", "first")

    def __init__(self) -> None:
        self.count = 0
        self.first: list[str] = []

    def append(self, note: str) -> None:
        self.count += 1
        if len(self.first) < 5:
            self.first.append(note)


class StateGate:
    """The MAC keys a restore takes state records by (see the module docstring)."""

    __slots__ = ("_keys",)

    def __init__(self, keys: list[bytes]) -> None:
        self._keys = MacKeys(keys, STATE_PERSON, STATE_FIELD, signed=False)
        if not self._keys:
            raise ValueError("a state gate needs a key")

    def admit(self, value: bytes | None, held: Any, where: str, notes: NotTaken) -> Any:
        """What a run holds after its next changelog record ``value`` (None: a deletion), given
        what it held before (``held``: None, a record, a held or refused record, or a
        RunState); ``where`` names the record (``partition@offset``); a record not taken is
        said in ``notes``."""
        if value is None:
            if held is None or _is_refusal(held):
                return held
            if _is_tombstone(held):
                return None
            notes.append(f"{where}: a deletion of a live run (the workers forget only tombstones)")
            return held
        seq = _seq_of(held)
        if not self._keys.holds(value):
            notes.append(f"{where}: no workers' state MAC")
            if held is None:
                return _refused(
                    seq,
                    f"its changelog record at {where} does not carry the workers' state MAC and "
                    "no record of theirs comes before it (forged, written by a worker without "
                    "their seal key, or theirs compacted away)",
                )
            return held
        found = _TAIL.search(value, max(len(value) - 80, 0))
        new = int(found.group(1)) if found is not None else -1
        if new < seq:
            notes.append(f"{where}: an older record written again (seq {new} after {seq})")
            return held
        return value


def _refused(seq: int, why: str) -> bytes:
    return _MARK + max(seq, 0).to_bytes(_SEQ_BYTES, "big") + why.encode()


def _is_refusal(held: Any) -> bool:
    return type(held) is bytes and held[:1] == _MARK


def _seq_of(held: Any) -> int:
    """The seq of what a run holds (-1: nothing, or a record without one)."""
    if held is None:
        return -1
    if isinstance(held, RunState):
        return held.seq  # type: ignore[no-any-return]
    if held[:1] == _MARK:
        return int.from_bytes(held[1 : 1 + _SEQ_BYTES], "big")
    record = record_of(held) if is_held(held) else held
    found = _TAIL.search(record, max(len(record) - 80, 0)) or _SEQ.search(
        record, max(len(record) - 30, 0)
    )
    return int(found.group(1)) if found is not None else -1


def _is_tombstone(held: Any) -> bool:
    """Whether what a run holds is its tombstone (an evicted run's record)."""
    if isinstance(held, RunState):
        return held.evicted_at is not None
    record = record_of(held) if is_held(held) else held
    try:
        doc = orjson.loads(record)
    except orjson.JSONDecodeError:
        return False
    return type(doc) is dict and doc.get("ev") is not None
