"""Session 17's attacks on `baton replay --from-kafka` (cli/replay_kafka.py), without Kafka:
records a producer stamped out of the order the worker read them in, and `--tenant` reading
each record's own tenant field instead of its run's. Each gate passed ("no change", exit 0)
on a history the worker never had. The same through a broker:
tests/integration/test_attacks_session17_replay_kafka.py."""

from __future__ import annotations

import pytest

from baton.cli.replay_kafka import decide_topics, in_scope, replay_decided
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.replay import replay_runs, runs_of
from baton.schemas.events import RunEvent
from baton.schemas.policy import Policy
from tests.unit.test_engine_support import at, completed, handoff, policy_with

pytestmark = pytest.mark.unit

REQUESTS, APPROVALS, CONTROL = "gov.handoff.requests", "gov.approvals", "gov.control"
#: the worker ran this; the new policy blocks shell.* (a handoff using it is a change)
NO_BLOCK = policy_with(max_handoffs=2, tools={"block": []})
BLOCKS_SHELL = policy_with(max_handoffs=2, tools={"block": ["shell.*"]})


def _ms(seconds: float) -> int:
    return int(at(seconds).timestamp() * 1000)


def _record(event: RunEvent, offset: int, seconds: float, key: str | None = None):
    run = key if key is not None else event.run_id
    return _ms(seconds), REQUESTS, InputRecord(REQUESTS, 0, offset, run.encode(), event.to_json())


def _worker(records: list, policy: Policy) -> list[tuple[int, str]]:
    """What a worker decided for ``records``: read in offset order, whatever their stamps."""
    proc = BatchProcessor(policy, 1, {}, "w", approvals_topic=APPROVALS)
    out = []
    for _, _, rec in sorted(records, key=lambda r: r[2].offset):
        for _, d in proc.process([rec], at(0)).decisions:
            out.append((rec.offset, f"{d.outcome}:{d.reason}"))
    return out


def _three_requests_stamped_backwards() -> list:
    """Offsets 0, 1, 2 of one partition, stamped 30 s, 20 s, 10 s; offset 0 uses shell.exec."""
    records = []
    for n in range(3):
        tools = {"tools": ["shell.exec"]} if n == 0 else {}
        event = handoff(f"ra-h{n}", f"t{n}", "planner", "researcher", run_id="ra", **tools)
        records.append(_record(event, n, 30 - 10 * n))
    return records


def test_a_run_stamped_against_its_offset_order_is_decided_in_offset_order() -> None:
    """A producer stamps a record (any int64: two orchestrator hosts of one run with skewed
    clocks, or a writer of the topic); the worker reads a partition in offset order. The
    replay decided the run in stamp order: the worker allowed offsets 0 and 1 and stopped 2
    (max_handoffs 2), the replay allowed 2 and 1 and stopped 0, the shell.exec handoff, so
    a policy blocking shell.* showed no change (exit 0) although it stops a handoff the
    worker allowed. Session 17 made such a run partial (still no change shown, exit 0); it
    is decided in offset order now, as the worker decided it, and the change is shown."""
    records = _three_requests_stamped_backwards()
    worker = _worker(records, NO_BLOCK)
    assert worker == [(0, "allow:ok"), (1, "allow:ok"), (2, "stop:handoff_budget_exceeded")]
    decided = decide_topics(records, NO_BLOCK, 1, APPROVALS, CONTROL)
    assert [(r.offset, f"{r.outcome}:{r.reason}") for r in decided.rows] == worker
    report = replay_decided(decided, BLOCKS_SHELL)
    assert not report.partial and [r.run_id for r in report.changed_runs] == ["ra"]
    assert report.changed_runs[0].first_change.request_id == "ra-h0"  # the shell.exec one


