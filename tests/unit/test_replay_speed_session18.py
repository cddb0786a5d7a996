"""Session 18's replay cuts (H3) give the answers they replaced, in either build.

- ``replay_report.new_change`` makes a Change without its frozen dataclass's __init__ (a
  Python frame from compiled code): the same object, frozen still, and it goes through a
  pool's pickled report alike.
- ``state_compact.compact_digest`` answers the digest it just made bytes from those bytes
  (replay's second decide of a step remembers the very digest of the first).
- The verdicts these cuts (and the chain content written from a decision's fields, the
  input read as text, the steps cut field by field) could move stay put: a history forged
  in a field they read (a time one microsecond off, an input's bytes, a step's offset) is
  unfaithful, never faithful, as before; the history as recorded is faithful.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from baton.processors.replay import Recorded, replay_runs, runs_of
from baton.processors.replay_report import Change, ReplayReport, new_change
from baton.processors.state_compact import compact_digest
from tests.unit.test_engine_support import policy_with
from tests.unit.test_replay import KEY, _budget_history, _policies, record

pytestmark = pytest.mark.unit

WHEN = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)


def test_a_change_made_without_its_init_is_the_dataclass_one() -> None:
    made = new_change(3, WHEN, None, "a -> b task t", "allow", "stop:handoff_budget_exceeded")
    built = Change(3, WHEN, None, "a -> b task t", "allow", "stop:handoff_budget_exceeded")
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    assert type(made) is Change
    with pytest.raises(AttributeError):  # frozen (FrozenInstanceError is one)
        made.step = 4  # type: ignore[misc]


def test_a_pooled_report_brings_its_first_changes_back() -> None:
    loose, strict = policy_with(max_handoffs=20), policy_with(max_handoffs=3)
    rows = record(loose, _budget_history("run_long", 6, 2.5))
    report = replay_runs(runs_of(rows), strict, _policies(loose), KEY)
    [run] = report.changed_runs
    back: ReplayReport = pickle.loads(pickle.dumps(report))  # as a --jobs process sends it
    assert back.runs[0].first_change == run.first_change
    assert type(back.runs[0].first_change) is Change


def test_the_digest_just_compacted_is_answered_with_the_same_bytes() -> None:
    digest = "0123456789abcdef"
    first = compact_digest(digest)
    assert first == bytes.fromhex(digest)
    assert compact_digest(digest) is first
    equal = "".join(list(digest))  # another object, the same text: made again, alike
    assert equal is not digest and compact_digest(equal) == first
    assert compact_digest("0123456789ABCDEF") == "0123456789ABCDEF"  # kept as text
    assert compact_digest("0123456789abcdeX") == "0123456789abcdeX"
    assert compact_digest(digest) == first


def _one_microsecond_later(rec: Recorded) -> Recorded:
    return rec._replace(decided_at=rec.decided_at + timedelta(microseconds=1))


def _input_spaced(rec: Recorded) -> Recorded:
    assert rec.input is not None
    return rec._replace(input=rec.input.replace(",", ", ", 1))  # the same event, other bytes


def _input_renamed(rec: Recorded) -> Recorded:
    assert rec.input is not None
    return rec._replace(input=rec.input.replace('"researcher"', '"r\\u00e9searcher"'))


def _offset_moved(rec: Recorded) -> Recorded:
    assert rec.offset is not None
    return rec._replace(offset=rec.offset + 1000)


@pytest.mark.parametrize(
    "forge", [_one_microsecond_later, _input_spaced, _input_renamed, _offset_moved]
)
def test_a_row_forged_where_the_cuts_read_is_unfaithful_as_before(
    forge: Callable[[Recorded], Recorded],
) -> None:
    loose, strict = policy_with(max_handoffs=20), policy_with(max_handoffs=3)
    rows = record(loose, _budget_history("run_a", 5, 2.5))
    as_recorded = replay_runs(runs_of(rows), strict, _policies(loose), KEY)
    assert as_recorded.unfaithful_runs == [] and not as_recorded.partial
    at = next(i for i, r in enumerate(rows) if r.input and '"run_a-h2"' in r.input)
    forged = [forge(r) if i == at else r for i, r in enumerate(rows)]
    assert forged != rows
    report = replay_runs(runs_of(forged), strict, _policies(loose), KEY)
    assert [r.run_id for r in report.unfaithful_runs] == ["run_a"]
    assert not report.partial
