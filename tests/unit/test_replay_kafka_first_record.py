"""`baton replay --from-kafka`: a run whose first record the worker decided is not a request
(session 19 H1). A writer of gov.handoff.requests who predicts a run id (the worker does not
choose it) appends a completion under it before the run's first request: the worker decides
it from an empty state and the run goes on from there, but the replay read the run as "begun
before the range" (its first event not a request), partial, never replayed: a stricter
policy's stop of its third handoff hidden, exit 0. Where no record of the run can lie
before what was read, that record is the run's beginning and the run is replayed from it.
Without Kafka: decide_topics, or the stand-in Consumer of
tests/unit/test_attacks_session17_replay_kafka.py.
"""

from __future__ import annotations

import pytest

from baton.cli.replay_kafka import decide_topics, replay_decided, replay_from_kafka
from baton.processors.batch import BatchProcessor, InputRecord
from baton.schemas.settings import Settings
from tests.unit.test_attacks_session17_replay_kafka import _trimmed_topics
from tests.unit.test_engine_support import at, completed, finished, handoff
from tests.unit.test_replay_kafka_read_order import (
    APPROVALS,
    BASELINE,
    CONTROL,
    REQUESTS,
    STRICTER,
    _exit_code,
    _ms,
    _request,
)

pytestmark = pytest.mark.unit

FIRSTS = {
    "completion": completed("ra-h9", "t9", "researcher", cost_usd=1.5, run_id="ra"),
    "finish": finished(run_id="ra"),
}


@pytest.mark.parametrize("first", sorted(FIRSTS))
def test_a_runs_first_record_that_is_no_request_begins_it_as_the_worker_decided(
    first: str,
) -> None:
    """The whole partition is read from offset 0: the record is the run's beginning. The
    replay decides it, and the run after it, exactly as the worker's batch step did."""
    seeded = (_ms(5), REQUESTS, InputRecord(REQUESTS, 0, 0, b"ra", FIRSTS[first].to_json()))
    records = [seeded, *(_request("ra", n, n + 1, 10 + 10 * n) for n in range(3))]
    worker = BatchProcessor(BASELINE, 1, {}, "w", approvals_topic=APPROVALS)
    said = [worker.process([rec], at(0)).decisions for _, _, rec in records]
    decided = decide_topics(records, BASELINE, 1, APPROVALS, CONTROL)
    assert [f"{r.outcome}:{r.reason}" for r in decided.rows] == [
        f"{d.outcome}:{d.reason}" for out in said for _, d in out if not d.reemitted
    ]
    report = replay_decided(decided, STRICTER)
    assert not report.partial and not report.broken, (report.partial, report.broken)
    # a finished run's handoffs are stopped under either policy: nothing changes
    changed = ["ra"] if first == "completion" else []
    assert [r.run_id for r in report.changed_runs] == changed
    assert _exit_code(report) == (1 if changed else 0)


def _ra(first_s: float, offset: int = 1) -> list[tuple[int, int, object]]:
    """A completion of ra at ``first_s``, then ra's three handoffs (the stricter policy stops
    the third), from ``offset``."""
    events = [completed("ra-h9", "t9", "researcher", run_id="ra")]
    events += [handoff(f"ra-h{n}", f"t{n}", "p", "r", run_id="ra") for n in range(3)]
    return [(offset + n, _ms(first_s + n), event) for n, event in enumerate(events)]


