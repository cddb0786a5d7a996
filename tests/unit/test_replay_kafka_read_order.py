"""`baton replay --from-kafka` decides each partition in offset order, the order a worker read
it, at the partition's clock (the running maximum of its stamps), the partitions merged by
clock (processors/replay_read_order.py). Issue 14's open risks: a writer of the requests
topic made any run "partial" with one record stamped early at a later offset, its change
hidden, exit 0 (F4); a trimmed partition's window was measured on each record's own stamp
(F5); a record stamped past --to amid a run left a gap in its history (F6). Without Kafka:
the topics through the stand-in Consumer of tests/unit/test_attacks_session17_replay_kafka.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.cli.replay_cmds import _exit
from baton.cli.replay_kafka import decide_topics, replay_decided, replay_from_kafka
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.replay import ReplayReport
from baton.processors.replay_read_order import read_order
from baton.schemas.errors import ReplayFailed
from baton.schemas.events import RunEvent
from baton.schemas.settings import Settings
from tests.unit.test_attacks_session17_replay_kafka import _trimmed_topics
from tests.unit.test_engine_support import at, granted, handoff, policy_with

pytestmark = pytest.mark.unit

REQUESTS, APPROVALS, CONTROL = "gov.handoff.requests", "gov.approvals", "gov.control"
BASELINE = policy_with(max_handoffs=20)
STRICTER = policy_with(max_handoffs=2)  # stops a run's third handoff


def _ms(seconds: float) -> int:
    return int(at(seconds).timestamp() * 1000)


def _request(run: str, n: int, offset: int, seconds: float, topic: str = REQUESTS, **kw):
    event = handoff(f"{run}-h{n}", f"t{n}", "planner", "researcher", run_id=run, **kw)
    return _ms(seconds), topic, InputRecord(topic, 0, offset, run.encode(), event.to_json())


def _dead_letter(run: str, offset: int, seconds: float, topic: str = REQUESTS):
    """A record a writer of the topic appends under a run's key: no event at all."""
    return _ms(seconds), topic, InputRecord(topic, 0, offset, run.encode(), b"not an event")


def _exit_code(report: ReplayReport) -> int:
    """What `baton replay` exits with for ``report``."""
    try:
        _exit(report)
    except SystemExit as done:
        return int(done.code or 0)
    except ReplayFailed as failed:
        return failed.exit_code
    raise AssertionError("replay's _exit returned")


def test_a_record_stamped_early_at_a_later_offset_hides_no_change() -> None:
    """F4: a writer of the requests topic appends one record under run ra's key (a dead
    letter) stamped before ra's records. The run was partial ("out of stamp order", shown as
    trimmed), so the stricter policy's stop of its third handoff was hidden and the gate
    passed, exit 0. The worker read that record last: the run is decided as it was, and the
    change is shown, exit 1."""
    records = [_request("ra", n, n, 10 * (n + 1)) for n in range(3)]
    records.append(_dead_letter("ra", 3, 0))
    report = replay_decided(decide_topics(records, BASELINE, 1, APPROVALS, CONTROL), STRICTER)
    assert not report.partial and [r.run_id for r in report.changed_runs] == ["ra"]
    assert _exit_code(report) == 1


def test_a_dead_letter_stamped_past_any_time_under_a_runs_key_hides_no_change() -> None:
    """The same record stamped 10**15 ms (past 2200) made its key's run partial ("when it
    was decided is unknown"), exit 0. A record that is no event decides nothing, whenever
    it was read: the run is replayed, its change shown."""
    records = [_request("ra", n, n, 10 * (n + 1)) for n in range(3)]
    stamped_ahead = _dead_letter("ra", 3, 0)
    records.append((10**15, *stamped_ahead[1:]))
    report = replay_decided(decide_topics(records, BASELINE, 1, APPROVALS, CONTROL), STRICTER)
    assert not report.partial and [r.run_id for r in report.changed_runs] == ["ra"]
    assert _exit_code(report) == 1


def _held(records: list[tuple[int, int, RunEvent]]) -> dict[str, list]:
    return {REQUESTS: records}


class _NoEvent:
    """A record under ``run_id``'s key whose bytes are no event (for the stand-in Consumer)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def to_json(self) -> bytes:
        return b"not an event"


def test_a_record_stamped_before_since_at_a_later_offset_does_not_begin_its_run_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """F4 with --since: the same record stamped before the range made its run "begun
    before the range" (partial, exit 0); it is read after the run's records, in the range."""
    events = [handoff(f"ra-h{n}", f"t{n}", "p", "r", run_id="ra") for n in range(3)]
    held = [(n, _ms(100 + n), event) for n, event in enumerate(events)]
    held.append((3, _ms(0), _NoEvent("ra")))
    _trimmed_topics(monkeypatch, _held(held))
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1)
    report, _ = replay_from_kafka(settings, STRICTER, BASELINE, at(50), None)
    assert not report.partial and [r.run_id for r in report.changed_runs] == ["ra"]
    assert _exit_code(report) == 1


