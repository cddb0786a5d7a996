"""Decoded runs' kept replies in the worker's spill file: the same records and decisions,
readable as long as a state holds them, bounded, and a lost read never answered from."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from baton.processors import state_spill
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.faust_adapter import RunStore
from baton.processors.state import RunState
from baton.processors.state_spill import SpilledBundle, SpillLostError
from baton.streams.partitioner import partition_for
from tests.helpers import handoff
from tests.unit.test_engine_support import completed, policy_with

pytestmark = pytest.mark.unit

PARTITIONS = 4
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TOPIC = "gov.handoff.requests"


@pytest.fixture(autouse=True)
def _no_spill_after() -> Iterator[None]:
    yield
    state_spill.disable()


def _record(run: str, offset: int, event: Any) -> InputRecord:
    key = run.encode()
    return InputRecord(TOPIC, partition_for(key, PARTITIONS), offset, key, event.to_json())


def _long_run(run: str, offset: int = 0) -> list[InputRecord]:
    """Three handoffs and their completions (six kept replies), then the first handoff
    redelivered at a new offset and the third retried: both answered from the kept ones."""
    events: list[Any] = []
    for n, (task, parent) in enumerate((("t1", None), ("t2", "t1"), ("t3", "t1")), start=1):
        at = NOW + timedelta(seconds=2 * n)
        events.append(handoff(run, n, task, parent=parent, tenant="default", event_time=at))
        done = completed(f"{run}-h{n}", task, "researcher", 0.25, run_id=run)
        events.append(done)
    events += [events[0], events[4]]
    return [_record(run, offset + i, e) for i, e in enumerate(events)]


class _Worker:
    def __init__(self) -> None:
        self.data: dict[bytes, Any] = {}
        table = SimpleNamespace(data=SimpleNamespace(data=self.data, _key_partition={}))
        self.states = RunStore(table, PARTITIONS)
        self.proc = BatchProcessor(policy_with(), PARTITIONS, self.states, "w-1", chain_key=b"k")

    def decide(self, records: list[InputRecord]) -> tuple[list[bytes], dict[bytes, bytes]]:
        out = self.proc.process(records, NOW)
        assert not out.dead_letters, out.dead_letters[:1]
        return [d.to_json() for _, d in out.decisions], dict(out.encoded)


def _one_by_one(records: list[InputRecord]) -> tuple[_Worker, list[Any]]:
    """Each record its own batch (each a write of the run), as a worker at low rates."""
    w = _Worker()
    return w, [w.decide([r]) for r in records]


def test_a_spilled_run_writes_and_answers_the_same_bytes_and_holds_a_small_handle(
    tmp_path: Path,
) -> None:
    records = _long_run("run_a") + _long_run("run_b", 100)
    plain, packed = _one_by_one(records)
    spill = state_spill.configure(tmp_path)
    w, spilled = _one_by_one(records)
    assert spilled == packed  # every decision and every changelog record, byte for byte
    state = w.data[b"run_a"]
    bundle = state.recent[1]
    assert type(bundle) is SpilledBundle and len(bundle) <= 32  # a ~1 KB packed bundle before
    assert all(state.recent[i] is bundle for i in range(1, len(state.recent), 2))
    for key in state.recent_keys():
        assert [d.to_json() for d in state.replies(key) or []] == [
            d.to_json() for d in plain.data[b"run_a"].replies(key) or []
        ]
    # six writes a run (its two repeats change nothing), one segment holding a bundle a run
    assert spill.written == 12 and [h for _, h, _ in spill.segments.values()] == [2]


def test_a_held_and_returning_run_reads_its_bundle_and_frees_its_place(tmp_path: Path) -> None:
    spill = state_spill.configure(tmp_path, segment_bytes=4096)
    w, _ = _one_by_one(_long_run("run_a"))
    held = spill.segments[spill._current][1]
    assert held == 1  # the run's one bundle; the ones it replaced were freed at each write
    record = w.data[b"run_a"].to_bytes()
    w.states.hold_encoded(b"run_a")  # the sweep holds it idle: its bundle read, then freed
    gc.collect()
    assert sum(h for _, h, _ in spill.segments.values()) == 0
    assert w.states[b"run_a"].to_bytes() == record  # decoded again on its next read


def test_a_segment_closes_when_no_state_holds_a_bundle_in_it(tmp_path: Path) -> None:
    spill = state_spill.configure(tmp_path, segment_bytes=4096)
    w, _ = _one_by_one(_long_run("run_a") + _long_run("run_b", 100))
    # 4 KB segments: a long run's six writes (0.5 to 3 KB each) filled several; only the
    # ones a state's bundle is in are open, the current one aside
    assert spill.written == 12 and len(spill.segments) <= 3
    assert all(held == 1 for s, (_, held, _) in spill.segments.items() if s != spill._current)
    before = spill.open_bytes
    w.data.clear()  # the runs left the table (a revoked partition, an eviction)
    gc.collect()
    assert list(spill.segments) == [spill._current] and spill.open_bytes <= before
    assert len(spill._free) <= 2  # files kept to be written again, the rest closed


def test_a_state_put_back_keeps_its_bundle_readable_after_the_newer_one_is_gone(
    tmp_path: Path,
) -> None:
    """The batch step puts a run back as it was before an over-budget batch: the older
    state's bundle must still read, though a newer write replaced it in the table."""
    state_spill.configure(tmp_path, segment_bytes=2048)
    records = _long_run("run_a")
    w, _ = _one_by_one(records[:4])
    older = w.data[b"run_a"]
    expected = older.to_bytes()
    assert type(older.recent[1]) is SpilledBundle
    w.decide([records[4]])
    w.decide([records[5]])  # writes past the segment: the older bundle's one is not written
    assert w.data[b"run_a"].recent[1] is not older.recent[1]
    del w.data[b"run_a"]
    gc.collect()
    assert older.to_bytes() == expected


