"""`baton replay --from-kafka` reads the workers' decisions on gov.decisions and replays them as
the audit replay replays the audit (cli/replay_decisions.py, sinks/replay_records.py): the
same report for the same decisions, the sink's folding of copies, whole runs in scope, a run
cut by retention partial and one cut otherwise broken. Without Kafka: the stand-in Consumer
of tests/unit/test_replay_decisions_support.py."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from baton.cli.replay_decisions import replay_decisions
from baton.processors.recorded import policy_document
from baton.processors.replay import ReplayReport, replay_runs, runs_of
from baton.schemas.decision import Decision
from baton.schemas.policy import Policy
from baton.schemas.settings import Settings
from baton.sinks.replay_source import ReplayScope
from baton.streams.partitioner import partition_for
from tests.unit.test_engine_support import at, handoff, policy_with
from tests.unit.test_replay_decisions_support import (
    KEY,
    DecisionsTopic,
    Worker,
    audit_rows,
    json_with,
    stand_in_kafka,
)
from tests.unit.test_replay_kafka_read_order import _exit_code

pytestmark = pytest.mark.unit

BASELINE = policy_with(max_handoffs=20)
STRICTER = policy_with(max_handoffs=2)
SETTINGS = Settings(bootstrap="127.0.0.1:1", partitions=2)


def _replayed(
    monkeypatch: pytest.MonkeyPatch,
    topic: DecisionsTopic,
    policy: Policy = STRICTER,
    scope: ReplayScope | None = None,
    key: bytes = KEY,
    jobs: int = 1,
) -> tuple[ReplayReport, list[str]]:
    stand_in_kafka(monkeypatch, topic)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=topic.partitions)
    report, _, refused, _ = replay_decisions(
        settings, scope or ReplayScope(), policy, key, jobs, 3600.0
    )
    return report, refused


def _three_runs(topic: DecisionsTopic, handoffs: int = 4) -> Worker:
    worker = Worker(topic, BASELINE)
    for n in range(handoffs):
        for run in ("ra", "rb", "rc", "rd"):
            worker.decide(handoff(f"{run}-h{n}", f"t{n}", "p", "q", run_id=run), 10 + n)
    return worker


def _summary(report: ReplayReport) -> list[tuple[str, int, int, list[tuple]]]:
    return sorted(
        (r.run_id, r.decisions, r.changed, sorted(r.transitions.items())) for r in report.runs
    )


def _forged(d: Decision, **changes: object) -> bytes:
    return json_with(d, **changes)


def _last(worker: Worker, run: str) -> Decision:
    return [d for d in worker.published if d.run_id == run and not d.reemitted][-1]


def test_the_decisions_replay_reports_what_the_audit_replay_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = DecisionsTopic(2)
    worker = _three_runs(topic)
    assert {partition_for(r.encode(), 2) for r in ("ra", "rb", "rc", "rd")} == {0, 1}
    policies = {BASELINE.version: Policy.model_validate_json(policy_document(BASELINE))}
    for policy, code in ((STRICTER, 1), (BASELINE, 0)):
        report, refused = _replayed(monkeypatch, topic, policy)
        audit = replay_runs(runs_of(audit_rows(worker.published)), policy, policies, KEY)
        assert _summary(report) == _summary(audit) and refused == []
        assert report.partial == {} and _exit_code(report) == code


def test_without_the_workers_chain_key_the_replay_cannot_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = DecisionsTopic(2)
    _three_runs(topic)
    report, _ = _replayed(monkeypatch, topic, BASELINE, key=b"another key")
    assert report.unfaithful_runs and _exit_code(report) == 7


def test_copies_fold_as_the_audit_folds_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A redelivered record (the same bytes again) and a client's retry (answered from the
    run's state, re-emitted: the sink stores no such copy) change nothing."""
    topic = DecisionsTopic(2)
    worker = _three_runs(topic)
    again = worker.decide(handoff("ra-h1", "t1", "p", "q", run_id="ra"), 30)
    assert again and all(d.reemitted for d in again)
    topic.publish(_last(worker, "rb"))  # redelivered
    report, refused = _replayed(monkeypatch, topic)
    assert report.broken == [] and refused == []
    assert dict((r.run_id, r.decisions) for r in report.runs) == dict.fromkeys(
        ("ra", "rb", "rc", "rd"), 4
    )
    assert _exit_code(report) == 1


