"""`baton audit verify` against an audit written by real workers and a real sink: every chain
holds after ordinary traffic (approvals granted and expired, spend in Decimal, a finish) and
after a worker is killed mid-stream; rows deleted, altered or forged straight in chDB are
named, run by run, with exit 1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from baton.processors.chain import link
from baton.processors.engine import decide
from baton.processors.probe import wait_until_deciding
from baton.schemas.decision import Decision, Outcome
from baton.schemas.events import ApprovalGranted, HandoffCompleted, HandoffRequested, RunFinished
from baton.schemas.policy import parse_policy
from baton.streams.embedded import EmbeddedBroker
from baton.streams.topics import TopicCatalog
from tests.audit_support import produce_decisions
from tests.helpers import start_rounds, wait_for
from tests.integration.conftest import PARTITIONS, TEST_POLICY
from tests.stack import Collector, EventSender, SinkProcess, WorkerProcess, fresh_topics

pytestmark = pytest.mark.integration

CHAIN_KEY = "test-chain-key-" + uuid.uuid4().hex
_BATON = (sys.executable, "-m", "baton.cli")


@dataclass
class Audit:
    bootstrap: str
    prefix: str
    workdir: Path
    catalog: TopicCatalog
    workers: list[WorkerProcess] = field(default_factory=list)
    sink: SinkProcess | None = None
    decisions: Collector | None = None

    @property
    def chdb(self) -> Path:
        return self.workdir / "chdb"

    def add_worker(self, name: str) -> WorkerProcess:
        w = WorkerProcess(
            self.bootstrap,
            self.prefix,
            self.workdir,
            partitions=PARTITIONS,
            policy=self.workdir / "policy.yaml",
            name=name,
            extra_env={"BATON_AUDIT_CHAIN_KEY": CHAIN_KEY},
        )
        self.workers.append(w)
        return w

    def verify(self, *args: str, key: str | None = CHAIN_KEY) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        if key is not None:
            env["BATON_AUDIT_CHAIN_KEY"] = key
        return subprocess.run(
            [*_BATON, "audit", "verify", "--dsn", f"chdb://{self.chdb}", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def audited_all(self) -> int:
        """Wait until the sink holds every decision the workers published; their number."""
        assert self.decisions is not None and self.sink is not None
        collected = self.decisions

        def caught_up() -> int:
            want = len({d.decision_id for d in collected.records})  # type: ignore[union-attr]
            got = self.sink.query("SELECT count() FROM governance.decisions FINAL")[0][0]
            return want if want and got == want else 0

        return wait_for(caught_up, 60, interval=0.3, message="the sink to hold every decision")


@pytest.fixture
def audit(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Audit]:
    prefix = f"v{uuid.uuid4().hex[:8]}."
    (tmp_path / "policy.yaml").write_text(TEST_POLICY)  # refunds need approval, ttl 3 s
    (tmp_path / "chdb").mkdir()
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    a = Audit(broker.bootstrap, prefix, tmp_path, catalog)
    try:
        a.add_worker("w1")
        a.sink = SinkProcess(
            broker.bootstrap, prefix, a.chdb, tmp_path / "sink.log", partitions=PARTITIONS
        )
        a.decisions = Collector(broker.bootstrap, catalog.decisions)
        wait_until_deciding(
            {"bootstrap.servers": broker.bootstrap},
            catalog.requests,
            catalog.decisions,
            PARTITIONS,
            60,
        )
        a.sink.wait_ready()
        yield a
    finally:
        if a.decisions is not None:
            a.decisions.close()
        if a.sink is not None and a.sink.alive():
            a.sink.stop()
        for w in a.workers:
            w.stop()


def _story(run: str, now: datetime) -> list[HandoffRequested | HandoffCompleted]:
    """Two handoffs with spend (cents and micro-dollars), then a refund that needs approval."""
    return [
        HandoffRequested(
            request_id=f"{run}-1",
            run_id=run,
            task_id="plan",
            from_agent="orchestrator",
            to_agent="planner",
            event_time=now,
        ),
        HandoffCompleted(
            request_id=f"{run}-1",
            run_id=run,
            task_id="plan",
            agent="planner",
            cost_usd=0.1,
            tool_calls=2,
            event_time=now,
        ),
        HandoffRequested(
            request_id=f"{run}-2",
            run_id=run,
            task_id="research",
            parent_task_id="plan",
            from_agent="planner",
            to_agent="researcher",
            event_time=now,
        ),
        HandoffCompleted(
            request_id=f"{run}-2",
            run_id=run,
            task_id="research",
            agent="researcher",
            cost_usd=0.123457,
            tool_calls=1,
            event_time=now,
        ),
        HandoffRequested(
            request_id=f"{run}-3",
            run_id=run,
            task_id="refund",
            parent_task_id="research",
            from_agent="researcher",
            to_agent="billing",
            action="billing.refund.create",
            event_time=now,
        ),
    ]


def _traffic(a: Audit, runs: list[str]) -> None:
    """Every run's story; half the refunds granted, the other half left to expire (3 s);
    every granted run finished."""
    assert a.decisions is not None
    now = datetime.now(UTC)
    sender = EventSender(a.bootstrap, a.catalog.requests)
    sender.send([e for run in runs for e in _story(run, now)])
    asked = {
        run: wait_for(
            lambda run=run: next(
                (d for d in a.decisions.for_run(run) if d.outcome == Outcome.APPROVAL_REQUIRED),
                None,
            ),
            30,
            message=f"the refund of {run} to wait for approval",
        )
        for run in runs
    }
    granted = runs[::2]
    EventSender(a.bootstrap, a.catalog.approvals).send(
        ApprovalGranted(
            approval_id=asked[run].approval_id,
            run_id=run,
            approver="finance",
            event_time=datetime.now(UTC),
        )
        for run in granted
    )
    sender.send(RunFinished(run_id=run, event_time=datetime.now(UTC)) for run in granted)
    # the expiries are decided by the worker's sweep once the 3 s TTL passed
    wait_for(
        lambda: all(
            any(d.reason == "approval_expired" for d in a.decisions.for_run(run))
            for run in runs[1::2]
        ),
        30,
        message="the ungranted approvals to expire",
    )


def _runs_checked(summary: str) -> int:
    m = re.search(r"audit verify: (\d+) runs", summary)
    assert m, summary
    return int(m.group(1))


_TAMPER = """
import sys, clickhouse_connect
from datetime import UTC, datetime, timedelta
from baton.schemas.decision import CHAIN_FIELDS, chain_hash
from baton.sinks.chain_verify import CHAIN_COLUMNS

