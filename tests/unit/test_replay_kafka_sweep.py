"""`baton replay --from-kafka --redecide` runs the worker's sweep on the records' clock
(processors/replay_sweep.py): a run idle for its run retention is a tombstone (its late
handoff stopped ``run_expired``, as the worker stopped it), a tombstone is forgotten its
tombstone retention after the run's last event (the run id a new run's: session 19 H3's
break, test_attacks_session19_replay_kafka.py), and a run that keeps knocking keeps its
tombstone. The read before ``--since`` forgets such a run too (cli/replay_kafka_kept.py).
Without Kafka: the stand-in Consumer of tests/unit/test_attacks_session17_replay_kafka.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.cli.replay_kafka import decide_topics, replay_from_kafka
from baton.processors.batch import InputRecord
from baton.schemas.settings import Settings
from tests.unit.test_attacks_session17_replay_kafka import _trimmed_topics
from tests.unit.test_engine_support import at, finished, handoff
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

#: the workers' retentions in these tests: evicted after 1 h idle, forgotten 2 h later
SETTINGS = Settings(
    bootstrap="127.0.0.1:1", partitions=1, run_retention_s=3600, tombstone_retention_s=7200
)
RETENTION = (SETTINGS.run_retention_s, SETTINGS.tombstone_retention_s)


def _h(run: str, n: int, seconds: float) -> tuple[int, int, object]:
    return (n, _ms(seconds), handoff(f"{run}-h{n}", f"t{n}", "p", "r", run_id=run))


def test_a_handoff_after_the_run_idled_past_its_retention_is_stopped_run_expired() -> None:
    """ra's two handoffs at 0 and 1 s, its third at 4000 s: the worker's sweep had made ra a
    tombstone at 3601 s and stopped the third run_expired. The batch step alone allowed it
    (no sweep: every run kept for good)."""
    records = [_request("ra", n, n, s) for n, s in enumerate((0, 1, 4000))]
    rows = decide_topics(records, BASELINE, 1, APPROVALS, CONTROL, retention=RETENTION).rows
    assert [(r.outcome, r.reason) for r in rows] == [
        ("allow", "ok"),
        ("allow", "ok"),
        ("stop", "run_expired"),
    ]


def test_within_its_retention_the_run_is_decided_live() -> None:
    """The same third handoff at 3500 s: ra is not due, allowed."""
    records = [_request("ra", n, n, s) for n, s in enumerate((0, 1, 3500))]
    rows = decide_topics(records, BASELINE, 1, APPROVALS, CONTROL, retention=RETENTION).rows
    assert [r.outcome for r in rows] == ["allow"] * 3


@pytest.mark.parametrize("since", [None, 12000])
def test_a_run_that_knocks_on_its_tombstone_keeps_it(
    monkeypatch: pytest.MonkeyPatch, since: float | None
) -> None:
    """ra finished at 0 s (a tombstone from 3600 s, forgotten at 10800 s if nothing came),
    a handoff of it at 9000 s (stopped: the tombstone is counted from it on, to 16200 s),
    three more at 14000-14002 s: still the tombstone's, stopped under either policy. Taken
    as a new run (forgotten at 10800 s), the stricter policy's stop of the third would be a
    change that never was."""
    held = [(0, _ms(0), finished(run_id="ra")), _h("ra", 1, 9000)]
    held += [_h("ra", 2 + n, 14000 + n) for n in range(3)]
    held[2:] = [(2 + n, stamp, event) for n, (_, stamp, event) in enumerate(held[2:])]
    held.append((5, _ms(14010), handoff("rb-h0", "t0", "p", "r", run_id="rb")))
    _trimmed_topics(monkeypatch, {REQUESTS: held})
    report, _ = replay_from_kafka(
        SETTINGS, STRICTER, BASELINE, None if since is None else at(since), None
    )
    assert not report.changed_runs, [r.run_id for r in report.changed_runs]
    assert _exit_code(report) == 0


@pytest.mark.parametrize("neighbour", [False, True])
def test_a_run_forgotten_before_the_range_and_begun_again_shows_its_change(
    monkeypatch: pytest.MonkeyPatch, neighbour: bool
) -> None:
    """ra finished at 0 s, forgotten at 10800 s; its id used again at 12000 and 12001 s
    (before --since 15000 s) and at 15500 s (in the range): a new run whose third handoff
    the stricter policy stops, a change (exit 1). With ``neighbour`` (rb's request at
    5000 s on the same partition), ra was first dropped idle before the range, as begun
    before it, and must be taken back as a new run at 12000 s."""
    held = [(0, _ms(0), finished(run_id="ra"))]
    if neighbour:
        held.append((0, _ms(5000), handoff("rb-h0", "t0", "p", "r", run_id="rb")))
    held += [_h("ra", n, s) for n, s in enumerate((12000, 12001, 15500))]
    held = [(offset, stamp, event) for offset, (_, stamp, event) in enumerate(held)]
    _trimmed_topics(monkeypatch, {REQUESTS: held})
    report, _ = replay_from_kafka(SETTINGS, STRICTER, BASELINE, at(15000), None)
    assert "ra" not in report.partial, report.partial
    assert [r.run_id for r in report.changed_runs] == ["ra"]
    assert _exit_code(report) == 1


def test_a_run_evicted_but_not_forgotten_before_the_range_stays_begun_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ra finished at 0 s, its id used again at 9000 s (the tombstone's: stopped) and in the
    range at 15500 s: not forgotten (counted from 9000 s): still partial, never decided as
    a new run."""
    held = [(0, _ms(0), finished(run_id="ra")), _h("ra", 1, 9000), _h("ra", 2, 15500)]
    held.append((3, _ms(15600), handoff("rb-h0", "t0", "p", "r", run_id="rb")))
    held = [(offset, stamp, event) for offset, (_, stamp, event) in enumerate(held)]
    _trimmed_topics(monkeypatch, {REQUESTS: held})
    report, _ = replay_from_kafka(SETTINGS, STRICTER, BASELINE, at(15000), None)
    assert "ra" in report.partial and not report.changed_runs


