"""Session 9 attacks on the worker's batch step: hostile records mixed with faults, without Kafka.

Each test pits ``BatchProcessor.process`` against a mix a real worker may get in one fetch:
good records of many runs between no-key, wrong-key, non-JSON, oversized, misplaced and
redelivered records, a run that outgrows its state budget, a worker at its run limit, an
engine that raises, the sweep between batches and a clock that steps. The invariants: every
input record ends in its decisions, a dead letter or a forward (never silently nothing,
never two of them); a batch decides as the same records one batch each would; and nothing
a record holds escapes ``process`` as an exception.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from baton.processors.batch import HARD_STATE_MAX_BYTES, BatchProcessor, InputRecord, Outputs
from baton.processors.engine import NO_KILLS
from baton.processors.state import RunState
from baton.processors.sweep import DueIndex
from baton.processors.sweep_step import sweep_due
from baton.schemas.decision import Decision, Outcome, Phase, Reason
from baton.schemas.events import ApprovalGranted, HandoffCompleted
from baton.schemas.policy import Policy
from baton.streams.partitioner import partition_for
from tests.builds import interpreted_only
from tests.helpers import handoff
from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 30, 11, 0, tzinfo=UTC)
TOPIC = "gov.handoff.requests"
APPROVALS = "gov.approvals"
REFUND = "billing.refund.create"  # in the seed policy's require_approval_for
PARTITIONS = 4
#: the largest record Kafka's default broker and the producer take
KAFKA_MAX = 1_000_000


def _home(run: str) -> int:
    return partition_for(run.encode(), PARTITIONS)


def _handoff(run: str, n: int, offset: int, task: str = "t", **kw: object) -> InputRecord:
    ev = handoff(run, n, task, event_time=NOW, **kw)
    return InputRecord(TOPIC, _home(run), offset, run.encode(), ev.to_json())


def _completed(run: str, n: int, offset: int, task: str = "t", usd: float = 1.0) -> InputRecord:
    ev = HandoffCompleted(
        request_id=f"{run}-h{n}",
        run_id=run,
        task_id=task,
        agent="researcher",
        cost_usd=usd,
        tool_calls=1,
        event_time=NOW,
    )
    return InputRecord(TOPIC, _home(run), offset, run.encode(), ev.to_json())


def _hostile(rng: random.Random, offset: int) -> InputRecord:
    """One record no run may take: each kind a worker has been sent."""
    good = handoff("run_h", 1, "t", event_time=NOW).to_json()
    part = _home("run_h")
    kind = rng.randrange(8)
    if kind == 0:
        return InputRecord(TOPIC, part, offset, None, good)  # no key
    if kind == 1:
        return InputRecord(TOPIC, part, offset, b"run_other", good)  # wrong key
    if kind == 2:
        return InputRecord(TOPIC, part, offset, b"run_h", b"\xff" * rng.randrange(1, 70_000))
    if kind == 3:
        return InputRecord(TOPIC, part, offset, b"run_h", b"{" + b"\x01" * 70_000 + b"}")
    if kind == 4:
        return InputRecord(TOPIC, part, offset, b"k" * 1_100_000, good)  # a 1 MB key
    if kind == 5:
        return InputRecord(TOPIC, part, offset, b"run_h", None)  # a tombstone on the input
    if kind == 6:  # a run event on the approvals topic
        return InputRecord(APPROVALS, part, offset, b"run_h", good)
    return InputRecord(
        TOPIC, part, offset, b"run_h", b'{"type":"handoff_requested","run_id":1e400}'
    )


def _mixed_batch(seed: int, runs: int = 6, size: int = 160) -> list[InputRecord]:
    """Good handoffs and completions of ``runs`` runs (one with long names, to outgrow an
    8 KB state budget mid-batch; one asking for an approval), client retries, redeliveries
    of the same record and hostile records, shuffled across runs but in order within each."""
    rng = random.Random(seed)
    counters = dict.fromkeys(range(runs), 0)
    records: list[InputRecord] = []
    offset = 1000
    while len(records) < size:
        offset += 1
        roll = rng.random()
        if roll < 0.15:
            records.append(_hostile(rng, offset))
            continue
        if roll < 0.22 and records:
            records.append(rng.choice(records))  # Kafka delivered a record again
            continue
        r = rng.randrange(runs)
        run = f"run_{r}"
        if roll < 0.3 and counters[r]:  # a client retry: the same event, a new record
            n = counters[r]
            records.append(_handoff(run, n, offset, f"task-{n}" + ("x" * 200 if r == 0 else "")))
            continue
        n = counters[r] = counters[r] + 1
        if roll < 0.5 and n > 1:
            records.append(
                _completed(run, n - 1, offset, f"task-{n - 1}" + ("x" * 200 if r == 0 else ""))
            )
            continue
        extra: dict[str, object] = {}
        if r == 1 and n == 2:
            extra["action"] = "billing.refund.create"  # parked for an approval
        if r == 0:
            extra["to"] = f"agent-{n % 3}" + "y" * 200
        records.append(
            _handoff(run, n, offset, f"task-{n}" + ("x" * 200 if r == 0 else ""), **extra)
        )
    return records


def _policy() -> Policy:
    return policy_with(max_handoffs=None, max_agents_per_run=None, max_delegation_depth=None)


def _processor(states: dict[bytes, RunState], exactly_once: bool, **kw: object) -> BatchProcessor:
    return BatchProcessor(
        _policy(),
        PARTITIONS,
        states,
        worker="w",
        exactly_once=exactly_once,
        approvals_topic=APPROVALS,
        run_state_max_bytes=8192,
        **kw,  # type: ignore[arg-type]
    )


def _per_run(decisions: list[tuple[int, Decision]]) -> dict[str, list[tuple[object, ...]]]:
    runs: dict[str, list[tuple[object, ...]]] = {}
    for partition, d in decisions:
        runs.setdefault(d.run_id, []).append(
            (partition, d.decision_id, d.outcome, d.reason, d.offset, d.reemitted, d.chain_hash)
        )
    return runs


def _letters(out: Outputs) -> list[tuple[str, int, str]]:
    envelopes = [orjson.loads(dl.value) for dl in out.dead_letters]
    return sorted((e["topic"], e["offset"], e["error_kind"]) for e in envelopes)


def _one_at_a_time(
    records: list[InputRecord], exactly_once: bool, **kw: object
) -> tuple[BatchProcessor, dict[bytes, RunState], Outputs]:
    states: dict[bytes, RunState] = {}
    proc = _processor(states, exactly_once, **kw)
    total = Outputs()
    for rec in records:
        out = proc.process([rec], NOW)
        total.decisions += out.decisions
        total.dead_letters += out.dead_letters
        total.forwards += out.forwards
    return proc, states, total


@pytest.mark.parametrize("exactly_once", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_a_hostile_mixed_batch_decides_as_the_same_records_one_batch_each(
    seed: int, exactly_once: bool
) -> None:
    records = _mixed_batch(seed)
    states: dict[bytes, RunState] = {}
    proc = _processor(states, exactly_once)
    out = proc.process(records, NOW)
    single, single_states, alone = _one_at_a_time(records, exactly_once)

    assert _per_run(out.decisions) == _per_run(alone.decisions)
    assert _letters(out) == _letters(alone)
    assert [(f.partition, f.key, f.value) for f in out.forwards] == [
        (f.partition, f.key, f.value) for f in alone.forwards
    ]
    assert {k: s.to_bytes() for k, s in states.items()} == {
        k: s.to_bytes() for k, s in single_states.items()
    }
    assert out.encoded == {k: s.to_bytes() for k, (_, s) in out.changed.items() if s}
    # (the redelivered counter is a metric: a run re-decided for its budget counts its
    # redeliveries again, so it may read higher than the records' count)
    assert proc.state_limited == single.state_limited
    assert proc.redelivered >= single.redelivered
    # the budget was really reached mid-batch (the slow path ran), and hostile records came
    assert any(d.reason == Reason.RUN_STATE_LIMIT for _, d in out.decisions)
    assert out.dead_letters


@pytest.mark.parametrize("exactly_once", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_every_record_of_a_hostile_batch_ends_in_a_decision_a_dead_letter_or_a_forward(
    seed: int, exactly_once: bool
) -> None:
    """One record a batch (the batch decides alike: the test above): each record's batch
    holds its outcome, or it was a redelivery whose answer is out, answered with nothing
    (under exactly-once; under either guarantee when its decision is no longer kept)."""
    states: dict[bytes, RunState] = {}
    proc = _processor(states, exactly_once)
    for rec in _mixed_batch(seed):
        redelivered = proc.redelivered
        out = proc.process([rec], NOW)
        ends = bool(out.decisions) + bool(out.dead_letters) + bool(out.forwards)
        if proc.redelivered == redelivered + 1:
            assert ends == 0, rec  # its decisions went out with the state that remembers them
            continue
        assert ends == 1, rec
        assert len(out.dead_letters) <= 1 and len(out.forwards) <= 1
        for dl in out.dead_letters:
            assert len(dl.value) < KAFKA_MAX and (dl.key is None or len(dl.key) <= 1024)
            assert orjson.loads(dl.value)["offset"] == rec.offset
        for _, d in out.decisions:
            assert len(d.to_json()) < KAFKA_MAX
        assert all(len(raw) <= HARD_STATE_MAX_BYTES for raw in out.encoded.values())


def _stopped_at_budget() -> tuple[dict[bytes, RunState], list[InputRecord]]:
    """run_0 fed one record a batch until its state budget stops it, and the records of its
    handoffs that were allowed (their completions come after the stop)."""
    states: dict[bytes, RunState] = {}
    proc = _processor(states, exactly_once=False)
    allowed: list[int] = []
    for n in range(1, 200):
        rec = _handoff("run_0", n, n, f"task-{n}" + "x" * 200, to=f"agent-{n % 3}" + "y" * 200)
        [(_, d)] = proc.process([rec], NOW).decisions
        if d.reason == Reason.RUN_STATE_LIMIT:
            break
        allowed.append(n)
    completions = [_completed("run_0", n, 1000 + n, f"task-{n}" + "x" * 200) for n in allowed]
    return states, completions[:6]


def test_a_stopped_runs_events_get_the_same_ids_however_the_batches_split() -> None:
    """A crash between a batch's decisions and its states re-decides the batch, fetched in
    other batches: the ids must not change (the audit keeps a decision_id once; two ids for
    one completion were a 'recorded' and a 'stop', and a fork in the run's chain)."""
    states, completions = _stopped_at_budget()
    whole = _processor({k: s.copy() for k, s in states.items()}, exactly_once=False)
    together = whole.process(completions, NOW).decisions
    split = _processor({k: s.copy() for k, s in states.items()}, exactly_once=False)
    apart = [pd for rec in completions for pd in split.process([rec], NOW).decisions]
    assert [d.decision_id for _, d in together] == [d.decision_id for _, d in apart]
    assert [(d.outcome, d.reason) for _, d in apart] == [
        (Outcome.STOP, Reason.RUN_STATE_LIMIT)
    ] * len(completions)
    # refused, their costs still counted once each
    assert whole.states[b"run_0"].spent_usd == states[b"run_0"].spent_usd + len(completions)
    assert split.states[b"run_0"].spent_usd == whole.states[b"run_0"].spent_usd


@pytest.mark.parametrize("exactly_once", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_a_worker_at_its_run_limit_decides_a_hostile_mix_as_one_batch_each(
    seed: int, exactly_once: bool
) -> None:
    """Fresh run ids fill the worker (max_runs 4 of 7 runs): the runs it holds are decided,
    every other run's records are stopped (worker_run_limit), published and not kept, the
    same in one batch as one record a batch."""
    records = _mixed_batch(seed, runs=7)
    states: dict[bytes, RunState] = {}
    proc = _processor(states, exactly_once, max_runs=4)
    out = proc.process(records, NOW)
    single, single_states, alone = _one_at_a_time(records, exactly_once, max_runs=4)
    assert _per_run(out.decisions) == _per_run(alone.decisions)
    assert _letters(out) == _letters(alone)
    assert {k: s.to_bytes() for k, s in states.items()} == {
        k: s.to_bytes() for k, s in single_states.items()
    }
    assert len(states) == 4 and proc.run_limited == single.run_limited > 0
    turned_away = {d.run_id for _, d in out.decisions if d.reason == Reason.WORKER_RUN_LIMIT}
    assert turned_away and not turned_away & {k.decode() for k in states}
    for run in turned_away:
        assert all(d.outcome == Outcome.STOP for _, d in out.decisions if d.run_id == run), (
            "a run the worker turned away got an allow"
        )


@interpreted_only("a patch of batch.decide, which the compiled batch.py never reads")
def test_an_engine_failing_only_on_the_budget_re_decision_leaves_each_record_one_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine raises on the second look at one event (the batch re-decides a run over its
    budget event by event): that record becomes one dead letter, its first-pass decision
    withdrawn, and every other record of the run keeps one decision."""
    import baton.processors.batch as batch

    real, seen = batch.decide, Counter[str]()

    def flaky(state, event, *a, **kw):  # type: ignore[no-untyped-def]
        key = f"{event.run_id}/{getattr(event, 'request_id', '')}/{type(event).__name__}"
        seen[key] += 1
        if key == "run_0/run_0-h3/HandoffRequested" and seen[key] == 2:
            raise ZeroDivisionError("second look")
        return real(state, event, *a, **kw)

    monkeypatch.setattr(batch, "decide", flaky)
    records = [
        _handoff("run_0", n, n, f"task-{n}" + "x" * 200, to=f"agent-{n % 3}" + "y" * 200)
        for n in range(1, 60)
    ]
    out = _processor({}, exactly_once=False).process(records, NOW)
    assert seen["run_0/run_0-h3/HandoffRequested"] == 2  # the budget re-decision ran
    offsets = Counter(d.offset for _, d in out.decisions)
    [letter] = [orjson.loads(dl.value) for dl in out.dead_letters]
    assert letter["offset"] == 3 and letter["error_kind"] == "engine_error"
    assert offsets == Counter(n for n in range(1, 60) if n != 3)


@pytest.mark.parametrize("exactly_once", [False, True])
def test_a_grant_and_a_report_after_the_sweep_expired_them_on_a_clock_stepped_back(
    exactly_once: bool,
) -> None:
    """The sweep expires a run's approval and its reservation (clock at +400 s); the worker's
    clock then steps back to +10 s and the grant and the completion arrive, twice: the grant
    gets the expiry (never an allow), the cost is counted once."""
    policy = policy_with(approval={"ttl_seconds": 300}, reservation_ttl_seconds=60)
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(
        policy, PARTITIONS, states, worker="w", exactly_once=exactly_once, approvals_topic=APPROVALS
    )
    home = _home("run_a")
    ask = handoff("run_a", 1, "refund", to="billing_agent", action=REFUND, event_time=NOW)
    reserve = handoff("run_a", 2, "t2", estimated_usd=5.0, event_time=NOW)
    [(_, asked)] = proc.process(
        [InputRecord(TOPIC, home, 1, b"run_a", ask.to_json())], NOW
    ).decisions
    assert asked.outcome == Outcome.APPROVAL_REQUIRED and asked.approval_id
    proc.process([InputRecord(TOPIC, home, 2, b"run_a", reserve.to_json())], NOW)

    due = DueIndex(3600, 7200)
    due.touch(b"run_a", states[b"run_a"])
    swept = sweep_due(
        proc,
        due,
        NOW + timedelta(seconds=400),
        active=set(range(PARTITIONS)),
        ready=set(range(PARTITIONS)),
        kills=NO_KILLS,
        run_retention_s=3600,
        tombstone_retention_s=7200,
        limit=100,
    )
    assert sorted(d.reason for _, d in swept.decisions) == [
        Reason.APPROVAL_EXPIRED,
        Reason.RESERVATION_EXPIRED,
    ]
    back = NOW + timedelta(seconds=10)
    grant = ApprovalGranted(
        approval_id=asked.approval_id, run_id="run_a", approver="finance_lead", event_time=back
    )
    late = [
        InputRecord(APPROVALS, home, 1, b"run_a", grant.to_json()),
        _completed("run_a", 2, 3, "t2", usd=7.0),
    ]
    for _ in range(2):  # decided, then delivered again
        out = proc.process(late, back)
        assert not out.dead_letters
        answers = [d for _, d in out.decisions if d.phase == Phase.APPROVAL]
        assert [(d.outcome, d.reason) for d in answers] == [(Outcome.STOP, "approval_expired")]
        assert all(d.outcome != Outcome.ALLOW for _, d in out.decisions)
        assert states[b"run_a"].spent_usd == 7.0


@pytest.mark.parametrize("exactly_once", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_the_rest_of_a_hostile_mix_an_hour_later_decides_as_one_batch_each(
    seed: int, exactly_once: bool
) -> None:
    """Half the mix decided one record a batch; the clock jumps an hour (every approval past
    its TTL: expired lazily by the next event under exactly-once) and the rest comes in one
    batch, with a run outgrowing its budget: as the rest one record a batch."""
    records = _mixed_batch(seed, size=240)
    head, rest = records[:120], records[120:]
    later = NOW + timedelta(hours=1)
    sides = []
    for together in (True, False):
        states: dict[bytes, RunState] = {}
        proc = _processor(states, exactly_once)
        for rec in head:
            proc.process([rec], NOW)
        total = Outputs()
        for batch in [rest] if together else [[rec] for rec in rest]:
            out = proc.process(batch, later)
            total.decisions += out.decisions
            total.dead_letters += out.dead_letters
        sides.append(
            (
                _per_run(total.decisions),
                _letters(total),
                {k: s.to_bytes() for k, s in states.items()},
            )
        )
    assert sides[0] == sides[1]
    assert any(d[3] == Reason.APPROVAL_EXPIRED for run in sides[0][0].values() for d in run)


def _enormous_forged_record() -> bytes:
    """A valid changelog record for run_b of ~999,000 bytes (Kafka took it: a writer of the
    changelog), its start far in the future so the sweep must write it again."""
    states: dict[bytes, RunState] = {}
    BatchProcessor(_policy(), PARTITIONS, states, worker="w").process(
        [_handoff("run_b", 1, 1, "t1")], NOW
    )
    wire = orjson.loads(states[b"run_b"].to_bytes())
    row = ["researcher", "planner", None, 1]
    wire["tasks"] = [[f"task-{i:05d}-" + "z" * 200, *row] for i in range(4300)]
    while len(orjson.dumps(wire)) > 999_000:
        wire["tasks"].pop()
    wire["t0"] = 1e300
    return orjson.dumps(wire)


def test_the_sweep_never_writes_a_state_past_the_hard_limit_for_an_enormous_forged_record() -> None:
    raw = _enormous_forged_record()
    states = {b"run_b": RunState.from_record(b"run_b", raw)}
    proc = BatchProcessor(_policy(), PARTITIONS, states, worker="w", run_state_max_bytes=600_000)
    due = DueIndex(3600, 7200)
    due.rebuild_keys([b"run_b"], NOW.timestamp())
    out = sweep_due(
        proc,
        due,
        NOW + timedelta(seconds=5),
        active=set(range(PARTITIONS)),
        ready=set(range(PARTITIONS)),
        kills=NO_KILLS,
        run_retention_s=3600,
        tombstone_retention_s=7200,
        limit=10,
    )
    assert all(len(encoded) <= HARD_STATE_MAX_BYTES for encoded in out.encoded.values())
    assert all(state is None or key in out.encoded for key, (_, state) in out.changed.items())
    # its events are refused unrecorded (dead letters), never decided on a state not written
    late = proc.process([_handoff("run_b", 2, 2, "t2")], NOW + timedelta(seconds=6))
    assert not late.decisions and not late.changed
    assert [orjson.loads(dl.value)["error_kind"] for dl in late.dead_letters] == ["run_state_limit"]


@pytest.mark.parametrize("exactly_once", [False, True])
def test_a_hostile_mix_on_a_worker_clock_jumping_to_9999_and_back_never_stops_the_batch(
    exactly_once: bool,
) -> None:
    """The worker's clock jumps to 2199, to datetime's last year, ten years back and home,
    with a sweep at each: every record still ends in a decision, a dead letter or a forward
    (or, under exactly-once, a redelivery answered with nothing), and nothing raises."""
    policy = policy_with(
        approval={"ttl_seconds": 300}, reservation_ttl_seconds=60, max_handoffs=None
    )
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(
        policy, PARTITIONS, states, worker="w", exactly_once=exactly_once, approvals_topic=APPROVALS
    )
    due = DueIndex(3600, 7200)
    clocks = [
        NOW,
        datetime(2199, 12, 31, 23, tzinfo=UTC),
        NOW,
        datetime(9999, 12, 31, tzinfo=UTC),
        NOW - timedelta(days=3650),
        NOW,
    ]
    records = _mixed_batch(3, size=240)
    for i, now in enumerate(clocks):
        for rec in records[i * 40 : (i + 1) * 40]:
            redelivered = proc.redelivered
            out = proc.process([rec], now)
            ends = bool(out.decisions) + bool(out.dead_letters) + bool(out.forwards)
            assert ends == (0 if proc.redelivered > redelivered else 1), (now, rec)
        for key, state in states.items():
            due.touch(key, state)
        sweep_due(
            proc,
            due,
            now,
            active=set(range(PARTITIONS)),
            ready=set(range(PARTITIONS)),
            kills=NO_KILLS,
            run_retention_s=3600,
            tombstone_retention_s=7200,
            limit=1000,
        )