deleted_run, altered_run, forged_run = sys.argv[2:5]
c = clickhouse_connect.get_client(interface="chdb", path=sys.argv[1])
cols = ", ".join(f"`{x}`" for x in CHAIN_COLUMNS)

def chain(run):
    rows = c.query(
        f"SELECT {cols} FROM governance.decisions FINAL WHERE run_id = {{r:String}} "
        "AND chain_hash IS NOT NULL ORDER BY decided_at, audit_partition, audit_offset",
        parameters={"r": run},
    ).result_rows
    assert len(rows) >= 3, (run, len(rows))
    return rows

# deleted: a row in the middle of a chain (its successor now names a row that is gone)
gone = chain(deleted_run)[1][1]
c.command(f"ALTER TABLE governance.decisions DELETE WHERE decision_id = '{gone}' "
          "SETTINGS mutations_sync = 2")
# altered: the spend on a post_handoff row, made smaller after the fact
changed = chain(altered_run)[1][1]
c.command(f"ALTER TABLE governance.decisions UPDATE spent_usd = 0.01 "
          f"WHERE decision_id = '{changed}' SETTINGS mutations_sync = 2")
# forged: an allow appended after the run's last row, linked as the scheme says, but by
# someone without BATON_AUDIT_CHAIN_KEY
last = [v.replace(tzinfo=UTC) if isinstance(v, datetime) else v for v in chain(forged_run)[-1]]
fake = dict(zip(CHAIN_COLUMNS, last))
fake.update(decision_id="forged-1", request_id="forged-1", outcome="allow", reason="ok",
            to_agent="mallory", chain_prev=last[3])