def _worker(records: list, retention: tuple[float, float]) -> list[tuple[str, str, str]]:
    """What a worker decides for ``records`` (one partition, in order): its batch step, and
    its sweep at every whole second of its clock (as the worker's 1 s timer), before the
    records read in that second (those with nothing due skipped: they do nothing)."""
    from datetime import UTC, datetime

    from baton.processors.batch import BatchProcessor
    from baton.processors.engine import NO_KILLS
    from baton.processors.sweep import DueIndex
    from baton.processors.sweep_step import sweep_due

    proc = BatchProcessor(BASELINE, 1, {}, "replay", approvals_topic=APPROVALS)
    due = DueIndex(*retention)
    out: list[tuple[str, str, str]] = []
    swept = records[0][0] // 1000 - 1
    for ms, _, rec in records:
        while swept < ms // 1000:
            # the seconds before the earliest due one sweep nothing (their clock is set again
            # by the next sweep before any run is touched): not swept, the record's is
            nxt = due.earliest()
            swept = ms // 1000 if nxt is None or nxt >= ms // 1000 else max(swept + 1, nxt)
            done = sweep_due(
                proc, due, datetime.fromtimestamp(swept, UTC), active={0}, ready={0},
                kills=NO_KILLS, run_retention_s=retention[0],
                tombstone_retention_s=retention[1], limit=10**9,
            )  # fmt: skip
            out += [(d.run_id, d.outcome, d.reason) for _, d in done.decisions]
        step = proc.process([rec], datetime.fromtimestamp(ms / 1000, UTC))
        for key, (_, state) in step.changed.items():
            due.touch(key, state)
        out += [(d.run_id, d.outcome, d.reason) for _, d in step.decisions if not d.reemitted]
    return out


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["ra", "rb"]), st.sampled_from([0.4, 30, 3599, 3601, 7000])),
        min_size=1,
        max_size=12,
    )
)
def test_the_replay_decides_as_a_worker_sweeping_every_second(steps: list) -> None:
    """Runs ra and rb, each step a handoff (or a finish) some time after the one before
    (around the retentions: evicted at 1 h, forgotten 2 h later): the replay's decisions,
    run by run, are the worker's."""
    retention = (3600.0, 7200.0)
    clock, records = 0.0, []
    for n, (run, gap) in enumerate(steps):
        clock += gap
        event = (
            finished(run_id=run)
            if n % 5 == 4
            else handoff(f"{run}-h{n}", f"t{n}", "p", "r", run_id=run)
        )
        records.append(
            (_ms(clock), REQUESTS, InputRecord(REQUESTS, 0, n, run.encode(), event.to_json()))
        )
    replayed = decide_topics(records, BASELINE, 1, APPROVALS, CONTROL, retention=retention).rows
    for run in ("ra", "rb"):
        mine = [(r.outcome, r.reason) for r in replayed if r.run_id == run]
        worker = [(o, r) for k, o, r in _worker(records, retention) if k == run]
        assert mine == worker, run