def test_records_of_other_runs_stamped_out_of_order_leave_a_run_whole() -> None:
    """Only the run whose own records disagree is partial: another run's record stamped
    behind it in the same partition (clients on many hosts) changes nothing of its order."""
    ra = [_record(handoff(f"ra-h{n}", f"t{n}", "p", "r", run_id="ra"), n, 10 + n) for n in (0, 2)]
    rb = [_record(handoff("rb-h0", "t0", "p", "r", run_id="rb"), 1, 5)]
    rows, policies, _ = decide_topics([*ra, *rb], NO_BLOCK, 1, APPROVALS, CONTROL)
    report = replay_runs(runs_of(rows), policy_with(max_handoffs=1), policies, judge=False)
    assert not report.partial and [r.run_id for r in report.changed_runs] == ["ra"]


def test_tenant_scope_keeps_a_runs_completion_reported_under_another_tenant() -> None:
    """The worker counts a completion under a run's key whatever tenant it names (money
    spent is spent); `--tenant acme` dropped it by its own tenant field: 9 USD spent left
    out, so `shared_max_usd: 5` showed no change though it stops the run's next handoff."""
    records = [
        _record(handoff("ra-h0", "t0", "p", "r", run_id="ra", tenant="acme"), 0, 0),
        _record(completed("ra-h0", "t0", "r", 9.0, run_id="ra", tenant="other"), 1, 1),
        _record(handoff("ra-h1", "t1", "p", "r", run_id="ra", tenant="acme"), 2, 2),
    ]
    baseline = policy_with(shared_max_usd=10)
    assert _worker(records, baseline)[-1] == (2, "allow:ok")
    rows, policies, _ = decide_topics(
        in_scope(records, {}, None, "acme"), baseline, 1, APPROVALS, CONTROL
    )
    report = replay_runs(runs_of(rows), policy_with(shared_max_usd=5), policies, judge=False)
    assert [r.run_id for r in report.changed_runs] == ["ra"], report.transitions


def test_tenant_scope_leaves_out_a_record_naming_the_tenant_under_another_tenants_run() -> None:
    """A request naming acme under the key of a run of tenant other: the worker refuses it
    (another tenant); `--tenant acme` replayed it alone, as a fresh acme run it allowed."""
    records = [
        _record(handoff("rb-h0", "t0", "p", "r", run_id="rb", tenant="other"), 0, 0),
        _record(handoff("rb-h1", "t1", "p", "r", run_id="rb", tenant="acme"), 1, 1),
    ]
    assert _worker(records, NO_BLOCK)[-1][1].startswith("stop:")
    assert in_scope(records, {}, None, "acme") == []
    assert in_scope(records, {}, None, "other") == records


def test_tenant_scope_takes_a_run_begun_before_the_range_by_its_first_tenant() -> None:
    """A run begun before --since is in the scope of the tenant its first record named
    (``before``: run -> that tenant), not of a forged record's first in the range."""
    records = [_record(completed("ra-h0", "t0", "r", 1.0, run_id="ra", tenant="other"), 5, 0)]
    assert in_scope(records, {"ra": "acme"}, None, "acme") == records
    assert in_scope(records, {"ra": "acme"}, None, "other") == []


def test_tenant_scope_reads_the_tenant_folded_as_the_audit_replay_does() -> None:
    """`--tenant ACME` named no run (events hold folded names) where the audit replay folds
    it: "no recorded run in scope", exit 7."""
    records = [_record(handoff("ra-h0", "t0", "p", "r", run_id="ra", tenant="acme"), 0, 0)]
    assert in_scope(records, {}, None, "ACME") == records


def test_a_probe_run_is_left_out_whole_and_a_run_under_a_probe_like_key_is_not() -> None:
    """The readiness probes (a __probe_ key, tenant __baton__) stay out of the report; a
    record of another tenant under a probe's key stays out with it (the worker refused it),
    and a run merely keyed __probe_… by another tenant is replayed."""
    from baton.processors.probe import PROBE_TENANT

    probe = [
        _record(handoff("p0", "t0", "p", "r", run_id="__probe_1", tenant=PROBE_TENANT), 0, 0),
        _record(handoff("p1", "t1", "p", "r", run_id="__probe_1", tenant="acme"), 1, 1),
    ]
    other = [_record(handoff("q0", "t0", "p", "r", run_id="__probe_x", tenant="acme"), 2, 2)]
    assert in_scope([*probe, *other], {}, None, None) == other


