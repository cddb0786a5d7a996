"""Workers killed with SIGKILL mid-stream: state is restored and counts stay exact."""

from __future__ import annotations

import re
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from baton.schemas.decision import Decision, Outcome, Phase
from baton.schemas.events import HandoffRequested
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for
from baton.streams.topics import TopicCatalog
from tests.helpers import handoff_round, start_rounds, wait_for
from tests.integration.conftest import PARTITIONS, TEST_POLICY
from tests.stack import Collector, EventSender, WorkerProcess, fresh_topics, wait_deciding

pytestmark = pytest.mark.faults

RUNS = 150
HANDOFFS = 10  # max_handoffs is 8: two stops per run


@pytest.fixture(params=["at_least_once", "exactly_once"])
def two_workers(
    broker: EmbeddedBroker, tmp_path, request: pytest.FixtureRequest
) -> Iterator[tuple[list[WorkerProcess], TopicCatalog, str, str]]:
    guarantee = {"BATON_PROCESSING_GUARANTEE": request.param}
    if request.param == "at_least_once":
        # nothing committed between the rebalance and the kill: the survivor reads again
        # every record the killed worker decided, most of them past the six decisions a run
        # keeps (a redelivery older than those was answered stop reply_not_kept after its
        # allow: CI at b7d4158, with Faust's 2.8 s commit interval and a late kill)
        guarantee["BATON_COMMIT_INTERVAL_S"] = "60"
    prefix = f"f{uuid.uuid4().hex[:8]}."
    (tmp_path / "policy.yaml").write_text(TEST_POLICY)
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    workers = [
        WorkerProcess(
            broker.bootstrap,
            prefix,
            tmp_path,
            partitions=PARTITIONS,
            policy=tmp_path / "policy.yaml",
            name="w1",
            extra_env=guarantee,
        )
    ]
    try:
        wait_deciding(broker.bootstrap, catalog)
        workers.append(
            WorkerProcess(
                broker.bootstrap,
                prefix,
                tmp_path,
                partitions=PARTITIONS,
                policy=tmp_path / "policy.yaml",
                name="w2",
                extra_env=guarantee,
            )
        )
        # the second worker has joined once it owns partitions and has recovered them
        wait_for(
            lambda: (
                ("ready" in workers[1].log() and "Assigned" in workers[1].log())
                or ("assigned" in workers[1].log().lower() and "ready" in workers[1].log())
            ),
            60,
            interval=0.2,
            message=lambda: "w2 to join: " + workers[1].log()[-2000:],
        )
        wait_deciding(broker.bootstrap, catalog)
        yield workers, catalog, broker.bootstrap, request.param
    finally:
        for w in workers:
            w.stop()


def _positions(bootstrap: str, topic: str, group: str) -> str:
    """Committed offset vs end of each partition, for failure messages."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 0})
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        committed = c.committed(tps, timeout=5)
        ends = [c.get_watermark_offsets(tp, timeout=5)[1] for tp in tps]
        return ", ".join(
            f"p{t.partition}: committed {t.offset} end {e}"
            for t, e in zip(committed, ends, strict=True)
        )
    except Exception as exc:  # diagnostics only
        return f"(positions unavailable: {exc})"
    finally:
        c.close()


def _committed_past(bootstrap: str, topic: str, group: str, decided: list[Decision]) -> bool:
    """``group`` has committed, on every partition, past the last request a decision in
    ``decided`` answered (a decision names its request's partition and offset)."""
    from confluent_kafka import Consumer, TopicPartition

    need: dict[int, int] = {}
    for d in decided:
        if d.partition is not None and d.offset is not None:
            need[d.partition] = max(need.get(d.partition, 0), d.offset + 1)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 0})
    try:
        committed = c.committed([TopicPartition(topic, p) for p in need], timeout=5)
    finally:
        c.close()
    return bool(need) and all(tp.offset >= need[tp.partition] for tp in committed)


def _owned(worker: WorkerProcess) -> set[int] | None:
    lines = re.findall(r"owns partitions \[([0-9, ]*)\]", worker.log())
    return {int(p) for p in lines[-1].split(",") if p.strip()} if lines else None


def _split(workers: list[WorkerProcess]) -> bool:
    owned = [_owned(w) for w in workers]
    return (
        all(owned) and set().union(*owned) == set(range(PARTITIONS)) and not (owned[0] & owned[1])
    )