def test_a_record_under_a_decision_id_saying_something_else_breaks_its_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer's stop under ra's last decision id (what FINAL would keep: the last one)."""
    topic = DecisionsTopic(2)
    worker = _three_runs(topic)
    d = _last(worker, "ra")
    topic.append(b"ra", _forged(d, outcome="stop", reason="handoff_budget_exceeded"))
    report, _ = _replayed(monkeypatch, topic, BASELINE)
    assert report.broken == ["ra"] and "say different things" in report.partial["ra"]
    assert _exit_code(report) == 7


def test_a_copy_flagged_reemitted_that_says_allow_over_a_stop_breaks_its_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = DecisionsTopic(2)
    worker = Worker(topic, STRICTER)
    for n in range(3):
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), 10 + n)
    stop = _last(worker, "ra")
    assert stop.outcome == "stop"
    topic.append(b"ra", _forged(stop, outcome="allow", reason="ok", reemitted=True))
    report, _ = _replayed(monkeypatch, topic, STRICTER)
    assert report.broken == ["ra"] and "not_a_copy" in report.partial["ra"]
    assert _exit_code(report) == 7


def _gone(topic: DecisionsTopic, run: str, first: int) -> None:
    """The first ``first`` records of ``run`` taken out of its partition (ids kept)."""
    p = partition_for(run.encode(), topic.partitions)
    mine = [i for i, (k, _) in enumerate(topic.records[p]) if k == run.encode()][:first]
    topic.records[p] = [r for i, r in enumerate(topic.records[p]) if i not in mine]


def _on(partition: int, count: int, prefix: str = "r") -> list[str]:
    """``count`` run ids on ``partition`` of 2 (not the policy records' partition, 1)."""
    found = [f"{prefix}{n}" for n in range(200)]
    return [r for r in found if partition_for(r.encode(), 2) == partition][:count]


def test_a_run_cut_by_retention_is_partial_and_one_cut_otherwise_is_broken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rx's first two decisions are before its partition's low watermark: partial (named,
    not replayed), the others replayed. The same records missing from a partition read from
    offset 0: nothing was trimmed there, so rx is broken (exit 7)."""
    assert partition_for(b"*", 2) == 1
    rx, ra = _on(0, 2)
    topic = DecisionsTopic(2)
    worker = Worker(topic, BASELINE)
    for n in range(2):
        worker.decide(handoff(f"{rx}-h{n}", f"t{n}", "p", "q", run_id=rx), n)
    for n in range(3):
        for run in (rx, ra):
            worker.decide(handoff(f"{run}-h{n + 2}", f"t{n + 2}", "p", "q", run_id=run), 10 + n)
    topic.trim(0, 2)  # rx's first two
    report, _ = _replayed(monkeypatch, topic)
    assert rx in report.partial and report.broken == []
    assert [r.run_id for r in report.runs] == [ra] and _exit_code(report) == 1
    topic.trim(0, 0)
    _gone(topic, rx, 2)
    report, _ = _replayed(monkeypatch, topic)
    assert report.broken == [rx] and "read from offset 0" in report.partial[rx]
    assert _exit_code(report) == 7


def test_runs_whose_policy_record_retention_deleted_are_broken_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The policy record is gone (the worker ran longer than gov.decisions' retention without
    publishing it again): its runs cannot be decided, named, exit 7."""
    topic = DecisionsTopic(1)
    worker = Worker(topic, BASELINE)
    worker.decide(handoff("ra-h0", "t0", "p", "q", run_id="ra"), 0)
    topic.trim(0, 1)
    report, _ = _replayed(monkeypatch, topic)
    assert report.broken == ["ra"] and "policy_in_force" in report.partial["ra"]
    assert _exit_code(report) == 7


def test_a_trimmed_partition_does_not_pass_a_run_whose_first_record_was_forged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer's record naming a link no record holds, amid a trimmed partition: its hash is
    not the worker's (no chain key): broken, not partial."""
    topic = DecisionsTopic(1)
    worker = Worker(topic, BASELINE)
    for n in range(3):
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), 10 + n)
    first = next(d for d in worker.published if d.run_id == "ra")
    topic.append(b"rz", _forged(first, run_id="rz", decision_id="z1", chain_prev="ab" * 16))
    topic.trim(0, 1)
    report, _ = _replayed(monkeypatch, topic, BASELINE)
    assert "rz" in report.broken and "altered" in report.partial["rz"]


