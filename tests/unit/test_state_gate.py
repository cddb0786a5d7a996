"""The state gate: a restore takes only the workers' own newest changelog record of a run
(processors/state_gate.py); h46a's findings each have a test here."""

from __future__ import annotations

import orjson
import pytest

from baton.processors.faust_adapter import RunStore
from baton.processors.state import RunState
from baton.processors.state_gate import NotTaken, StateGate, StateMac, drop_floors, state_of
from baton.processors.state_held import hold
from baton.schemas.record_mac import RecordMac
from baton.streams.partitioner import partition_for

pytestmark = pytest.mark.unit

KEY = b"k" * 32
TOPIC = "baton-runs-changelog"
PARTITIONS = 4
RUN = b"run-1"
HOME = partition_for(RUN, PARTITIONS)
DAY = 86_400.0
MAC = StateMac(KEY)


def _run(spent: float, copies: int = 1, run: str = "run-1", at: float = 1_000.0) -> RunState:
    state = RunState.new(run, "default", at)
    for _ in range(copies):
        state = state.copy()
    state.spent_usd = spent
    return state


def _record(state: RunState, key: bytes = RUN, topic: str = TOPIC) -> bytes:
    return MAC.marked(topic, key, state.to_bytes())


def _gate(now: float = 2_000.0) -> StateGate:
    return StateGate([KEY], TOPIC, PARTITIONS, 30 * DAY, clock=lambda: now)


def _restored(
    *values: bytes | None, held: object = None, now: float = 2_000.0, partition: int = HOME
) -> tuple[object, NotTaken]:
    gate, notes = _gate(now), NotTaken()
    for offset, value in enumerate(values):
        held = gate.admit(RUN, partition, value, held, notes, f"{partition}@{offset}")
    return held, notes


def test_the_workers_records_are_taken_newest_last_and_seq_goes_on_from_them() -> None:
    first, second = _run(1.0), _run(9.0, copies=2)
    held, notes = _restored(_record(first), _record(second))
    assert held == _record(second) and notes.count == 0
    restored = state_of(RUN, held)  # type: ignore[arg-type]
    start = 1_000_000 << 16  # its start's ms << 16
    assert restored.spent_usd == 9.0 and restored.seq == second.seq == start + 2
    assert restored.copy().seq == start + 3  # the next record is newer than every one before


def test_a_forged_record_after_the_workers_is_not_taken() -> None:
    genuine = _record(_run(9.0))
    doc = orjson.loads(genuine)
    doc["usd"], doc["sq"] = 0.0, 99  # the budget given back, a seq far ahead
    unmarked = orjson.dumps({k: v for k, v in doc.items() if k != "sm"})
    wrong_mac = orjson.dumps(doc)
    later = _run(0.0, copies=5)
    other_key = StateMac(b"x" * 32).marked(TOPIC, RUN, later.to_bytes())
    audit_mac = RecordMac(KEY).marked(later.to_bytes())  # the decisions' MAC
    for forged in (
        unmarked, wrong_mac, other_key, audit_mac, b"", b"\x01\x00garbage", b"\x02" * 9,
        genuine + b" ", genuine[:-1] + b',"x":1}',
    ):  # fmt: skip
        held, notes = _restored(genuine, forged)
        assert held is not None and held == genuine, forged
        assert notes.count == 1 and "no workers' state MAC" in notes.first[0]


def test_another_runs_or_another_deployments_record_is_not_taken_h46a_f1() -> None:
    """The MAC covers the changelog's name and the record's key: run A's genuine record
    under B's key, or staging's record of the run under one key, is no record of B's."""
    mine = _record(_run(9.0))
    theirs = _run(0.0, run="run-2", at=5_000.0)  # started later: a higher seq
    for copied in (
        MAC.marked(TOPIC, b"run-2", theirs.to_bytes()),  # A's own, written under B's key
        _record(_run(0.0, copies=9), topic="staging-runs-changelog"),
    ):
        held, notes = _restored(mine, copied)
        assert held == mine and "no workers' state MAC" in notes.first[0]


def test_a_record_off_its_keys_partition_changes_nothing_h46a_f3_f4() -> None:
    """A record of the run on another partition (a copy of its first one, or any bytes) is
    never the run's: not taken, and the run's partition is not moved by it."""
    live = _run(50.0, copies=3)
    elsewhere = (HOME + 1) % PARTITIONS
    for copied in (_record(_run(0.0)), b"{}", None):
        held, notes = _restored(copied, held=live, partition=elsewhere)
        assert held is live and "not on its key's partition" in notes.first[0]
    gate, notes = _gate(), NotTaken()
    assert gate.admit(None, HOME, _record(live), None, notes, "0@0") is None  # no key
    big = b"r" * 2_000_000  # refused before it is hashed (h46b G1: 144 ms and cached a MiB)
    assert gate.admit(big, HOME, b"{}", None, notes, "0@1") is None
    assert notes.first[-2:] == ["0@0: a key no run has", "0@1: a key no run has"]


