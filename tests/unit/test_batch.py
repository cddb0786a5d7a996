"""The worker's batch step without Kafka: redelivery vs retry, and every path ending a record."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import orjson
import pytest

from baton.processors.batch import BatchProcessor, InputRecord, Outputs
from baton.processors.recorded import input_text
from baton.processors.state import SEEN_LIMIT, RunState
from baton.schemas.decision import Decision, Outcome, Reason, chain_hash, chain_values
from baton.schemas.events import ApprovalGranted, HandoffCompleted, parse_event
from baton.schemas.policy import load_policy
from baton.streams.partitioner import partition_for
from tests.builds import interpreted_only
from tests.helpers import handoff
from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit


def _record(offset: int) -> InputRecord:
    ev = handoff("run_1", 1, "research")
    return InputRecord("gov.handoff.requests", 0, offset, b"run_1", ev.to_json())


@pytest.mark.parametrize("exactly_once", [False, True])
def test_redelivered_record_and_client_retry(exactly_once: bool) -> None:
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(load_policy(None), 1, states, worker="w", exactly_once=exactly_once)
    now = datetime.now(UTC)
    record = _record(10)
    first = proc.process([record], now)
    [(_, decision)] = first.decisions
    assert first.changed and decision.offset == 10

    again = proc.process([record], now)  # the same record, delivered again by Kafka
    assert not again.changed
    if exactly_once:
        # its decision went out in the transaction that wrote the state: not a second time
        assert again.decisions == [] and proc.redelivered == 1
    else:
        # the design's re-emission: the stored decision, flagged so the audit keeps the
        # original, with the input it answers (here the original's: the same record)
        assert [d for _, d in again.decisions] == [reemitted(decision)]

    sent_again = _record(11)  # the client sent the request again (stamped anew)
    retry = proc.process([sent_again], now)
    answered = reemitted(decision, input_text(parse_event(sent_again.value or b"")))
    assert [d for _, d in retry.decisions] == [answered] and not retry.changed
    assert states[b"run_1"].handoff_count == 1


def reemitted(decision: Decision, input: str | None = None) -> Decision:
    """``decision`` re-emitted for ``input`` (default: a copy of its own record)."""
    return replace(decision, reemitted=True, input=input or decision.input)


def test_published_decision_carries_its_input_and_the_state_does_not() -> None:
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(load_policy(None), 1, states, worker="w")
    rec = _record(10)
    [(_, decision)] = proc.process([rec], datetime.now(UTC)).decisions
    assert decision.input is not None and not decision.reemitted
    assert parse_event(decision.input.encode(), b"run_1") == parse_event(rec.value or b"")
    [stored] = RunState.from_bytes(states[b"run_1"].to_bytes()).replies("h:run_1-h1") or []
    assert stored.input is None and stored.chain_hash == decision.chain_hash is not None
    assert decision.chain_hash == chain_hash(b"", "", chain_values(decision))


# ------------------------------------------------------------------ one record never stops a batch
# Every path of BatchProcessor.process that ends one record: each bad record becomes one dead
# letter with a named error_kind, or one stop with a named reason, and the good records around
# it are decided as if it were not there.

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
TOPIC = "gov.handoff.requests"


def _good(run: str, n: int, task: str = "t", **kw: object) -> InputRecord:
    ev = handoff(run, n, task, event_time=NOW, **kw)
    return InputRecord(TOPIC, partition_for(run.encode(), 4), n, run.encode(), ev.to_json())


def _proc(states: dict[bytes, RunState] | None = None, **kw: object) -> BatchProcessor:
    return BatchProcessor(
        load_policy(None),
        4,
        {} if states is None else states,
        worker="w",
        **kw,  # type: ignore[arg-type]
    )


def _kinds(out: Outputs) -> list[str]:
    return [orjson.loads(dl.value)["error_kind"] for dl in out.dead_letters]


def _sandwich(bad: InputRecord) -> tuple[BatchProcessor, Outputs]:
    """``bad`` between two good handoffs of another run: both must be decided."""
    proc = _proc()
    out = proc.process([_good("run_a", 1), bad, _good("run_a", 2, "u")], NOW)
    assert [d.request_id for _, d in out.decisions] == ["run_a-h1", "run_a-h2"]
    assert all(d.outcome == Outcome.ALLOW for _, d in out.decisions)
    return proc, out


def _raw(run: str = "run_b", **fields: object) -> bytes:
    return handoff(run, 1, "t", event_time=NOW).model_copy(update=fields).to_json()


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        (None, _raw(), "missing_key"),
        (b"run_b", None, "empty"),
        (b"run_b", b"\xff\xfe not json", "not_json"),
        (b"run_b", b"[]", "schema"),
        (b"run_b", b'{"type":"handoff_teleported"}', "unknown_type"),
        (b"run_x", _raw(), "key_mismatch"),
        (b"\xff", _raw(run="\ufffd"), "key_mismatch"),  # a non-UTF-8 key never matches
        (b"run_b", b"{" + b" " * (64 * 1024) + b"}", "oversized"),
        (b"run_b", _raw().replace(b'"run_b-h1"', b'"' + b"r" * 300 + b'"'), "out_of_range"),
        (b"run_b", _raw().replace(b'"event_time":"', b'"event_time":"9'), "schema"),
    ],
)
def test_a_bad_record_is_one_dead_letter_and_the_batch_goes_on(
    key: bytes | None, value: bytes | None, kind: str
) -> None:
    bad = InputRecord(TOPIC, partition_for(b"run_b", 4), 7, key, value)
    _, out = _sandwich(bad)
    assert _kinds(out) == [kind]
    envelope = orjson.loads(out.dead_letters[0].value)
    assert (envelope["topic"], envelope["partition"], envelope["offset"]) == (
        TOPIC,
        bad.partition,
        7,
    )
    assert envelope["error"]


def test_a_key_less_record_is_a_dead_letter_naming_the_fix() -> None:
    _, out = _sandwich(InputRecord(TOPIC, 0, 3, None, _raw()))
    envelope = orjson.loads(out.dead_letters[0].value)
    assert envelope["error_kind"] == "missing_key" and "run_id" in envelope["error"]
    assert envelope["key"] is None and envelope["original"].startswith("{")


def test_a_misplaced_record_is_forwarded_once_then_dead_lettered() -> None:
    home = partition_for(b"run_b", 4)
    elsewhere = (home + 1) % 4
    proc = _proc()
    out = proc.process([InputRecord(TOPIC, elsewhere, 1, b"run_b", _raw())], NOW)
    [fw] = out.forwards
    assert fw.partition == home and not out.decisions
    again = proc.process([InputRecord(TOPIC, elsewhere, 2, b"run_b", _raw(), fw.headers)], NOW)
    assert _kinds(again) == ["misrouted"] and not again.forwards


@interpreted_only("a patch of batch.decide, which the compiled batch.py never reads")
def test_an_engine_failure_is_a_dead_letter_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    import baton.processors.batch as batch

    real = batch.decide

    def flaky(state, event, *a, **kw):  # type: ignore[no-untyped-def]
        if event.run_id == "run_b":
            raise ZeroDivisionError("boom")
        return real(state, event, *a, **kw)

    monkeypatch.setattr(batch, "decide", flaky)
    _, out = _sandwich(_good("run_b", 1))
    assert _kinds(out) == ["engine_error"]
    assert "ZeroDivisionError: boom" in orjson.loads(out.dead_letters[0].value)["error"]


class _Unreadable(dict):  # type: ignore[type-arg]
    """A store whose entry for run_b does not decode (a corrupt changelog record)."""

    def get(self, key, default=None):  # type: ignore[no-untyped-def]
        if key == b"run_b":
            raise ValueError("run state format 99 is not one of [1, 2]")
        return super().get(key, default)


def test_a_state_that_cannot_be_read_refuses_its_runs_events_only() -> None:
    proc = BatchProcessor(load_policy(None), 4, _Unreadable(), worker="w")
    out = proc.process([_good("run_a", 1), _good("run_b", 1), _good("run_a", 2, "u")], NOW)
    assert [d.request_id for _, d in out.decisions] == ["run_a-h1", "run_a-h2"]
    assert _kinds(out) == ["state_unreadable"]  # not decided as a new run: fail closed


def test_a_run_that_would_outgrow_its_state_budget_is_stopped_and_stays_writable() -> None:
    # a policy without limits lets a run take on task after task: each adds to its state
    policy = policy_with(max_handoffs=None, max_agents_per_run=None, max_delegation_depth=None)
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(policy, 4, states, worker="w", run_state_max_bytes=8192)
    names = [f"task-{i:03d}-" + "x" * 200 for i in range(60)]
    records = [_good("run_b", i, names[i], to=f"agent-{i}" + "y" * 200) for i in range(60)]
    out = proc.process([_good("run_a", 1), *records, _good("run_a", 2, "u")], NOW)
    mine = [d for _, d in out.decisions if d.run_id == "run_b"]
    assert len(mine) == 60  # every record decided, none dead-lettered
    reasons = [d.reason for d in mine]
    first_stop = reasons.index(Reason.RUN_STATE_LIMIT)
    assert 0 < first_stop < 60
    assert all(r == Reason.OK for r in reasons[:first_stop])
    assert all(r == Reason.RUN_STATE_LIMIT for r in reasons[first_stop:])
    assert all(d.outcome == Outcome.STOP for d in mine[first_stop:])
    # what is written fits the budget (plus the bounded window of a stopped run)
    assert len(out.encoded[b"run_b"]) <= 8192 + 4096
    assert out.encoded[b"run_b"] == out.changed[b"run_b"][1].to_bytes()  # type: ignore[union-attr]
    assert states[b"run_b"].stopped == Reason.RUN_STATE_LIMIT
    assert states[b"run_b"].handoff_count == first_stop
    # the other run was decided as if run_b were not there
    assert [d.reason for _, d in out.decisions if d.run_id == "run_a"] == [Reason.OK, Reason.OK]
    # and the same events one per batch decide the same way (the slow path is exact)
    one_by_one = BatchProcessor(policy, 4, {}, worker="w", run_state_max_bytes=8192)
    again = [d for r in records for _, d in one_by_one.process([r], NOW).decisions]
    assert [(d.reason, d.detail) for d in again] == [(d.reason, d.detail) for d in mine]
    # the event that stopped it names the size it would have grown to; the later ones, the
    # run already stopped at its budget, are refused without measuring each (one encoding)
    assert "would grow to" in (mine[first_stop].detail or "")
    later = [d.detail or "" for d in mine[first_stop + 1 :]]
    assert later and all("was stopped at its state budget" in text for text in later)


def test_a_run_stopped_at_its_state_budget_replays_as_recorded() -> None:
    """The refusals of a run stopped at its budget, made without measuring each event, are
    what `baton replay` decides again under the recorded policy (chained, same ids)."""
    from baton.processors.recorded import policy_document
    from baton.processors.replay import Recorded, replay_runs, runs_of
    from baton.schemas.policy import Policy

    policy = policy_with(max_handoffs=None, max_agents_per_run=None, max_delegation_depth=None)
    proc = BatchProcessor(policy, 4, {}, worker="w", run_state_max_bytes=8192, chain_key=b"k")
    names = [(f"task-{i:03d}-" + "x" * 200, f"agent-{i}" + "y" * 200) for i in range(120)]
    records = [_good("run_b", i, t, to=a) for i, (t, a) in enumerate(names)]
    published = []
    for b in range(0, 120, 30):  # batches: the stop falls inside one, later ones all refused
        published += [d for _, d in proc.process(records[b : b + 30], NOW).decisions]
    rows = [Recorded.of(d) for d in published if not d.reemitted]
    assert sum(r.reason == Reason.RUN_STATE_LIMIT for r in rows) > 60
    policies = {policy.version: Policy.model_validate_json(policy_document(policy))}
    report = replay_runs(runs_of(rows), policy, policies, b"k")
    assert report.partial == {} and report.runs[0].unfaithful == []
    assert report.runs[0].decisions == len(rows) and report.runs[0].changed == 0


def test_a_worker_full_of_runs_stops_new_runs_without_keeping_them() -> None:
    states: dict[bytes, RunState] = {}
    proc = _proc(states, max_runs=2)
    out = proc.process([_good("run_a", 1), _good("run_b", 1), _good("run_c", 1)], NOW)
    assert [d.reason for _, d in out.decisions] == [Reason.OK, Reason.OK, Reason.WORKER_RUN_LIMIT]
    assert out.decisions[2][1].outcome == Outcome.STOP and b"run_c" not in states
    # runs already held go on
    more = proc.process([_good("run_a", 2, "u")], NOW)
    assert [d.reason for _, d in more.decisions] == [Reason.OK]


def test_a_reused_request_id_with_another_request_is_refused_not_answered_with_the_allow() -> None:
    proc = _proc()
    first = proc.process([_good("run_a", 1, "t", to="researcher")], NOW)
    assert first.decisions[0][1].outcome == Outcome.ALLOW
    forged = _good("run_a", 1, "t", to="billing_agent", action="billing.refund.create")
    [(_, d)] = proc.process([forged], NOW).decisions
    assert d.outcome == Outcome.STOP and d.reason == Reason.REQUEST_ID_REUSED
    assert d.decision_id != first.decisions[0][1].decision_id
    # the same request again (a retry) still gets its allow
    [(_, retry)] = proc.process([_good("run_a", 1, "t", to="researcher")], NOW).decisions
    assert retry == reemitted(first.decisions[0][1])


# ------------------------------------------------------------------ found by attacking the worker


def test_a_record_with_a_huge_key_is_refused_with_a_dead_letter_kafka_takes() -> None:
    bad = InputRecord(TOPIC, 0, 5, b"k" * 999_000, b"\x01" * 65_536)
    _, out = _sandwich(bad)
    assert _kinds(out) == ["out_of_range"]
    [dl] = out.dead_letters
    assert dl.key is None and len(dl.value) < 100_000  # no 1 MB key, no 6x escaping
    envelope = orjson.loads(dl.value)
    assert envelope["key_size"] == 999_000 and "original_b64" in envelope


def test_approvals_only_count_from_the_approvals_topic_and_handoffs_never_from_it() -> None:
    proc = _proc(approvals_topic="gov.approvals")
    grant = ApprovalGranted(
        approval_id="apr_x", run_id="run_b", approver="oncall-anyone", event_time=NOW
    )
    on_requests = InputRecord(TOPIC, partition_for(b"run_b", 4), 1, b"run_b", grant.to_json())
    handoff_on_approvals = _good("run_c", 1)
    handoff_on_approvals.topic = "gov.approvals"
    out = proc.process([_good("run_a", 1), on_requests, handoff_on_approvals], NOW)
    assert _kinds(out) == ["wrong_topic", "wrong_topic"]
    assert [d.request_id for _, d in out.decisions] == ["run_a-h1"]


def test_a_request_id_still_holding_a_reservation_is_refused_after_the_dedup_window() -> None:
    # X reserves 20 of 30; after 512 other events X comes again with an estimate of 1: deciding
    # it anew would overwrite X's reservation and let a new 15 through
    policy = policy_with(shared_max_usd=30, max_handoffs=None)
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(policy, 4, states, worker="w")
    first = proc.process([_good("run_a", 1, "x", estimated_usd=20.0)], NOW)
    assert first.decisions[0][1].outcome == Outcome.ALLOW
    filler = []
    for i in range(SEEN_LIMIT + 1):
        done = HandoffCompleted(
            request_id=f"f{i}", run_id="run_a", task_id="x", agent="researcher", event_time=NOW
        )
        filler.append(
            InputRecord(TOPIC, partition_for(b"run_a", 4), 10 + i, b"run_a", done.to_json())
        )
    proc.process(filler, NOW)
    again = proc.process([_good("run_a", 1, "x", estimated_usd=1.0)], NOW)
    [(_, d)] = again.decisions
    assert (d.outcome, d.reason) == (Outcome.STOP, Reason.REQUEST_ID_REUSED)
    assert states[b"run_a"].reserved_usd == 20.0


def test_an_event_for_another_tenant_than_the_runs_is_refused() -> None:
    proc = _proc()
    proc.process([_good("run_a", 1)], NOW)
    other = _good("run_a", 2, "u", tenant="acme")
    [(_, d)] = proc.process([other], NOW).decisions
    assert (d.outcome, d.reason) == (Outcome.STOP, Reason.TENANT_MISMATCH)


def test_the_state_bytes_a_worker_holds_are_bounded_too() -> None:
    states: dict[bytes, RunState] = {}
    proc = _proc(states, max_state_bytes=1)
    # counted as each batch writes its states (a batch may pass the bound by its own runs)
    assert proc.process([_good("run_a", 1)], NOW).decisions[0][1].reason == Reason.OK
    assert proc.state_bytes == len(states[b"run_a"].to_bytes())
    [(_, d)] = proc.process([_good("run_b", 1)], NOW).decisions
    assert (d.outcome, d.reason) == (Outcome.STOP, Reason.WORKER_RUN_LIMIT)
    assert b"run_b" not in states


@pytest.mark.parametrize("exactly_once", [False, True])
def test_a_refusal_made_without_a_state_change_is_published(exactly_once: bool) -> None:
    # request_id_reused and tenant_mismatch leave the run's state as it was and carry the
    # record's own partition and offset: under exactly-once they were taken for a Kafka
    # redelivery and dropped, so the input ended in no decision at all
    proc = BatchProcessor(load_policy(None), 1, {}, worker="w", exactly_once=exactly_once)
    now = datetime.now(UTC)
    proc.process([_record(10)], now)
    reused = handoff("run_1", 1, "another_task")
    foreign = handoff("run_1", 2, "x").model_copy(update={"tenant": "other"})
    out = proc.process(
        [
            InputRecord(TOPIC, 0, 11, b"run_1", reused.to_json()),
            InputRecord(TOPIC, 0, 12, b"run_1", foreign.to_json()),
        ],
        now,
    )
    assert [(d.offset, d.reason, d.reemitted) for _, d in out.decisions] == [
        (11, Reason.REQUEST_ID_REUSED, False),
        (12, Reason.TENANT_MISMATCH, False),
    ]
    assert proc.redelivered == 0


def test_a_retried_report_on_a_run_stopped_at_its_budget_counts_its_cost_once() -> None:
    """A run stopped at its state budget refuses its events without measuring each; a retry
    (or a redelivery) of a cost report it refused is answered from its memory, not counted
    again (refusing it anew would count the cost twice)."""
    from tests.unit.test_attacks_session7 import _over_budget_run

    proc, states, _ = _over_budget_run(8192)
    report = HandoffCompleted(
        request_id="run_b-report-1", run_id="run_b", task_id="t", agent="researcher",
        cost_usd=1.5, tool_calls=2, event_time=NOW,
    )  # fmt: skip
    key = b"run_b"
    raw = report.to_json()
    spent, calls = states[key].spent_usd, states[key].tool_calls
    records = [InputRecord(TOPIC, partition_for(key, 4), 900_000 + i, key, raw) for i in range(3)]
    out = proc.process(records[:2], NOW)  # the report and its retry in one batch
    out2 = proc.process(records[2:], NOW)  # and once more in the next
    assert states[key].spent_usd == pytest.approx(spent + 1.5)
    assert states[key].tool_calls == calls + 2
    answers = [d for _, d in out.decisions + out2.decisions]
    assert len({d.decision_id for d in answers}) == 1, [(d.reason, d.detail) for d in answers]
    assert all(d.reason == Reason.RUN_STATE_LIMIT for d in answers)