def test_a_trimmed_partitions_window_is_measured_on_its_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """F5: a partition whose start retention deleted makes partial the runs read within
    run_retention_s of its first record. Each record was measured by its own stamp: a
    record under run rb's key stamped at the partition's start, appended two hours later,
    made rb partial, and its seventh handoff's stop under max_handoffs 6 was hidden (exit
    0). Measured on the partition's clock, it is read two hours in: rb is replayed."""
    first = _ms(0)
    held: list[tuple[int, int, object]] = [
        (100 + n, first + n * 1000, handoff(f"ra-h{n}", f"t{n}", "p", "r", run_id="ra"))
        for n in range(4, 7)
    ]
    late = first + 2 * 3600 * 1000
    held += [
        (200 + n, late + n, handoff(f"rb-h{n}", f"t{n}", "p", "r", run_id="rb")) for n in range(7)
    ]
    held.append((300, first, _NoEvent("rb")))
    _trimmed_topics(monkeypatch, _held(held))
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1, run_retention_s=3600)
    report, _ = replay_from_kafka(settings, policy_with(max_handoffs=6), BASELINE, None, None)
    assert "ra" in report.partial and "rb" not in report.partial, report.partial
    assert [r.run_id for r in report.changed_runs] == ["rb"]


def test_a_trimmed_partitions_window_starts_at_its_first_stamp_within_the_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """F5: a trimmed partition whose first record read is stamped 10**15 ms (a writer of the
    topic, before retention deleted what came before it): the window ran from that stamp,
    every run of the partition was partial and rb's change hidden (exit 0). That stamp
    moves no clock: the window starts at the first stamp within the bounds (ra's)."""
    first = _ms(0)
    held: list[tuple[int, int, object]] = [(99, 10**15, _NoEvent("zz"))]
    held += [
        (100 + n, first + n * 1000, handoff(f"ra-h{n}", f"t{n}", "p", "r", run_id="ra"))
        for n in range(4, 7)
    ]
    late = first + 2 * 3600 * 1000
    held += [
        (200 + n, late + n, handoff(f"rb-h{n}", f"t{n}", "p", "r", run_id="rb")) for n in range(7)
    ]
    _trimmed_topics(monkeypatch, _held(held))
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1, run_retention_s=3600)
    report, _ = replay_from_kafka(settings, policy_with(max_handoffs=6), BASELINE, None, None)
    assert "ra" in report.partial and "rb" not in report.partial, report.partial
    assert [r.run_id for r in report.changed_runs] == ["rb"]
    assert _exit_code(report) == 1


def test_a_record_stamped_past_until_amid_a_run_ends_its_history_in_the_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """F6: a run's second of three handoffs stamped past --to was dropped and the third
    replayed on a history without it (a gap: the third decided as the run's second). The
    range ends at the first record read past --to: the run's history in it is its first
    handoff alone. (The third is stamped within 60 s of --to: one stamped earlier, which
    the worker read in the range, makes the run broken: test_replay_kafka_read_late.py.)"""
    events = [handoff(f"ra-h{n}", f"t{n}", "p", "r", run_id="ra") for n in range(3)]
    held = [(0, _ms(10), events[0]), (1, _ms(200), events[1]), (2, _ms(50), events[2])]
    _trimmed_topics(monkeypatch, _held(held))
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1)
    report, _ = replay_from_kafka(settings, policy_with(max_handoffs=1), BASELINE, None, at(100))
    assert [(r.run_id, r.decisions) for r in report.runs] == [("ra", 1)]
    assert not report.changed_runs and not report.partial