def test_survivor_takes_over_and_nothing_is_double_counted(two_workers) -> None:
    workers, catalog, bootstrap, guarantee = two_workers
    decisions = Collector(bootstrap, catalog.decisions)
    sender = EventSender(bootstrap, catalog.requests)
    runs = [f"run_fo_{uuid.uuid4().hex[:6]}_{i}" for i in range(RUNS)]
    # handoff i of every run, then its completion, round after round, ~3 s in all
    t, done = start_rounds(sender.send, runs, HANDOFFS, 0.5)
    try:
        # at-least-once: 12 of a run's 20 decisions made, its first handoffs past the kept six.
        # (Exactly-once kills early, as before session 26: a kill inside a transaction leaves
        # it open on Tansu, which never aborts it, and readers of its partitions stall: CI
        # at 4be28f1 under load; the later the kill, the busier the worker when it comes)
        late = guarantee == "at_least_once"
        wait_for(lambda: len(decisions.records) > RUNS * (12 if late else 4), 30, message="traffic")
        workers[0].kill9()
        t.join(60)
        assert done.is_set()

        def complete() -> bool:
            return all(
                len({d.decision_id for d in decisions.for_run(r)}) >= 2 * HANDOFFS for r in runs
            )

        def missing() -> str:
            lines = []
            for r in runs:
                got = {(d.request_id, d.phase) for d in decisions.for_run(r)}
                want = {
                    (f"{r}-h{i}", phase)
                    for i in range(1, HANDOFFS + 1)
                    for phase in (Phase.PRE_HANDOFF, Phase.POST_HANDOFF)
                }
                if want - got:
                    part = partition_for(r.encode(), PARTITIONS)
                    lines.append(f"  {r} (p{part}): missing {sorted(want - got)}")
            group = "baton-" + catalog.requests.split(".", 1)[0]
            return (
                f"{len(lines)} runs incomplete:\n"
                + "\n".join(lines[:10])
                + f"\nrequests: {_positions(bootstrap, catalog.requests, group)}"
            )

        wait_for(
            complete,
            90,
            interval=0.5,
            message=lambda: (
                "all decisions after failover: "
                + missing()
                + "\n--- w1\n"
                + workers[0].log()[-1500:]
                + "\n--- w2\n"
                + workers[1].log()[-2500:]
            ),
        )
        assert workers[1].alive(), workers[1].log()
        for run in runs:
            by_request: dict[str, set[str]] = defaultdict(set)
            pre = {}
            for d in decisions.for_run(run):
                if d.phase == Phase.PRE_HANDOFF:
                    by_request[d.request_id].add(d.outcome)
                    pre[d.request_id] = d
            # one answer per request, however often it was redelivered
            split = {r for r, o in by_request.items() if len(o) != 1}
            assert not split, (
                f"{run}: requests answered both ways:\n"
                + "\n".join(
                    f"  {d.request_id} {d.outcome} {d.reason} by {d.worker} from offset "
                    f"{d.offset} id {d.decision_id[:12]} handoffs {d.handoff_count}"
                    for d in decisions.for_run(run)
                    if d.phase == Phase.PRE_HANDOFF
                )
                + "\n--- w1\n"
                + workers[0].log()[-3000:]
                + "\n--- w2\n"
                + workers[1].log()[-3000:]
            )
            allowed = [r for r, o in by_request.items() if Outcome.ALLOW in o]
            assert len(allowed) == 8, (run, sorted(by_request.items()))
            assert max(d.handoff_count for d in pre.values()) == 8
            posts = [d for d in decisions.for_run(run) if d.phase == Phase.POST_HANDOFF]
            # spend counted once per completion: 10 completions x 0.5
            assert max(d.spent_usd for d in posts) == pytest.approx(HANDOFFS * 0.5)
            if guarantee == "exactly_once":
                # and every decision published once: the killed worker's open transaction
                # was aborted, its successor's batches committed once each
                records = decisions.for_run(run)
                if len(records) != 2 * HANDOFFS:
                    pytest.fail(
                        f"{run}: {len(records)} decision records, expected {2 * HANDOFFS}:\n"
                        + "\n".join(
                            f"  {d.request_id} {d.phase} by {d.worker} from offset {d.offset}"
                            f" decided {d.decided_at:%H:%M:%S.%f} at {where}"
                            for d, where in zip(records, decisions.positions[run], strict=True)
                        )
                        + "\n--- w1\n"
                        + workers[0].log()[-2500:]
                    )
    finally:
        done.set()
        t.join(10)
        decisions.close()