def test_the_replays_runs_are_counted_by_the_partition_being_decided() -> None:
    """PartitionRuns: len() is the runs of partition ``at``, kept right through set, pop
    and del (the batch step and the sweep use each)."""
    from baton.processors.replay_sweep import PartitionRuns
    from baton.streams.partitioner import partition_for

    runs = PartitionRuns(4)
    keys = [f"r{n}".encode() for n in range(40)]
    for key in keys:
        runs[key] = object()  # type: ignore[assignment]
        runs[key] = object()  # type: ignore[assignment]  # replaced: counted once
    by_partition = [sum(partition_for(k, 4) == p for k in keys) for p in range(4)]
    assert [len(runs) for runs.at in range(4)] == by_partition
    del runs[keys[0]]
    runs.pop(keys[1])
    runs.pop(b"not-there", None)
    for key in keys[:2]:
        by_partition[partition_for(key, 4)] -= 1
    assert [len(runs) for runs.at in range(4)] == by_partition


def test_a_partition_that_alone_holds_max_runs_stops_a_new_run_as_its_worker_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """max_runs 3: three runs on partition 0, then a fourth there: any worker owning
    partition 0 holds three runs and stops the fourth worker_run_limit; so does the replay."""
    import functools

    from baton.cli import replay_kafka
    from baton.processors.batch import BatchProcessor
    from baton.streams.partitioner import partition_for

    monkeypatch.setattr(
        replay_kafka, "BatchProcessor", functools.partial(BatchProcessor, max_runs=3)
    )
    names = [f"r{n}" for n in range(200) if partition_for(f"r{n}".encode(), 2) == 0][:4]
    records = [
        (
            _ms(n),
            REQUESTS,
            InputRecord(
                REQUESTS,
                0,
                n,
                run.encode(),
                handoff(f"{run}-h0", "t0", "p", "r", run_id=run).to_json(),
            ),
        )
        for n, run in enumerate(names)
    ]
    rows = decide_topics(records, BASELINE, 2, APPROVALS, CONTROL).rows
    assert [r.reason for r in rows] == ["ok", "ok", "ok", "worker_run_limit"]


def test_a_record_read_late_across_the_sweeps_eviction_of_its_run_is_undecidable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ra's handoffs at 100 and 105 s; a writer's record under another key on ra's partition
    stamped 4100 s; ra's third handoff stamped 110 s, read after it at the partition's
    clock, 4100 s. The sweep evicted ra at 3705 s, before that clock, and the replay
    stopped the third run_expired under both policies: the stricter policy's stop (the
    worker read it at ~110 s and allowed it) hidden, exit 0. It is undecidable: exit 7."""
    held = [_h("ra", 0, 100), _h("ra", 1, 105)]
    held.append((2, _ms(4100), handoff("rz-h0", "t0", "p", "r", run_id="rz")))
    held.append((3, _ms(110), handoff("ra-h2", "t2", "p", "r", run_id="ra")))
    held.append((4, _ms(4101), handoff("rb-h0", "t0", "p", "r", run_id="rb")))
    _trimmed_topics(monkeypatch, {REQUESTS: held})
    report, _ = replay_from_kafka(SETTINGS, STRICTER, BASELINE, None, None)
    assert "ra" in report.broken and "sweep" in report.partial["ra"], report.partial
    assert _exit_code(report) == 7


def test_a_stamp_ahead_amid_a_partition_makes_no_run_there_look_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ra's handoffs at 14000 and 14001 s (before --since 15000 s), a writer's record on its
    partition stamped 34002 s (in the range by the clock), ra's third stamped 14003 s read
    at 34002 s: 20,001 s after ra's last record by the clock, past both retentions (10,800
    s). Judged on the clock, ra was forgotten and replayed from its third handoff alone (the
    stricter policy's stop of it hidden); on its own stamp it is 2 s: not a new run."""
    held = [_h("ra", 0, 14000), _h("ra", 1, 14001)]
    held.append((2, _ms(34002), handoff("rz-h0", "t0", "p", "r", run_id="rz")))
    held.append((3, _ms(14003), handoff("ra-h2", "t2", "p", "r", run_id="ra")))
    _trimmed_topics(monkeypatch, {REQUESTS: held})
    report, _ = replay_from_kafka(SETTINGS, STRICTER, BASELINE, at(15000), None)
    assert "ra" in report.partial or "ra" in [r.run_id for r in report.changed_runs]