def test_since_takes_the_runs_with_a_decision_in_range_each_read_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ra decided at 0-2 s and 100 s, rb at 0-2 s only, rc in the range only: --since 50 s
    replays ra whole (four decisions: its stop at 100 s is the change) and rc; --to 50 s
    reads ra's first three; --run and --tenant narrow."""
    topic = DecisionsTopic(2)
    worker = Worker(topic, BASELINE)
    for n in range(3):
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), n)
        worker.decide(handoff(f"rb-h{n}", f"t{n}", "p", "q", run_id="rb"), n)
    worker.decide(handoff("ra-h3", "t3", "p", "q", run_id="ra"), 100)
    worker.decide(handoff("rc-h0", "t0", "p", "q", run_id="rc"), 100)
    report, _ = _replayed(monkeypatch, topic, scope=ReplayScope(since=at(50)))
    assert {r.run_id: r.decisions for r in report.runs} == {"ra": 4, "rc": 1}
    report, _ = _replayed(monkeypatch, topic, scope=ReplayScope(until=at(50)))
    assert {r.run_id: r.decisions for r in report.runs} == {"ra": 3, "rb": 3}
    report, _ = _replayed(monkeypatch, topic, scope=ReplayScope(run_id="rb"))
    assert [r.run_id for r in report.runs] == ["rb"]
    report, _ = _replayed(monkeypatch, topic, scope=ReplayScope(tenant="other"))
    assert report.runs == [] and _exit_code(report) == 7


def test_a_live_writer_is_not_followed_past_the_end_the_read_began_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Records appended while the partition is read are not read (the read ends); the
    partition holding the policy records is read first."""
    topic = DecisionsTopic(2)
    _three_runs(topic)
    polled: list[tuple[int, int]] = []
    junk = handoff("rz-h0", "t0", "p", "q", run_id="rz").to_json()

    def written(p: int, _offset: int) -> None:
        topic.append(None, junk, partition=p)

    stand_in_kafka(monkeypatch, topic, polled, written)
    report, _, refused, _ = replay_decisions(SETTINGS, ReplayScope(), STRICTER, KEY, 1, 3600.0)
    assert polled[0][0] == partition_for(b"*", 2)
    # what each partition held, the one appended before its first fetch, the one at its end
    assert len(polled) <= 1 + 16 + 2 * 2 and _exit_code(report) == 1
    assert len(refused) <= 2 and all("not a decision" in line for line in refused)


@pytest.mark.parametrize("threads", [True, None], ids=["threads", "as-is"])
def test_replay_decisions_in_several_processes_gives_the_same_report(
    monkeypatch: pytest.MonkeyPatch, threads: bool | None
) -> None:
    """--jobs 2 gives --jobs 1's report on either path: a forked pool reading partitions
    (``replay_partitions``, when this process runs one thread) or the forkserver pool
    deciding the pieces this process reads (``replay_pieces``, when threads run: forking
    then is unsafe). Which one depends on the threads this process runs (a test file run
    alone has none, after other tests it has some: until session 24 this test expected
    the second and failed alone): "threads" takes the second whatever runs, "as-is" the
    one the process's threads choose (forking is never forced where threads run)."""
    topic = DecisionsTopic(2)
    worker = Worker(topic, BASELINE)
    for n in range(4):
        for r in range(300):
            worker.decide(handoff(f"r{r}-h{n}", f"t{n}", "p", "q", run_id=f"r{r}"), 10 + n)
    from baton.cli import replay_decisions as module

    one, _ = _replayed(monkeypatch, topic, jobs=1)
    monkeypatch.setattr(module, "_PARALLEL_ROWS", 100)  # (a pool for 1,200 decisions)
    forked = False if threads else module.replay_pool._one_thread()
    if threads:
        monkeypatch.setattr(module.replay_pool, "_one_thread", lambda: False)
    monitored: list[tuple[str, int]] = []
    pieces = module.replay_pool.replay_pieces
    monkeypatch.setattr(
        module.replay_pool,
        "replay_pieces",
        lambda *a, **k: monitored.append(("pieces", a[5])) or pieces(*a, **k),
    )
    partitions = module.replay_partitions.replay_partitions
    monkeypatch.setattr(
        module.replay_partitions,
        "replay_partitions",
        lambda job, pool, *a: (
            monitored.append(("partitions", pool._max_workers)) or partitions(job, pool, *a)
        ),
    )
    two, _ = _replayed(monkeypatch, topic, jobs=2)
    assert monitored == [("partitions", 2) if forked else ("pieces", 2)]
    assert _summary(one) == _summary(two) and len(one.runs) == 300