def test_an_older_record_written_again_is_not_taken_the_same_one_is() -> None:
    old, new = _record(_run(1.0)), _record(_run(9.0, copies=3))
    held, notes = _restored(old, new, old)
    assert held == new and notes.count == 1 and "older record" in notes.first[0]
    assert _restored(old, new, new)[0] == new


def test_a_forged_first_record_refuses_the_run_until_the_workers_write_one() -> None:
    forged = orjson.dumps(orjson.loads(_run(0.0).to_bytes()))  # no MAC
    held, notes = _restored(forged)
    assert isinstance(held, bytes) and len(held) < 20 and notes.count == 1  # (a small mark)
    store = RunStore.__new__(RunStore)
    store._data, store._revived = {RUN: held}, []
    refused = f"the restore refused the run: its changelog record at {HOME}@0 does not carry"
    with pytest.raises(ValueError, match=refused):
        store.get(RUN)
    assert _restored(forged, None)[0] == held  # a deletion does not lift it
    assert _restored(forged, forged)[0] == held
    assert _restored(forged, _record(_run(3.0)))[0] == _record(_run(3.0))


def test_a_deletion_is_taken_only_for_a_tombstone_due_to_be_forgotten_h46a_f2() -> None:
    live = _run(9.0)
    live.stopped = "handoff_budget_exceeded"
    tomb = live.tombstone(1_000.0 + 3_600)  # evicted after an hour idle
    assert tomb.seq == live.seq + 1
    # a deletion of a live run, or of a tombstone not due yet (30 days): not taken
    held, notes = _restored(_record(live), None)
    assert held == _record(live) and "no tombstone due" in notes.first[0]
    for held in (_record(tomb), tomb, hold(tomb.to_bytes())):
        assert _restored(None, held=held, now=1_000.0 + 3_600 + DAY)[0] is held
    # due: the run is forgotten, and an older record of that life is not taken again
    due = 1_000.0 + 3_600 + 31 * DAY
    forgotten, notes = _restored(_record(live), _record(tomb), None, _record(live), now=due)
    assert isinstance(forgotten, bytes) and forgotten[:1] == b"\x02", forgotten
    assert "older record" in notes.first[0]
    for held in (tomb, hold(tomb.to_bytes())):
        assert _restored(None, held=held, now=due)[0][:1] == b"\x02"  # type: ignore[index]
    # ... and the restore's end forgets it; a later life's records are newer
    data, where = {RUN: forgotten, b"other": b"{}"}, {RUN: HOME, b"other": 0}
    drop_floors(data, where, [RUN, b"other"])
    assert data == {b"other": b"{}"} and where == {b"other": 0}
    later = _run(2.0, at=due)
    assert _restored(None, _record(later), held=_record(tomb), now=due)[0] == _record(later)
    assert _restored(None)[0] is None  # nothing held: nothing to delete