class _Restart:
    """One worker on fresh topics, the runs it decides, and its successor after a kill."""

    def __init__(
        self, broker: EmbeddedBroker, tmp_path, tag: str, runs: int, env: dict | None = None
    ) -> None:
        self.broker, self.tmp_path, self.env = broker, tmp_path, env
        self.prefix = f"{tag}{uuid.uuid4().hex[:8]}."
        (tmp_path / "policy.yaml").write_text(TEST_POLICY)
        self.catalog = fresh_topics(broker.bootstrap, self.prefix, PARTITIONS)
        self.decisions = Collector(broker.bootstrap, self.catalog.decisions)
        self.sender = EventSender(broker.bootstrap, self.catalog.requests)
        self.now = datetime.now(UTC)
        self.runs = [f"run_{tag}_{i}_{uuid.uuid4().hex[:4]}" for i in range(runs)]

    def worker(self, name: str) -> WorkerProcess:
        return WorkerProcess(
            self.broker.bootstrap,
            self.prefix,
            self.tmp_path,
            partitions=PARTITIONS,
            policy=self.tmp_path / "policy.yaml",
            name=name,
            extra_env=self.env,
        )

    def handoffs(self, i: int) -> list[HandoffRequested]:
        """The i-th handoff of every run (request id ``<run>-<i>``, task ``t<i>``)."""
        return [
            HandoffRequested(
                request_id=f"{r}-{i}",
                run_id=r,
                task_id=f"t{i}",
                from_agent="planner",
                to_agent="researcher",
                event_time=self.now,
            )
            for r in self.runs
        ]


def test_restart_after_a_batched_changelog_write_restores_every_run(
    broker: EmbeddedBroker, tmp_path
) -> None:
    """Tansu reports a partition's end as (first offset of its last batch) + 1; Faust recovery
    stops there. Every run written in one big batch must still come back after a restart."""
    rs = _Restart(broker, tmp_path, "rs", 300)
    decisions, runs, catalog = rs.decisions, rs.runs, rs.catalog
    group = "baton-" + rs.prefix.rstrip(".")
    first = rs.worker("a")
    second = None
    try:
        wait_deciding(rs.broker.bootstrap, catalog)
        rs.sender.send(rs.handoffs(1))
        wait_for(lambda: all(decisions.for_run(r) for r in runs), 30, message="first decisions")
        # the offsets of every answered request committed: the restart must rely on the changelog
        wait_for(
            lambda: _committed_past(
                rs.broker.bootstrap, catalog.requests, group, list(decisions.records)
            ),
            30,
            interval=0.2,
            message=lambda: (
                "the first worker's commit: "
                + _positions(broker.bootstrap, catalog.requests, group)
            ),
        )
        first.kill9()
        second = rs.worker("b")
        rs.sender.send(rs.handoffs(2))
        wait_for(
            lambda: all(len(decisions.for_run(r)) >= 2 for r in runs),
            90,
            interval=0.5,
            message=lambda: (
                f"second decisions: "
                f"{sum(len(decisions.for_run(r)) >= 2 for r in runs)} of {len(runs)} runs; "
                f"{_positions(broker.bootstrap, catalog.requests, group)}"
                f"\n" + second.log()[-2000:]
            ),
        )
        lost = [r for r in runs if max(d.handoff_count for d in decisions.for_run(r)) != 2]
        assert lost == [], f"{len(lost)} runs lost their state on restart"
    finally:
        first.stop()
        if second is not None:
            second.stop()
        decisions.close()