def test_the_cli_reads_gov_decisions_and_keeps_redecide_opt_in(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    from pathlib import Path

    import yaml

    from baton.cli.main import cli
    from tests.unit.test_engine_support import DEFAULT_POLICY_YAML

    doc = yaml.safe_load(DEFAULT_POLICY_YAML)
    doc["multi_agent"]["max_handoffs"] = 2
    stricter = Path(str(tmp_path)) / "stricter.yaml"
    stricter.write_text(yaml.safe_dump(doc))
    topic = DecisionsTopic(2)
    _three_runs(topic)
    stand_in_kafka(monkeypatch, topic)
    monkeypatch.setenv("BATON_AUDIT_CHAIN_KEY", KEY.decode())
    monkeypatch.setenv("BATON_PARTITIONS", "2")
    args = ["replay", "--from-kafka", "--bootstrap", "127.0.0.1:1", "--policy", str(stricter)]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 1, done.output
    assert "gov.decisions" in done.output and "4 runs change" in done.output
    done = CliRunner().invoke(cli, [*args, "--baseline", str(stricter)])
    assert done.exit_code == 2 and "--redecide" in done.output
    done = CliRunner().invoke(cli, ["replay", "--redecide", "--policy", str(stricter)])
    assert done.exit_code == 2 and "--from-kafka" in done.output


def _peak(monkeypatch: pytest.MonkeyPatch, partitions: int, runs_each: int) -> int:
    """The peak of memory allocated while replaying a topic of ``partitions`` partitions of
    ``runs_each`` runs of 24 handoffs each (few runs: the report holds one outcome a run)."""
    import tracemalloc

    topic = DecisionsTopic(partitions)
    worker = Worker(topic, BASELINE)
    names = (f"r{n}" for n in range(10**6))
    per: dict[int, int] = dict.fromkeys(range(partitions), 0)
    runs = []
    for run in names:
        p = partition_for(run.encode(), partitions)
        if per[p] < runs_each:
            per[p] += 1
            runs.append(run)
        if len(runs) == partitions * runs_each:
            break
    for n in range(24):
        for run in runs:
            worker.decide(handoff(f"{run}-h{n}", f"t{n}", "p", "q", run_id=run), 10 + n)
    worker = None  # type: ignore[assignment]  (its states: not the replay's memory)
    stand_in_kafka(monkeypatch, topic)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=partitions)
    tracemalloc.start()
    try:
        replay_decisions(settings, ReplayScope(), BASELINE, KEY, 1, 3600.0)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_holds_one_partition_not_the_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four partitions of 25 runs each peak near one partition of 25 runs, not four times it:
    at most a partition and the last piece handed out of the one before (here a whole
    partition: ~1.75 times one); the policy records' partition, read first, is freed in turn
    (held to the end, ~2.65 times)."""
    _peak(monkeypatch, 1, 5)  # (the caches a first replay fills)
    one = _peak(monkeypatch, 1, 25)
    four = _peak(monkeypatch, 4, 25)
    assert four < 2.1 * one, (one, four)


def test_a_partition_read_before_that_speaks_late_is_not_read_as_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After each partition, the one before says its last record and its end again: the next
    partition is read whole (its end is its own), and the late record is not read as its."""
    topic = DecisionsTopic(2)
    _three_runs(topic)
    stand_in_kafka(monkeypatch, topic, late=True)
    report, _, refused, _ = replay_decisions(SETTINGS, ReplayScope(), STRICTER, KEY, 1, 3600.0)
    assert report.broken == [] and refused == [] and _exit_code(report) == 1
    assert {r.run_id: r.decisions for r in report.runs} == dict.fromkeys(
        ("ra", "rb", "rc", "rd"), 4
    )


