"""Attacks on the reply spill (session 18, H8): a kept reply is answered as written or not
at all, whatever copies, failed writes and segment ids the spill sees."""

from __future__ import annotations

import copy
import gc
import itertools
import os
import pickle
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.processors import state_spill
from baton.processors.batch import InputRecord
from baton.processors.state_spill import SpillLostError
from baton.streams.partitioner import partition_for
from tests.helpers import handoff
from tests.unit.test_engine_support import completed
from tests.unit.test_state_spill import NOW, PARTITIONS, TOPIC, _Worker

pytestmark = pytest.mark.unit

HEAD = bytes((1, 1, 0, 0, 10))  # a bundle's head: one entry of 10 bytes


@pytest.fixture(autouse=True)
def _no_spill_after() -> Iterator[None]:
    yield
    state_spill.disable()


def test_a_bundle_stranded_in_the_segment_being_written_still_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk refuses the 64 KB buffer of the segment being written: its bundles are
    held in memory (``_stranded``) and must read from there. Before: read from the emptied
    buffer, 0 bytes, the ``lost`` hook (the worker exited 77 at the next write of any run
    in it, and again after each restart while the disk stayed full)."""
    spill = state_spill.configure(tmp_path)

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_spill, "_pwrite", full)
    json = b"[" + b"x" * 40_000 + b"]"
    first = spill.put(HEAD, json)
    second = spill.put(HEAD, json)  # past the buffer's 64 KB: its write fails
    assert first is not None and second is not None and spill.failed is not None
    assert state_spill.read(first) == json and state_spill.read(second) == json
    assert spill.put(HEAD, json) is None  # packed in memory from now on


def test_a_copy_of_a_handle_is_the_handle_and_a_pickle_is_refused(tmp_path: Path) -> None:
    """Before: ``copy.copy``/``deepcopy``/a pickle round trip made a new handle that
    counted itself out of the segment when freed: the segment closed under the state still
    holding the bundle, and 65,536 segments later its id named another run's bundle, which
    the old handle read as its own (a retry answered with another run's reply)."""
    spill = state_spill.configure(tmp_path, segment_bytes=8)  # a segment a bundle
    mine = b'[["a",[1]]]'
    handle = spill.put(HEAD, mine)
    assert handle is not None
    copies = [copy.copy(handle), copy.deepcopy([handle])[0]]
    del copies  # (a state copied, then freed)
    for _ in range(1 << 16):  # every segment id once more: same size, another run's
        spill.put(HEAD, b'[["b",[2]]]')
    assert state_spill.read(handle) == mine
    assert copy.copy(handle) is handle and copy.deepcopy([handle])[0] is handle
    with pytest.raises(TypeError, match="does not pickle"):
        pickle.dumps(handle)


def test_a_handle_of_a_closed_spill_never_reads_or_frees_a_new_spills_segment(
    tmp_path: Path,
) -> None:
    """A state kept across ``configure`` again (tests, a spill set up twice): its handle
    names a segment of the closed spill. Before: 65,536 segments later the new spill had
    written a segment of that id, and the handle read another run's bundle from it as its
    own, and freeing it counted a bundle out of that segment (closed under its holder)."""
    state_spill.configure(tmp_path / "a", segment_bytes=8)
    old = state_spill.put(HEAD, b'[["a",[1]]]')
    assert old is not None
    spill = state_spill.configure(tmp_path / "b", segment_bytes=8)
    for _ in range((1 << 16) - 1):  # every other segment id once
        spill.put(HEAD, b'[["b",[2]]]')
    new = spill.put(HEAD, b'[["b",[2]]]')  # the old handle's id, unless skipped
    assert new is not None and spill.failed is None
    with pytest.raises(SpillLostError, match="closed"):
        state_spill.read(old)
    before = {s: h for s, (_, h, _) in spill.segments.items()}
    del old
    assert {s: h for s, (_, h, _) in spill.segments.items()} == before
    assert state_spill.read(new) == b'[["b",[2]]]'


def _history(draw: Any) -> list[list[InputRecord]]:
    """Three runs' handoffs, completions, retries and redeliveries, in random batches."""
    events: list[tuple[str, Any]] = []
    steps = {"run_a": 0, "run_b": 0, "run_c": 0}
    open_tasks: dict[str, list[int]] = {run: [] for run in steps}
    actions = st.tuples(st.sampled_from("hhccr"), st.sampled_from(sorted(steps)))
    for i, (kind, run) in enumerate(draw(st.lists(actions, max_size=40))):
        if kind == "h":
            n = steps[run] = steps[run] + 1
            at = NOW + timedelta(seconds=i)
            parent = None if n == 1 else "t1"
            events.append((run, handoff(run, n, f"t{n}", parent=parent, event_time=at)))
            open_tasks[run].append(n)
        elif kind == "c" and open_tasks[run]:
            n = open_tasks[run].pop(0)
            done = completed(f"{run}-h{n}", f"t{n}", "researcher", 0.25, run_id=run)
            events.append((run, done))
        elif kind == "r":  # a client's retry or a redelivery of one of the run's events
            mine = [e for r, e in events if r == run]
            if mine:
                events.append((run, mine[draw(st.integers(0, len(mine) - 1))]))
    records = [
        InputRecord(TOPIC, partition_for(r.encode(), PARTITIONS), i, r.encode(), e.to_json())
        for i, (r, e) in enumerate(events)
    ]
    cuts = sorted(set(draw(st.lists(st.integers(0, len(records)), max_size=12))))
    return [records[a:b] for a, b in itertools.pairwise([0, *cuts, len(records)]) if a < b]


def _run(batches: list[list[InputRecord]], holds: list[int]) -> list[Any]:
    """Every batch's decisions, changelog records and dead letters, the sweep holding the
    runs idle after the batches ``holds`` names, then every run's record."""
    w = _Worker()
    seen: list[Any] = []
    for i, batch in enumerate(batches):
        out = w.proc.process(batch, NOW)
        decisions = [d.to_json() for _, d in out.decisions]
        seen.append((decisions, dict(out.encoded), [repr(x) for x in out.dead_letters]))
        if i in holds:
            for key in list(w.data):
                w.states.hold_encoded(key)
        gc.collect()
    seen.append({k: w.states[k].to_bytes() for k in sorted(w.data)})
    return seen


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.data(),
    segment=st.sampled_from([256, 2048, 1 << 20]),
    bound=st.sampled_from([4096, 1 << 30]),
    refuse_after=st.sampled_from([None, 0, 3, 10]),
    flush=st.sampled_from([1, 64 << 10]),
)
def test_random_histories_write_the_same_bytes_with_and_without_the_spill(
    data: Any,
    segment: int,
    bound: int,
    refuse_after: int | None,
    flush: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The same decisions, records and dead letters as packed in memory, whatever the
    segments, the bound and a disk that fills after ``refuse_after`` writes. Before: with
    the disk refusing the buffer of the segment being written, the next write of a run in
    it lost its bundle (exit 77 in a worker)."""
    batches = _history(data.draw)
    holds = data.draw(st.lists(st.integers(0, 12), max_size=3))
    state_spill.disable()
    packed = _run(batches, holds)
    writes = [0]

    def disk(fd: int, raw: Any, offset: int) -> int:
        writes[0] += 1
        if refuse_after is not None and writes[0] > refuse_after:
            raise OSError(28, "No space left on device")
        return os.pwrite(fd, raw, offset)

    state_spill.configure(tmp_path_factory.mktemp("spill"), segment_bytes=segment, max_bytes=bound)
    state_spill._pwrite, state_spill._FLUSH_BYTES = disk, flush  # type: ignore[misc]
    try:
        assert _run(batches, holds) == packed
    finally:
        state_spill._pwrite, state_spill._FLUSH_BYTES = os.pwrite, 64 << 10  # type: ignore[misc]
        state_spill.disable()