class _Said:
    """A message or end-of-partition as confluent_kafka's Consumer.poll gives them."""

    def __init__(self, topic: str, partition: int, offset: int, ts: int, key, value) -> None:
        self._where, self._offset, self._ts, self._key, self._value = (
            (topic, partition),
            offset,
            ts,
            key,
            value,
        )

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return 1, self._ts

    def key(self):
        return self._key

    def value(self):
        return self._value

    def error(self):
        if self._value is not _EOF:
            return None
        from confluent_kafka import KafkaError

        return KafkaError(KafkaError._PARTITION_EOF)


_EOF = object()


def _trimmed_topics(monkeypatch: pytest.MonkeyPatch, held: dict[str, list]) -> None:
    """A broker whose topics hold ``held`` (topic -> (offset, stamp ms, event)), one
    partition each: no Kafka, the Consumer replaced."""
    import confluent_kafka

    import baton.streams.net

    class _Topic:
        error = None
        partitions = (0,)

    class _Consumer:
        def __init__(self, config: dict) -> None:
            self._queue: list[_Said] = []

        def list_topics(self, topic: str, timeout: float):
            return type("Meta", (), {"topics": {topic: _Topic()}})()

        def assign(self, parts: list) -> None:
            for tp in parts:
                for offset, ts, event in held.get(tp.topic, []):
                    key = event.run_id.encode()
                    self._queue.append(_Said(tp.topic, 0, offset, ts, key, event.to_json()))
                self._queue.append(_Said(tp.topic, 0, -1, 0, None, _EOF))

        def get_watermark_offsets(self, tp: object, timeout: float = 0, cached: bool = False):
            return (-1001, -1001)  # librdkafka's OFFSET_INVALID: not known (read to the EOF)

        def poll(self, timeout: float):
            return self._queue.pop(0) if self._queue else None

        def close(self) -> None:
            pass

    monkeypatch.setattr(confluent_kafka, "Consumer", _Consumer)
    monkeypatch.setattr(baton.streams.net, "check_reachable", lambda *a, **k: None)