def test_a_worker_that_decided_a_step_again_after_a_crash_is_read_as_the_audit_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ra's third handoff decided, published, and the worker killed before its state was
    written: its successor (the state from before, the same request redelivered) decides it
    again a second later, under the same id, linked anew, and goes on. The last record
    stands (FINAL's), and the run replays as decided (not broken)."""
    import copy

    topic = DecisionsTopic(2)
    worker = Worker(topic, BASELINE)
    for n in range(2):
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), 10 + n)
    before = copy.deepcopy(worker.states)
    (first,) = worker.decide(handoff("ra-h2", "t2", "p", "q", run_id="ra"), 12)
    worker.states.clear()
    worker.states.update(before)
    (again,) = worker.decide(handoff("ra-h2", "t2", "p", "q", run_id="ra"), 13)
    assert again.decision_id == first.decision_id and again.chain_hash != first.chain_hash
    worker.decide(handoff("ra-h3", "t3", "p", "q", run_id="ra"), 14)
    for policy, code in ((BASELINE, 0), (STRICTER, 1)):
        report, _ = _replayed(monkeypatch, topic, policy)
        assert report.broken == [] and _exit_code(report) == code, report.partial
        assert [(r.run_id, r.decisions) for r in report.runs] == [("ra", 4)]


@pytest.mark.parametrize("fetched", [-1, 1])
def test_a_fetch_that_reports_no_end_or_a_short_one_does_not_cut_a_partition(
    monkeypatch: pytest.MonkeyPatch, fetched: int
) -> None:
    """A fetch's high watermark unknown (-1: read to the partition's end) or short of the one
    ListOffsets gave at the start: every record is read."""
    topic = DecisionsTopic(2)
    _three_runs(topic)
    stand_in_kafka(monkeypatch, topic, fetched=fetched)
    report, *_ = replay_decisions(SETTINGS, ReplayScope(), STRICTER, KEY, 1, 3600.0)
    assert {r.run_id: r.decisions for r in report.runs} == dict.fromkeys(
        ("ra", "rb", "rc", "rd"), 4
    )


def test_a_refusal_decided_again_after_a_crash_is_no_conflict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rb's request refused worker_run_limit (unlinked: it changes nothing), decided again a
    second later after the worker restarted (the batch redelivered): the last record stands,
    as in FINAL; not broken. A writer's copy moving it before --since does not take rb out of
    the range (the records FINAL replaced count)."""
    topic = DecisionsTopic(1)
    worker = Worker(topic, BASELINE, max_runs=1)
    worker.decide(handoff("ra-h0", "t0", "p", "q", run_id="ra"), 10)
    (first,) = worker.decide(handoff("rb-h0", "t0", "p", "q", run_id="rb"), 11)
    (again,) = worker.decide(handoff("rb-h0", "t0", "p", "q", run_id="rb"), 12, again=1)
    assert first.reason == again.reason == "worker_run_limit" and first.chain_hash is None
    assert first.decision_id == again.decision_id and first.decided_at != again.decided_at
    report, _ = _replayed(monkeypatch, topic, BASELINE)
    assert report.broken == [] and _exit_code(report) == 0, report.partial
    # a writer's copy of it decided at 1 s (FINAL's row now): --since 5 s still takes rb
    topic.append(b"rb", json_with(again, decided_at=at(1)))
    scoped, _ = _replayed(monkeypatch, topic, BASELINE, ReplayScope(since=at(5)))
    assert "rb" in {r.run_id for r in scoped.runs} | set(scoped.partial)