fake["chain_hash"] = chain_hash(b"", fake["chain_prev"], [fake[f] for f in CHAIN_FIELDS])
c.insert("governance.decisions", [list(fake.values())], column_names=list(fake))
print(gone, changed, flush=True)
"""


def test_verify_passes_on_a_real_audit_and_names_deleted_altered_and_forged_rows(
    audit: Audit,
) -> None:
    runs = [f"run_v{i}_{uuid.uuid4().hex[:4]}" for i in range(8)]
    _traffic(audit, runs)
    rows = audit.audited_all()

    intact = audit.verify()
    assert intact.returncode == 0, intact.stdout + intact.stderr
    # our runs and the start-up probe's
    assert _runs_checked(intact.stdout) >= len(runs), intact.stdout
    assert "every chain holds" in intact.stdout and "FAIL" not in intact.stdout
    assert f"of {rows} read" in intact.stdout
    one = audit.verify("--run", runs[0])
    assert one.returncode == 0 and "audit verify: 1 run," in one.stdout, one.stdout
    recent = audit.verify("--since", "1h")
    assert recent.returncode == 0 and _runs_checked(recent.stdout) >= len(runs), recent.stdout
    # the workers' key matters: without it no row hashes right
    keyless = audit.verify(key=None)
    assert keyless.returncode == 1 and "is the chain key (BATON_AUDIT_CHAIN_KEY" in keyless.stderr
    assert "; no chain key (BATON_AUDIT_CHAIN_KEY" in keyless.stdout

    # one process per chDB directory: the sink lets go, the attacker writes, verify reads
    assert audit.sink is not None and audit.sink.stop() == 0
    deleted_run, altered_run, forged_run = runs[0], runs[1], runs[2]
    tamper = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_TAMPER), str(audit.chdb), *runs[:3]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tamper.returncode == 0, tamper.stderr
    _gone, changed = tamper.stdout.split()

    caught = audit.verify()
    assert caught.returncode == 1, caught.stdout + caught.stderr
    failed = {
        line.split()[1]: line for line in caught.stdout.splitlines() if line.startswith("FAIL ")
    }
    assert set(failed) == {deleted_run, altered_run, forged_run}, caught.stdout
    assert "missing: decision" in failed[deleted_run]
    assert f"altered: decision {changed} " in failed[altered_run]
    assert "altered: decision forged-1 " in failed[forged_run]
    assert "3 runs FAILED" in caught.stdout
    # one run at a time: the others still verify
    assert audit.verify("--run", runs[3]).returncode == 0
    assert audit.verify("--run", deleted_run).returncode == 1


def _redecided_after_a_crash(run: str, split: bool) -> list[list[Decision]]:
    """A run's decisions as the audit gets them when a worker dies between publishing a
    decision and writing the state that remembers it: the next owner decides the same event
    again from the older state (the same decision_id and chain_prev, another decided_at and
    so another chain_hash) and chains what follows onto its own copy. With ``split`` the two
    copies reach the sink in separate batches."""
    policy = parse_policy(TEST_POLICY, "test")
    key = CHAIN_KEY.encode()
    t0 = datetime.now(UTC)

    def step(state, event, seconds: float, worker: str):  # type: ignore[no-untyped-def]
        after, decided = decide(state, event, policy, t0 + timedelta(seconds=seconds))
        for d in decided:
            d.worker = worker
        link(after, decided, key)
        return after, decided

    first = _story(run, t0)
    s1, d1 = step(None, first[0], 0, "w1")
    _, lost = step(s1, first[1], 1, "w1")  # published; the state that held it was not
    s2, again = step(s1, first[1], 8, "w2")  # decided again by the survivor
    _, d3 = step(s2, first[2], 9, "w2")
    assert [d.decision_id for d in lost] == [d.decision_id for d in again]
    assert [d.chain_hash for d in lost] != [d.chain_hash for d in again]
    return [d1 + lost, again + d3] if split else [d1 + lost + again + d3]


def test_a_decision_decided_again_after_a_crash_keeps_the_chain_whole(audit: Audit) -> None:
    """The audit keeps one row per decision_id (ReplacingMergeTree, FINAL): it must be the
    copy the run's later decisions link to, the last one published, whether both copies
    reach the sink in one batch or in two. (Published the other way round, verify reports
    the run as missing a row: the test's failing mode, checked by hand.)"""
    assert audit.sink is not None
    runs = {f"run_crash_{uuid.uuid4().hex[:6]}": split for split in (False, True)}
    for run, split in runs.items():
        for part in _redecided_after_a_crash(run, split):
            produce_decisions(audit.bootstrap, audit.catalog.decisions, part)
            # the sink inserts a partition's records in order: once the part's last copy is
            # in, so is everything before it
            last = part[-1]
            wait_for(
                lambda last=last: audit.sink.query(
                    "SELECT count() FROM governance.decisions WHERE decision_id = "
                    f"'{last.decision_id}' AND chain_hash = '{last.chain_hash}'"
                )[0][0],
                30,
                message="the sink to insert the decisions",
            )
    for run in runs:
        result = audit.verify("--run", run)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.faults
def test_verify_passes_after_a_worker_is_killed_mid_stream(audit: Audit) -> None:
    """Two workers; one is killed with SIGKILL while runs flow. The survivor re-decides what
    the dead one had not committed: the re-emitted decisions keep their links, and every
    chain in the audit still holds."""
    conf = {"bootstrap.servers": audit.bootstrap}
    second = audit.add_worker("w2")
    wait_for(
        lambda: "owns partitions" in second.log(),
        60,
        interval=0.2,
        message=lambda: "w2 to join: " + second.log()[-2000:],
    )
    wait_until_deciding(conf, audit.catalog.requests, audit.catalog.decisions, PARTITIONS, 60)
    assert audit.decisions is not None
    runs = [f"run_fo_{i}_{uuid.uuid4().hex[:4]}" for i in range(60)]
    sender = EventSender(audit.bootstrap, audit.catalog.requests)
    t, done = start_rounds(sender.send, runs, 6, 0.25)
    try:
        wait_for(lambda: len(audit.decisions.records) > len(runs) * 3, 30, message="traffic")
        audit.workers[0].kill9()
        t.join(60)
        assert done.is_set()
        wait_for(
            lambda: all(
                len({(d.request_id, d.phase) for d in audit.decisions.for_run(r)}) >= 12
                for r in runs
            ),
            90,
            interval=0.5,
            message=lambda: "every decision after the failover\n" + second.log()[-2000:],
        )
        assert second.alive(), second.log()
        audit.audited_all()
        result = audit.verify()
        assert result.returncode == 0, result.stdout + result.stderr + second.log()[-2000:]
        assert _runs_checked(result.stdout) >= len(runs), result.stdout
    finally:
        done.set()
        t.join(10)