def test_a_flood_of_deletions_parses_no_large_record_h46a_f5(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deletion of a run whose record is past 64 KB (no tombstone is) is answered from its
    size, a live run's from its bytes: neither inflated nor parsed (5 ms a deletion were)."""
    from baton.processors import state_gate

    record = _record(_run(9.0))[:-1] + b',"pad":"' + b"x" * 300_000 + b'"}'
    held_big, live = hold(record), _record(_run(9.0))

    def never(*_: object) -> object:
        raise AssertionError("parsed or inflated")

    monkeypatch.setattr(state_gate, "record_of", never)
    monkeypatch.setattr(state_gate.orjson, "loads", never)
    gate, notes = _gate(), NotTaken()
    for held in (record, held_big, live):
        assert gate.admit(RUN, HOME, None, held, notes, "0@0") is held


def test_a_run_held_in_memory_keeps_its_newer_state_over_its_own_older_records() -> None:
    """A partition this worker kept: Faust's recovery reads its own records again, the
    newest maybe still in flight. What it holds (decoded, or held compressed) stays."""
    older, now = _run(1.0), _run(9.0, copies=4)
    for held in (now, hold(now.to_bytes())):
        got, notes = _restored(_record(older), held=held)
        assert got is held and notes.count == 0  # its own records: no news (h46b G3)
    assert _restored(_record(now), held=older)[0] == _record(now)
    gate = _gate()  # a fast read's last word against what the worker holds
    assert not gate.newer(_record(older), now) and gate.newer(_record(now), older)
    assert not gate.newer(b"\x01" + bytes(9), now) and not gate.newer(None, now)
    assert gate.newer(_record(older), None)


def test_a_later_life_of_the_run_id_is_newer_than_every_record_of_the_earlier_one() -> None:
    earlier = RunState.new("run-1", "default", 1_000.0)
    for _ in range(5_000):  # a long earlier life
        earlier = earlier.copy()
    later = RunState.new("run-1", "default", 1_000.0 + 14 * DAY)  # two weeks on
    assert later.seq > earlier.seq
    # a run changed more often than once a millisecond (h46b G2: 3,000 copies in its first
    # second), then forgotten: the next life, an hour on, is still newer
    busy = RunState.new("run-1", "default", 1_000.0)
    for _ in range(3_000):
        busy = busy.copy()
    assert RunState.new("run-1", "default", 1_001.0).seq > busy.seq
    assert RunState.new("r", "t", float("inf")).seq == RunState.new("r", "t", -1.0).seq == 0
    assert RunState.new("r", "t", 9.9e9).seq < 1 << 62  # (seq_checked's bound: year 2286)


def test_the_records_a_worker_writes_end_with_their_seq_and_state_mac() -> None:
    record = _record(_run(9.0, copies=7))
    assert record.endswith(b'"sq":%d,"sm":"%s"}' % ((1_000_000 << 16) + 7, record[-34:-2]))
    tomb = _run(9.0).tombstone(2_000.0)
    assert orjson.loads(_record(tomb))["sq"] == (1_000_000 << 16) + 2
    assert RunState.from_bytes(orjson.dumps({**orjson.loads(_record(tomb)), "sq": 5})).seq == 5
    with pytest.raises(ValueError, match="run state key sq: expected a sequence number"):
        RunState.from_bytes(orjson.dumps({**orjson.loads(_record(tomb)), "sq": "5"}))


def test_a_gate_needs_a_key() -> None:
    with pytest.raises(ValueError, match="needs a key"):
        StateGate([b""], TOPIC, PARTITIONS, DAY)
    assert StateMac.of(b"") is None


def test_the_sweep_leaves_a_refused_run_without_a_log_line_per_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An attacker's forged records for runs no worker has (each refused, and logged in one
    line by the restore) made the sweep log an error with its traceback for each, at every
    re-index; a run whose state does not read otherwise is still logged."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from baton.processors.batch import BatchProcessor
    from baton.processors.engine import NO_KILLS
    from baton.processors.sweep import DueIndex
    from baton.processors.sweep_step import sweep_due
    from baton.schemas.policy import load_policy

    refused, _ = _restored(orjson.dumps({"v": 4}))
    data = {RUN: refused, b"garbage": b"not json"}
    where = {RUN: HOME, b"garbage": partition_for(b"garbage", PARTITIONS)}
    store = RunStore(SimpleNamespace(data=SimpleNamespace(data=data, _key_partition=where)), 4)
    proc = BatchProcessor(load_policy(None), PARTITIONS, store, worker="w", approvals_topic="a")
    due = DueIndex(3600.0, 30 * DAY)
    due.rebuild_keys(list(data), 0.0)
    with caplog.at_level("ERROR", logger="baton.processors.app"):
        out = sweep_due(
            proc, due, datetime.fromtimestamp(10, UTC), active=set(range(4)),
            ready=set(range(4)), kills=NO_KILLS, run_retention_s=3600.0,
            tombstone_retention_s=30 * DAY, limit=100,
        )  # fmt: skip
    assert not out.changed and data[RUN] is refused
    assert [r.getMessage() for r in caplog.records] == [
        "run b'garbage': stored state cannot be read; left as is"
    ]


def test_the_workers_metrics_count_the_records_a_restore_did_not_take() -> None:
    """On-call's signal: anything above 0 is someone else writing the changelog."""
    from baton.processors.metrics import WorkerMetrics

    def served() -> float:
        families = {f.name: f for f in WorkerMetrics("w").collect()}
        return families["baton_restore_records_not_taken"].samples[0].value  # type: ignore[no-any-return]

    before = served()
    _restored(_record(_run(9.0, copies=3)), b"{}", None, _record(_run(1.0)))  # forged, gone, old
    assert served() == before + 3
