"""Attacks on the reply spill (session 18, H8): a kept reply is answered as written or not
at all, whatever copies, failed writes and segment ids the spill sees."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from baton.processors import state_spill
from baton.processors.state_spill import SpillLostError

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