def test_a_completion_in_the_range_before_a_runs_first_request_hides_no_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With --since: nothing of ra is read before the range (the topic is read from its
    start), so its completion in the range is its beginning, not a sign it began before."""
    _trimmed_topics(
        monkeypatch,
        {REQUESTS: [(0, _ms(0), handoff("rz-h0", "t0", "p", "r", run_id="rz")), *_ra(100)]},
    )
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1)
    report, _ = replay_from_kafka(settings, STRICTER, BASELINE, at(50), None)
    assert "ra" not in report.partial, report.partial
    assert [r.run_id for r in report.changed_runs] == ["ra"]
    assert _exit_code(report) == 1


def test_a_completion_after_a_trimmed_partitions_window_begins_its_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trimmed partition (its first record read at offset 7): a run first read more than
    run_retention_s after its first record was idle that long if it began in what is gone
    (the worker evicted it: a handoff of it is stopped under either policy), so it is
    replayed from there, as a run whose first record there is a request already was; a
    run read within the window may have begun in what is gone: partial, as before."""
    rz = [(7, _ms(0), completed("rz-h9", "t9", "researcher", run_id="rz"))]
    rz += [
        (8 + n, _ms(1 + n), handoff(f"rz-h{n}", f"t{n}", "p", "r", run_id="rz")) for n in range(3)
    ]
    _trimmed_topics(monkeypatch, {REQUESTS: [*rz, *_ra(7200, offset=20)]})
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1, run_retention_s=3600)
    report, _ = replay_from_kafka(settings, STRICTER, BASELINE, None, None)
    assert "rz" in report.partial and "ra" not in report.partial, report.partial
    assert not report.broken, report.broken
    assert [r.run_id for r in report.changed_runs] == ["ra"]
    assert _exit_code(report) == 1


SEEDS = {
    "request": handoff("ra-x", "tx", "p", "r", run_id="ra"),
    "completion": completed("ra-x", "tx", "researcher", run_id="ra"),
}


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_a_record_seeded_before_since_under_a_predicted_run_id_hides_no_change(
    monkeypatch: pytest.MonkeyPatch, seed: str
) -> None:
    """The same writer appends its record under ra's id before --since (0 s; the range from
    50 s), ra's three handoffs come in the range: the worker decided ra's first from the
    seed's state. ra was "begun before the range", partial, and the stricter policy's stop
    of its handoffs hidden, exit 0. The topic is read from its start, so every record of
    ra is read: ra is replayed from its first record, the seed included."""
    held = {REQUESTS: [(0, _ms(0), SEEDS[seed]), *_ra(100)[1:]]}
    _trimmed_topics(monkeypatch, held)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1)
    report, _ = replay_from_kafka(settings, STRICTER, BASELINE, at(50), None)
    assert not report.partial and not report.broken, (report.partial, report.broken)
    assert [r.run_id for r in report.changed_runs] == ["ra"]
    assert _exit_code(report) == 1


@pytest.mark.parametrize(
    ("stamps", "since"),
    [((0, 7200, 7201, 7202), 5000), ((0, 5000, 5600, 5601), 5500)],
    ids=["idle-before-the-range", "idle-amid-its-records-before-it"],
)
def test_a_run_idle_past_the_run_retention_before_its_records_stays_partial(
    monkeypatch: pytest.MonkeyPatch, stamps: tuple[int, ...], since: int
) -> None:
    """ra's first handoff at 0 s, its next ones more than run_retention_s (3600 s) later,
    before --since or in the range: the worker evicted ra between them and decided the
    later handoffs on its tombstone (stopped under either policy). Replayed from its first
    record (on a live run: the replay evicts nothing), ra showed the stricter policy's stops
    as a change, exit 1. A run idle that long is dropped from what is kept before the range
    (so is it from memory: what is kept is the last run_retention_s): partial, as before."""
    ra = [handoff(f"ra-h{n}", f"t{n}", "p", "r", run_id="ra") for n in range(4)]
    held = [(n, _ms(stamp), event) for n, (stamp, event) in enumerate(zip(stamps, ra, strict=True))]
    held.append((4, _ms(stamps[-1] + 100), handoff("rb-h0", "t0", "p", "r", run_id="rb")))
    _trimmed_topics(monkeypatch, {REQUESTS: held})
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1, run_retention_s=3600)
    report, _ = replay_from_kafka(settings, STRICTER, BASELINE, at(since), None)
    assert "ra" in report.partial and not report.broken, (report.partial, report.broken)
    assert _exit_code(report) == 0