def test_exactly_once_restart_publishes_every_decision_once(
    broker: EmbeddedBroker, tmp_path
) -> None:
    """exactly_once: a worker killed with SIGKILL right after deciding, and its successor,
    together publish each decision exactly once (read_committed), with the state intact."""
    rs = _Restart(broker, tmp_path, "x", 200, {"BATON_PROCESSING_GUARANTEE": "exactly_once"})
    decisions, runs, catalog = rs.decisions, rs.runs, rs.catalog
    first = rs.worker("a")
    second = None
    try:
        wait_deciding(rs.broker.bootstrap, catalog)
        rs.sender.send(rs.handoffs(1))
        wait_for(lambda: all(decisions.for_run(r) for r in runs), 30, message="first decisions")
        first.kill9()  # no grace: the offsets went with the decisions' transactions
        second = rs.worker("b")
        rs.sender.send(rs.handoffs(2))
        wait_for(
            lambda: all(len(decisions.for_run(r)) >= 2 for r in runs),
            90,
            interval=0.5,
            message=lambda: "second decisions\n" + second.log()[-3000:],
        )
        time.sleep(2)  # anything published twice would have arrived by now
        for run in runs:
            got = decisions.for_run(run)
            if sorted(d.request_id for d in got) != [f"{run}-1", f"{run}-2"]:
                pytest.fail(
                    f"{run}: {[(d.request_id, d.decided_at.isoformat()) for d in got]} at "
                    f"{decisions.positions[run]}\n{second.log()}"
                )
            assert [d.handoff_count for d in got] == [1, 2], run
    finally:
        first.stop()
        if second is not None:
            second.stop()
        decisions.close()


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="thread"),
        # a soak (25 s): the inline loop's stop is also covered by test_consumer_loop.py
        pytest.param({"BATON_CONSUMER_LOOP": "inline"}, id="inline", marks=pytest.mark.soak),
        pytest.param({"BATON_PROCESSING_GUARANTEE": "exactly_once"}, id="exactly_once"),
    ],
)
def test_sigterm_in_the_middle_of_a_backlog_loses_and_double_counts_nothing(
    broker: EmbeddedBroker, tmp_path, env: dict[str, str]
) -> None:
    """The stop every rolling deploy sends: SIGTERM while the worker works through a backlog
    (big batches in flight, their states and offsets not yet written). It exits cleanly, and
    it and its successor answer every request once and count every completion once: a
    graceful stop commits only what was made durable, as a kill -9 relies on."""
    rounds, cost = 6, 0.5
    rs = _Restart(broker, tmp_path, "st", 2000, env)
    decisions, runs, catalog = rs.decisions, rs.runs, rs.catalog
    first = rs.worker("a")
    second = None
    try:
        wait_deciding(rs.broker.bootstrap, catalog)
        for i in range(1, rounds + 1):  # 24,000 events at once: a backlog of big batches
            rs.sender.send(handoff_round(runs, i, cost, rs.now))
        wait_for(lambda: len(decisions.records) > 1000, 30, message="the backlog to be decided")
        first.stop()  # SIGTERM in the middle of it
        assert first.proc.returncode == 0, first.log()
        second = rs.worker("b")
        want = 2 * rounds

        def answered() -> int:
            return sum(len({d.decision_id for d in decisions.for_run(r)}) >= want for r in runs)

        wait_for(
            lambda: answered() == len(runs),
            120,
            interval=0.5,
            message=lambda: f"{answered()} of {len(runs)} runs answered\n" + second.log()[-2500:],
        )
        assert "Traceback" not in first.log(), first.log()
        # the premise: the stop came in the middle (the successor answered part of the backlog)
        assert len({d.worker for d in decisions.records}) == 2, "the stop came after the backlog"
        for run in runs:
            got = decisions.for_run(run)
            answers: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
            for d in got:
                answers[d.request_id, d.phase].add((d.decision_id, d.outcome))
            # one answer per request and phase, however often it was redelivered
            assert len(answers) == want and all(len(a) == 1 for a in answers.values()), (
                run,
                sorted(answers.items()),
            )
            assert all(d.outcome == Outcome.ALLOW for d in got if d.phase == Phase.PRE_HANDOFF)
            assert max(d.handoff_count for d in got) == rounds, run
            # each completion's cost counted once, across the stop
            posts = [d for d in got if d.phase == Phase.POST_HANDOFF]
            assert max(d.spent_usd for d in posts) == pytest.approx(rounds * cost), run
            if env.get("BATON_PROCESSING_GUARANTEE") == "exactly_once":
                assert len(got) == want, (run, len(got), "published more than once")
    finally:
        first.stop()
        if second is not None:
            second.stop()
        decisions.close()