def test_a_record_stamped_ahead_of_the_read_does_not_carry_its_partition_past_until(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stamp ahead of the read's start moves no partition's clock: a record stamped a
    year ahead amid the partition put every record after it past --to (run rb's change
    never replayed) and after the control records read later. Its own run cannot be
    decided: broken, exit 7."""
    held: list[tuple[int, int, object]] = [
        (0, _ms(10), handoff("rz-h0", "t0", "p", "r", run_id="rz")),
    ]
    held[0] = (0, _ms(10 + 365 * 86_400 * 3), held[0][2])  # three years past the test clock
    held += [
        (1 + n, _ms(20 + n), handoff(f"rb-h{n}", f"t{n}", "p", "r", run_id="rb")) for n in range(3)
    ]
    _trimmed_topics(monkeypatch, _held(held))
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1)
    report, _ = replay_from_kafka(settings, STRICTER, BASELINE, None, at(100))
    assert [r.run_id for r in report.changed_runs] == ["rb"]
    assert report.broken == ["rz"] and "when it was read is unknown" in report.partial["rz"]
    assert _exit_code(report) == 7


def test_a_grant_read_after_its_request_is_decided_after_it_though_stamped_before() -> None:
    """Two topics interleave by their partitions' clocks: the approvals partition read a
    record stamped 40 s before ra's grant, stamped 5 s (an approver's clock behind). The
    worker read the grant after the request it answers (at 20 s); by stamp it came first,
    its run was partial and the stricter policy's stop of ra's third handoff hidden.
    Read at its partition's clock (40 s), the grant answers the request."""
    gated = policy_with(max_handoffs=20, require_approval_for=["billing.refund.create"])
    stricter = policy_with(max_handoffs=2, require_approval_for=["billing.refund.create"])
    h0, h1, h2 = (
        _request("ra", 0, 0, 1),
        _request("ra", 1, 1, 20, action="billing.refund.create"),
        _request("ra", 2, 2, 50),
    )
    worker = BatchProcessor(gated, 1, {}, "w", approvals_topic=APPROVALS)
    asked = [worker.process([rec], at(0)).decisions for _, _, rec in (h0, h1)][-1][0][1]
    assert asked.outcome == "approval_required" and asked.approval_id
    grant = granted(asked.approval_id, "oncall_amy", run_id="ra", t=5)
    answer = (_ms(5), APPROVALS, InputRecord(APPROVALS, 0, 1, b"ra", grant.to_json()))
    records = [h0, h1, h2, _dead_letter("rb", 0, 40, APPROVALS), answer]
    decided = decide_topics(records, gated, 1, APPROVALS, CONTROL)
    assert [f"{r.outcome}" for r in decided.rows if r.run_id == "ra"] == [
        "allow",
        "approval_required",
        "allow",  # the grant: the refund handoff allowed
        "allow",
    ]
    report = replay_decided(decided, stricter)
    assert not report.partial and [r.run_id for r in report.changed_runs] == ["ra"]


def test_the_control_topic_is_read_in_its_offset_order_too() -> None:
    """The control follower reads gov.control in offset order: a kill (signed at 40 s,
    stamped 100 s) then its release (signed and stamped 50 s). By stamp the release came
    first and lifted nothing, the kill held from 100 s, and the worker's allowed handoff at
    110 s was replayed as a kill stop "as recorded" (a policy stopping it: no change). On
    the partition's clock both are read at 100 s, the kill then its release."""
    from baton.schemas.events import KillSwitch, KillSwitchReleased

    kill = KillSwitch(scope="run", run_id="ra", operator="ops", event_time=at(40))
    release = KillSwitchReleased(scope="run", run_id="ra", operator="ops", event_time=at(50))
    records = [
        (_ms(100), CONTROL, InputRecord(CONTROL, 0, 0, None, kill.to_json())),
        (_ms(50), CONTROL, InputRecord(CONTROL, 0, 1, None, release.to_json())),
        _request("ra", 0, 0, 110),
    ]
    rows = decide_topics(records, BASELINE, 1, APPROVALS, CONTROL).rows
    assert [f"{r.outcome}:{r.reason}" for r in rows] == ["allow:ok"]


_STAMPS = st.lists(
    st.tuples(st.sampled_from([(REQUESTS, 0), (REQUESTS, 1), (APPROVALS, 0)]), st.integers(-5, 50)),
    max_size=30,
)


@given(_STAMPS)
def test_each_partition_is_read_in_offset_order_and_the_merge_never_goes_back(
    stamped: list[tuple[tuple[str, int], int]],
) -> None:
    offsets: dict[tuple[str, int], int] = {}
    records = []
    for (topic, partition), stamp in stamped:
        offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
        records.append((stamp, topic, InputRecord(topic, partition, offset, b"r", b"")))
    read = list(read_order(records[::-1], 40))  # in any order given
    assert len(read) == len(records)
    assert [r.at for r in read] == sorted(r.at for r in read)
    for where in offsets:
        mine = [r for r in read if (r.topic, r.record.partition) == where]
        assert [r.record.offset for r in mine] == list(range(len(mine)))
        top = -1
        for r in mine:  # each at its partition's clock: the running maximum in [-1, 40)
            stamp = next(s for s, t, rec in records if rec is r.record)
            assert r.stamped == (-1 <= stamp < 40)
            top = max(top, stamp) if r.stamped else top
            assert r.at == top