def test_past_its_bound_the_spill_packs_bundles_in_memory_with_the_same_records(
    tmp_path: Path,
) -> None:
    records = _long_run("run_a") + _long_run("run_b", 100)
    _, packed = _one_by_one(records)
    spill = state_spill.configure(tmp_path, segment_bytes=4096, max_bytes=4096)  # one file
    w, bounded = _one_by_one(records)
    assert bounded == packed
    # the first writes filled the one file; the rest found no room: packed in memory
    assert 0 < spill.written < 12 and spill.open_bytes <= 4096
    assert type(w.data[b"run_b"].recent[1]) is bytes


def test_a_failed_write_stops_the_spill_and_packs_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = _long_run("run_a") + _long_run("run_b", 100)
    _, packed = _one_by_one(records)
    # 4 KB segments: the first is written when the second begins, and the disk refuses it
    spill = state_spill.configure(tmp_path, segment_bytes=4096)

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_spill, "_pwrite", full)
    w, failed = _one_by_one(records)
    assert failed == packed and spill.failed is not None  # the bundles it held still read
    assert type(w.data[b"run_b"].recent[1]) is bytes  # packed in memory since


def test_a_bundle_that_cannot_be_read_back_is_never_answered_from(tmp_path: Path) -> None:
    spill = state_spill.configure(tmp_path)
    records = _long_run("run_a")
    w, _ = _one_by_one(records[:6])
    spill._flush()  # (the bytes a segment is still gathering are in memory, not the file)
    for fd, _held, _size in spill.segments.values():
        os.ftruncate(fd, 0)  # the file lost under the worker (a disk error)
    with pytest.raises(SpillLostError, match="not a bundle"):
        w.data[b"run_a"].replies("h:run_a-h1")
    out = w.proc.process([records[6]], NOW)  # the redelivery: its answer is in the bundle
    assert not out.decisions  # never an answer made up: the record's dead letter at most


def test_the_worker_ends_uncommitted_when_a_bundle_is_lost(tmp_path: Path) -> None:
    """`baton worker`'s hook: exit 77 at once (a restart restores from the changelog)."""
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from baton.cli.worker_cmd import _spill_lost
        from baton.processors import state_spill
        spill = state_spill.configure(Path({str(tmp_path)!r}), lost=_spill_lost)
        handle = spill.put(bytes((1, 1, 0, 0, 2)), b"[[]]")
        assert state_spill.read(handle) == b"[[]]"
        spill._flush()
        os.ftruncate(next(iter(spill.segments.values()))[0], 0)
        state_spill.read(handle)
        print("answered")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 77, done.stderr[-2000:]
    assert "answered" not in done.stdout
    assert "cannot be read back" in done.stderr


def test_the_worker_spills_unless_the_setting_says_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from baton.cli.worker_cmd import spill_replies
    from baton.schemas.settings import Settings

    monkeypatch.setenv("BATON_WORKER_DATA_DIR", str(tmp_path))
    spill_replies(Settings())  # on by default
    spill = state_spill.active()
    assert spill is not None and spill.directory == tmp_path / "spill"
    state_spill.disable()
    monkeypatch.setenv("BATON_SPILL_REPLIES", "0")
    spill_replies(Settings())
    assert state_spill.active() is None


def test_without_a_spill_bundles_stay_packed_in_memory() -> None:
    w, _ = _one_by_one(_long_run("run_a")[:2])
    assert type(w.data[b"run_a"].recent[1]) is bytes
    assert isinstance(RunState.from_bytes(w.data[b"run_a"].to_bytes()), RunState)