def test_a_run_whose_start_retention_deleted_from_the_topic_is_partial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The topics are read from their start to find the runs begun before the range; a
    partition whose start retention deleted (its first record read not at offset 0) held a
    run's fifth to seventh handoffs first: replayed from zero, `max_handoffs: 6` (which stops
    its seventh) showed no change, exit 0. A run with a record within run_retention_s of such
    a partition's first record may have begun in what is gone: partial. A run begun later
    (the worker had evicted anything idle that long) is replayed."""
    from baton.cli.replay_kafka import replay_from_kafka
    from baton.schemas.settings import Settings

    first = _ms(0)
    held = [
        (100 + n, first + n * 1000, handoff(f"ra-h{n}", f"t{n}", "p", "r", run_id="ra"))
        for n in range(4, 7)
    ]
    late = first + 2 * 3600 * 1000
    held += [
        (200 + n, late + n, handoff(f"rb-h{n}", f"t{n}", "p", "r", run_id="rb")) for n in range(7)
    ]
    _trimmed_topics(monkeypatch, {"gov.handoff.requests": held})
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1, run_retention_s=3600)
    report, _ = replay_from_kafka(
        settings, policy_with(max_handoffs=6), policy_with(max_handoffs=20), None, None
    )
    assert "ra" in report.partial and "ra" not in report.broken, report.partial
    assert [r.run_id for r in report.changed_runs] == ["rb"]


def test_a_kill_stamped_before_it_was_signed_holds_from_its_signing_not_its_stamp() -> None:
    """A writer of gov.control re-publishes a kill signed at 100 s, stamped 41 s (a producer
    sets any stamp; within the 60 s an operator's clock may run ahead): the worker refuses
    the copy as a replay and applied the kill when it read it, at about 100 s. The replay
    applied it at its stamp: the handoff the worker allowed at 60 s was replayed as a kill
    stop "as recorded", so a policy stopping it showed no change. A control record now
    holds from its stamp or its signing time, whichever is later (an honest client's are
    one clock's)."""
    from baton.schemas.events import KillSwitch

    kill = KillSwitch(scope="run", run_id="ra", operator="ops", event_time=at(100))
    forged = (_ms(41), CONTROL, InputRecord(CONTROL, 0, 0, None, kill.to_json()))
    genuine = (_ms(100), CONTROL, InputRecord(CONTROL, 0, 1, None, kill.to_json()))
    request = _record(handoff("ra-h0", "t0", "p", "r", run_id="ra"), 0, 60)
    rows, policies, _ = decide_topics([forged, request, genuine], NO_BLOCK, 1, APPROVALS, CONTROL)
    assert [f"{r.outcome}:{r.reason}" for r in rows if r.run_id == "ra"] == ["allow:ok"]
    report = replay_runs(runs_of(rows), policy_with(max_handoffs=0), policies, judge=False)
    assert [r.run_id for r in report.changed_runs] == ["ra"]


def test_a_grant_stamped_before_the_request_it_answers_makes_its_run_broken() -> None:
    """Requests and approvals are two topics, ordered by stamp only. An approver whose
    clock is seconds behind the orchestrator's stamps the grant before the request: the
    replay read it first (unknown_approval), the approval stayed pending, the granted
    handoff was never counted, so `max_handoffs: 2` let the run's third handoff through
    and showed no change, though the worker allowed all three (the third now stops).
    Session 17 made the run partial, reported as trimmed, exit 0: the gate passed by the
    run's absence. It is broken now, its reason named (exit 7)."""
    from tests.unit.test_engine_support import granted

    gated = policy_with(max_handoffs=5, require_approval_for=["billing.refund.create"])
    h0 = handoff("ra-h0", "t0", "planner", "researcher", run_id="ra")
    h1 = handoff(
        "ra-h1", "t1", "planner", "researcher", run_id="ra", action="billing.refund.create"
    )
    h2 = handoff("ra-h2", "t2", "planner", "researcher", run_id="ra")
    records = [_record(h0, 0, 1), _record(h1, 1, 10), _record(h2, 2, 20)]
    worker = BatchProcessor(gated, 1, {}, "w", approvals_topic=APPROVALS)
    asked_for = [worker.process([rec], at(0)).decisions for _, _, rec in records[:2]]
    grant = granted(asked_for[1][0][1].approval_id, "oncall_amy", run_id="ra", t=5)
    answer = (_ms(5), APPROVALS, InputRecord(APPROVALS, 0, 0, b"ra", grant.to_json()))
    # the worker read the grant after the request it answers, and allowed all three
    for _, _, rec in (answer, records[2]):
        assert [f"{d.outcome}" for _, d in worker.process([rec], at(0)).decisions] == ["allow"]
    records.append(answer)
    decided = decide_topics(records, gated, 1, APPROVALS, CONTROL)
    asked = [r for r in decided.rows if f"{r.outcome}" == "approval_required"]
    assert asked, [f"{r.outcome}:{r.reason}" for r in decided.rows]
    stricter = policy_with(max_handoffs=2, require_approval_for=["billing.refund.create"])
    report = replay_decided(decided, stricter)
    assert not report.changed_runs, report.transitions
    # not "trimmed": in which order the worker read them is unknown, so exit 7 (broken)
    assert report.broken == ["ra"] and "before the request" in report.partial["ra"]
