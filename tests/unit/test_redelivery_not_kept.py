"""A record Kafka delivers again after its run has moved on: its answer is out, so nothing more.

A worker killed between writing a batch's states and committing its offsets (Faust commits
every ``BATON_COMMIT_INTERVAL_S``) leaves its successor to read those records again, against
states that already remember them. A run keeps its newest six replies: a redelivered handoff
older than that was answered ``stop reply_not_kept``, a second answer contradicting its
``allow`` in the decisions topic, the stop topic and the audit (CI at b7d4158,
tests/faults/test_worker_failover.py); past the 512 keys a run remembers it was decided anew
and counted again. A run's state now holds the newest position it read on each topic
(``RunState.read_*``, processors/batch_routing.py): a record at or below it is a redelivery.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime

import orjson
import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.batch_routing import read_before, value_digest
from baton.processors.batch_stats import BatchStats
from baton.processors.engine import decide
from baton.processors.metrics import WorkerMetrics
from baton.processors.state import RECENT_REPLIES, SEEN_LIMIT, RunState
from baton.processors.state_row_checks import NO_DIGEST
from baton.schemas.decision import Outcome, Reason
from baton.schemas.events import ApprovalGranted, HandoffCompleted
from baton.schemas.policy import load_policy
from tests.helpers import handoff
from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit

TOPIC, APPROVALS = "gov.handoff.requests", "gov.approvals"
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
RUN = "run_r"


def _handoff(n: int, offset: int) -> InputRecord:
    ev = handoff(RUN, n, f"t{n}", event_time=NOW)
    return InputRecord(TOPIC, 0, offset, RUN.encode(), ev.to_json())


def _report(n: int, offset: int, usd: float = 0.5) -> InputRecord:
    ev = HandoffCompleted(
        request_id=f"{RUN}-h{n}", run_id=RUN, task_id=f"t{n}", agent="researcher",
        cost_usd=usd, tool_calls=1, event_time=NOW,
    )  # fmt: skip
    return InputRecord(TOPIC, 0, offset, RUN.encode(), ev.to_json())


def _grant(n: int, offset: int) -> InputRecord:
    """A grant of an approval the run never asked for (refused ``unknown_approval``, kept)."""
    ev = ApprovalGranted(approval_id=f"apr_{n}", run_id=RUN, approver="oncall", event_time=NOW)
    return InputRecord(APPROVALS, 0, offset, RUN.encode(), ev.to_json())


def _proc(exactly_once: bool = False, **kw: object) -> tuple[BatchProcessor, dict[bytes, RunState]]:
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(
        load_policy(None), 1, states, worker="w", exactly_once=exactly_once,
        approvals_topic=APPROVALS, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return proc, states


def _history(exactly_once: bool) -> tuple[BatchProcessor, dict[bytes, RunState], list[InputRecord]]:
    """Handoffs 1..8 of one run, each with its report: 16 records at offsets 100..115."""
    proc, states = _proc(exactly_once)
    records = [r for n in range(1, 9) for r in (_handoff(n, 98 + 2 * n), _report(n, 99 + 2 * n))]
    out = proc.process(records, NOW)
    assert [d.outcome for _, d in out.decisions[::2]] == [Outcome.ALLOW] * 8
    return proc, states, records


@pytest.mark.parametrize("exactly_once", [False, True])
@pytest.mark.parametrize("restored", [False, True], ids=["held", "restored"])
def test_a_redelivered_record_whose_decision_is_gone_gets_no_second_answer(
    exactly_once: bool, restored: bool
) -> None:
    proc, states, records = _history(exactly_once)
    if restored:  # the successor's view: the state read back from its changelog record
        states[RUN.encode()] = RunState.from_bytes(states[RUN.encode()].to_bytes())
    before = states[RUN.encode()].to_bytes()
    old = records[: 2 * 8 - RECENT_REPLIES]  # their decisions no longer kept
    out = proc.process(old, NOW)
    assert out.decisions == [] and out.dead_letters == [] and not out.changed
    assert proc.redelivered == len(old)
    state = states[RUN.encode()]
    assert state.to_bytes() == before  # nothing counted again: handoffs, spend, tool calls
    assert (state.handoff_count, state.spent_usd, state.tool_calls) == (8, 4.0, 8)
    assert (state.read_partition, state.read_requests, state.read_approvals) == (0, 115, -1)


def test_a_redelivered_record_still_kept_is_re_emitted_under_at_least_once() -> None:
    proc, _, records = _history(exactly_once=False)
    out = proc.process([records[-1]], NOW)
    [(_, d)] = out.decisions
    assert d.reemitted and d.offset == records[-1].offset and proc.redelivered == 0


def test_a_client_retry_of_a_request_no_longer_kept_is_still_answered_with_a_stop() -> None:
    # a retry is a new record, past every position the run read: answered, never silently
    proc, states, _ = _history(exactly_once=False)
    out = proc.process([_handoff(1, 200), _report(2, 201)], NOW)
    assert [(d.outcome, d.reason) for _, d in out.decisions] == [
        (Outcome.STOP, Reason.REPLY_NOT_KEPT),
        (Outcome.RECORDED, Reason.REPLY_NOT_KEPT),
    ]
    assert proc.redelivered == 0 and states[RUN.encode()].spent_usd == 4.0


def test_a_report_redelivered_past_the_keys_a_run_remembers_is_not_counted_again() -> None:
    # 600 reports before the commit: the first ones' keys left the 512 remembered, and read
    # again they were decided anew, their cost counted twice
    proc, states = _proc()
    reports = [_report(n, n, usd=0.01) for n in range(600)]
    proc.process(reports, NOW)
    state = states[RUN.encode()]
    spent, calls = state.spent_usd, state.tool_calls
    assert calls == 600 and not state.has_seen(f"c:{RUN}-h0")
    out = proc.process(reports[: 600 - SEEN_LIMIT], NOW)
    assert out.decisions == [] and proc.redelivered == 600 - SEEN_LIMIT
    assert (states[RUN.encode()].spent_usd, states[RUN.encode()].tool_calls) == (spent, calls)


def test_records_of_each_topic_are_compared_with_that_topics_positions() -> None:
    # the approvals topic's offsets are its own: a grant at offset 3 is not below the
    # requests topic's 115. Grants the run's memory lost are not answered again either,
    # nor a handoff whose six kept decisions are all grants' refusals
    proc, states, records = _history(exactly_once=False)
    grants = [_grant(n, n) for n in range(1, 8)]
    answered = proc.process(grants, NOW).decisions
    assert [d.reason for _, d in answered] == [Reason.UNKNOWN_APPROVAL] * 7
    state = states[RUN.encode()]
    assert (state.read_partition, state.read_requests, state.read_approvals) == (0, 115, 7)
    out = proc.process([grants[0], records[-2]], NOW)  # both older than the six kept
    assert out.decisions == [] and proc.redelivered == 2
    [(_, d)] = proc.process([_grant(1, 8)], NOW).decisions  # a copy: a new record
    assert d.reason == Reason.REPLY_NOT_KEPT


def test_positions_survive_the_changelog_and_a_tombstone_and_a_forged_one_is_refused() -> None:
    _, states, _ = _history(exactly_once=False)
    state = states[RUN.encode()]
    assert RunState.from_bytes(state.to_bytes()).read_requests == 115
    tomb = state.tombstone(NOW.timestamp())
    assert RunState.from_bytes(tomb.to_bytes()).read_requests == 115
    wire = orjson.loads(state.to_bytes())
    assert wire["rd"] == [0, 115, -1]
    forged_ones = ([0, 2**63, -1], [-1, 5, 5], [0, True, 5], [0, 1.0, 5], [0, 5], "0:5", [0, -2, 5])
    for forged in forged_ones:
        with pytest.raises(ValueError, match="run state key rd"):
            RunState.from_bytes(orjson.dumps({**wire, "rd": forged}))


def test_a_run_rebuilt_without_positions_answers_a_retry_below_its_kept_decisions() -> None:
    # `baton up` on a fresh embedded broker rebuilds runs by replay (the engine: no
    # positions) and the topic's offsets begin at 0 again: a client's retry there is
    # answered, never taken for a redelivery of the old topic's records
    policy = policy_with()
    state = None
    for n in range(1, 9):
        ev = handoff(RUN, n, f"t{n}", event_time=NOW)
        state, _ = decide(state, ev, policy, NOW)
    assert state is not None and state.read_partition == -1
    proc, states = _proc()
    states[RUN.encode()] = state
    [(_, d)] = proc.process([_handoff(1, 0)], NOW).decisions
    assert (d.outcome, d.reason) == (Outcome.STOP, Reason.REPLY_NOT_KEPT)


def test_a_redelivery_in_a_batch_decided_again_for_its_budget_is_counted_once() -> None:
    proc, states, records = _history(exactly_once=False)
    big = [
        InputRecord(
            TOPIC,
            0,
            300 + n,
            RUN.encode(),
            handoff(RUN, 100 + n, "x" * 240 + str(n), event_time=NOW).to_json(),
        )
        for n in range(12)
    ]
    proc.run_state_max_bytes = len(states[RUN.encode()].to_bytes()) + 1500
    out = proc.process([records[0], *big], NOW)
    assert any(d.reason == Reason.RUN_STATE_LIMIT for _, d in out.decisions)
    assert proc.redelivered == 1


def test_records_answered_before_are_a_metric_and_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    proc, _, records = _history(exactly_once=False)
    proc.process(records[:3], NOW)
    metrics = WorkerMetrics("w1")
    metrics.set_state({}, 1, 1, "p", proc.redelivered)
    got = {s.name: s.value for f in metrics.collect() for s in f.samples}
    assert got["baton_redelivered_total"] == 3
    stats = BatchStats("w1", every_s=0.0)
    with caplog.at_level(logging.INFO, logger="baton.processors.app"):
        stats.add(3, 0.001, 0.001, proc.redelivered)
        stats.add(1, 0.001, 0.001, proc.redelivered)  # none new: no second line
    said = [r.getMessage() for r in caplog.records if "read again" in r.getMessage()]
    assert said == [
        "worker w1: 3 records read again were answered before (their decisions are out), "
        "not answered again"
    ]


def test_a_kept_answer_of_an_earlier_record_is_not_the_position_read() -> None:
    # the state's own positions decide, not a kept decision's: a redelivery with its kept
    # decision re-emitted leaves them as they were
    proc, states, records = _history(exactly_once=False)
    proc.process([replace(records[-1])], NOW)
    assert states[RUN.encode()].read_requests == 115


def test_a_position_past_the_log_end_is_stale_and_the_records_below_it_are_answered() -> None:
    # the requests topic deleted and made again (or truncated, or mirrored) while the runs'
    # changelog was kept: the run's position 115 is past the new log's end (6), so its new
    # records at offsets 0.. are answered, not taken for redeliveries of the old log's
    proc, states, _ = _history(exactly_once=False)
    ends = {(TOPIC, 0): 6}
    proc.log_end = lambda topic, partition: ends.get((topic, partition), -1)
    out = proc.process([_handoff(9, 0), _report(9, 1)], NOW)
    assert [(d.outcome, d.reason) for _, d in out.decisions] == [
        (Outcome.STOP, Reason.HANDOFF_BUDGET_EXCEEDED),  # the run's ninth handoff
        (Outcome.RECORDED, Reason.WITHIN_BUDGET),
    ]
    assert proc.redelivered == 0 and states[RUN.encode()].read_requests == 1  # the new log's
    # a client's retry there of a request decided on the old log: answered as not kept
    [(_, d)] = proc.process([_handoff(1, 2)], NOW).decisions
    assert (d.outcome, d.reason) == (Outcome.STOP, Reason.REPLY_NOT_KEPT)
    # and a record read again on the new log (below its end) is a redelivery again
    state = states[RUN.encode()]
    assert read_before(state, _report(9, 1), False, proc.log_end)
    assert not read_before(state, _report(9, 2), False, proc.log_end)


def test_a_position_below_the_log_end_is_trusted() -> None:
    proc, _, records = _history(exactly_once=False)
    proc.log_end = lambda topic, partition: 116
    assert proc.process(records[:4], NOW).decisions == [] and proc.redelivered == 4


def test_the_workers_log_end_is_its_consumers_high_watermark_or_unknown() -> None:
    from types import SimpleNamespace

    from baton.processors.progress import log_end

    seen: list[object] = []

    def highwater(tp: object) -> int | None:
        seen.append(tp)
        return {0: 42, 1: None}[tp.partition]  # type: ignore[attr-defined]

    app = SimpleNamespace(consumer=SimpleNamespace(highwater=highwater))
    assert log_end(app, TOPIC, 0) == 42  # type: ignore[arg-type]
    assert log_end(app, TOPIC, 1) == -1  # type: ignore[arg-type]  # not fetched yet
    assert log_end(app, TOPIC, 2) == -1  # type: ignore[arg-type]  # KeyError: not assigned
    assert [(tp.topic, tp.partition) for tp in seen] == [(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)]  # type: ignore[attr-defined]


def test_a_misplaced_event_forwarded_again_after_a_kill_is_known_by_its_first_position() -> None:
    from baton.streams.partitioner import partition_for

    run = next(f"run_{i}" for i in range(100) if partition_for(f"run_{i}".encode(), 2) == 1)
    key = run.encode()
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(load_policy(None), 2, states, worker="w", approvals_topic=APPROVALS)
    offsets = iter(range(100, 10_000))

    def forwarded(value: bytes) -> tuple[InputRecord, InputRecord]:
        misplaced = InputRecord(TOPIC, 0, next(offsets), key, value)
        first, again = (proc.process([misplaced], NOW).forwards[0] for _ in range(2))
        return tuple(  # type: ignore[return-value]
            InputRecord(TOPIC, 1, next(offsets), key, f.value, f.headers) for f in (first, again)
        )

    def at_home(value: bytes) -> InputRecord:
        return InputRecord(TOPIC, 1, next(offsets), key, value)

    # a handoff, then seven more: its decision no longer kept when the second copy comes
    first, again = forwarded(handoff(run, 1, "t1", event_time=NOW).to_json())
    [(_, d)] = proc.process([first], NOW).decisions
    assert d.outcome == Outcome.ALLOW
    proc.process(
        [at_home(handoff(run, n, f"t{n}", event_time=NOW).to_json()) for n in range(2, 9)], NOW
    )
    assert proc.process([again], NOW).decisions == [] and proc.redelivered == 1
    # a report, then 600 more: its key past the 512 remembered (decided anew: counted twice)
    report = HandoffCompleted(
        request_id=f"{run}-x", run_id=run, task_id="t1", agent="researcher", cost_usd=5.0,
        tool_calls=1, event_time=NOW,
    )  # fmt: skip
    first, again = forwarded(report.to_json())
    proc.process([first], NOW)
    others = [
        report.model_copy(update={"request_id": f"{run}-r{n}", "cost_usd": 0.01})
        for n in range(600)
    ]
    proc.process([at_home(r.to_json()) for r in others], NOW)
    spent = states[key].spent_usd
    assert proc.process([again], NOW).decisions == [] and states[key].spent_usd == spent
    assert states[key].forwarded[:3] == (0, 0, 100)  # the handoff's first position


def test_a_forwarded_position_is_matched_exactly_and_a_forged_header_passes_for_no_other() -> None:
    proc, states, _ = _history(exactly_once=False)
    header = [("baton-forwarded-from", f"{TOPIC}/1/500".encode())]
    forged = InputRecord(TOPIC, 0, 300, RUN.encode(), _handoff(20, 0).value, header)
    proc.process([forged], NOW)  # noted, exactly: (requests, partition 1, offset 500, bytes)
    assert states[RUN.encode()].forwarded == (0, 1, 500, value_digest(forged.value))
    # another record naming another position, or none, past the run's position: answered
    for headers in ([("baton-forwarded-from", f"{TOPIC}/1/501".encode())], None):
        [(_, d)] = proc.process(
            [InputRecord(TOPIC, 0, 301, RUN.encode(), _handoff(1, 0).value, headers)], NOW
        ).decisions
        assert d.reason == Reason.REPLY_NOT_KEPT
    # another event forwarded from that position (the header was forged ahead of it, H1,
    # session 36: it was taken for a redelivery, no decision): decided
    [(_, d)] = proc.process(
        [InputRecord(TOPIC, 0, 302, RUN.encode(), _handoff(2, 0).value, header)], NOW
    ).decisions
    assert d.reason == Reason.REPLY_NOT_KEPT and proc.redelivered == 0
    # the same bytes forwarded again: its reply, kept, again (the run's older replies past
    # the kept ones are nothing: test_a_misplaced_event_forwarded_again_after_a_kill_...)
    again = InputRecord(TOPIC, 0, 303, RUN.encode(), forged.value, header)
    [(_, d)] = proc.process([again], NOW).decisions
    assert d.reemitted and proc.redelivered == 0
    # the run keeps the newest eight; a header of another topic or shape is no position
    for n in range(12):
        h = [("baton-forwarded-from", f"{TOPIC}/1/{600 + n}".encode())]
        proc.process(
            [InputRecord(TOPIC, 0, 310 + n, RUN.encode(), _handoff(30 + n, 0).value, h)], NOW
        )
    kept = states[RUN.encode()].forwarded
    assert len(kept) == 32 and kept[-2] == 611 and kept[2] == 604
    for bad in (
        b"gov.approvals/1/611",
        b"x/1/611",
        f"{TOPIC}/1/6x1".encode(),
        b"",
        f"{TOPIC}/-1/5".encode(),
    ):
        rec = InputRecord(
            TOPIC, 0, 400, RUN.encode(), _handoff(30, 0).value, [("baton-forwarded-from", bad)]
        )
        assert proc.process([rec], NOW).decisions, bad
    raw = states[RUN.encode()].to_bytes()
    assert RunState.from_bytes(raw).forwarded == kept
    wire = orjson.loads(raw)
    forged_rows: object
    for forged_rows in (
        [[2, 1, 5]],
        [[0, 1, -1]],
        [[0, 1]],
        [[0, 1, 5, -3]],
        [[0, 1, 5, 2**63]],
        [[0, 1, 5, 7, 9]],
        [[0, 1, 5]] * 9,
        "x",
    ):
        with pytest.raises(ValueError, match="run state key fw"):
            RunState.from_bytes(orjson.dumps({**wire, "fw": forged_rows}))
    # a row written before digests (three fields) reads back matching any bytes, as it did
    legacy = RunState.from_bytes(orjson.dumps({**wire, "fw": [[0, 1, 5]]}))
    assert legacy.forwarded == (0, 1, 5, NO_DIGEST)
    assert orjson.loads(legacy.to_bytes())["fw"] == [[0, 1, 5]]


def test_a_forged_forward_header_ahead_of_a_misplaced_report_does_not_swallow_it() -> None:
    """H1, session 36: a $0 report sent to the run's own partition with a header naming the
    position the next misplaced record would take (a partition's end: predictable); the
    client's $100 report landed there, was forwarded, and was taken for a redelivery: no
    decision, no dead letter, its spend never counted, the next handoff allowed."""
    from baton.streams.partitioner import partition_for

    run = next(f"run_{i}" for i in range(100) if partition_for(f"run_{i}".encode(), 2) == 1)
    key = run.encode()
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(load_policy(None), 2, states, worker="w", approvals_topic=APPROVALS)

    def report(n: int, usd: float) -> bytes:
        return HandoffCompleted(
            request_id=f"{run}-c{n}", run_id=run, task_id="t1", agent="researcher",
            cost_usd=usd, tool_calls=0, event_time=NOW,
        ).to_json()  # fmt: skip

    proc.process(
        [InputRecord(TOPIC, 1, 10, key, handoff(run, 1, "t1", event_time=NOW).to_json())], NOW
    )
    ahead = [("baton-forwarded-from", f"{TOPIC}/0/77".encode())]
    proc.process([InputRecord(TOPIC, 1, 11, key, report(0, 0.0), ahead)], NOW)
    (forward,) = proc.process([InputRecord(TOPIC, 0, 77, key, report(1, 100.0))], NOW).forwards
    assert forward.headers[-1] == ahead[0]  # the position the forged header named
    [(_, d)] = proc.process(
        [InputRecord(TOPIC, 1, 12, key, forward.value, forward.headers)], NOW
    ).decisions
    assert d.request_id == f"{run}-c1" and proc.redelivered == 0
    assert states[key].spent_usd == 100.0


def test_a_header_position_past_kafkas_ranges_is_not_noted_and_the_state_reads_back() -> None:
    # a forged baton-forwarded-from on a record of the run's own partition naming partition
    # 9,999,999,999 (past int32) was noted and written: the run's state no longer read back,
    # its events refused state_unreadable at the next restore
    proc, states, _ = _history(exactly_once=False)
    for n, where in enumerate((f"{TOPIC}/9999999999/5", f"{TOPIC}/1/9999999999999999999")):
        headers = [("baton-forwarded-from", where.encode())]
        rec = InputRecord(TOPIC, 0, 300 + n, RUN.encode(), _handoff(20 + n, 0).value, headers)
        assert proc.process([rec], NOW).decisions
    state = states[RUN.encode()]
    assert state.forwarded == ()
    assert RunState.from_bytes(state.to_bytes()).read_requests == 301
