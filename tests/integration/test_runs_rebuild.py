"""`baton runs refused` and `baton runs rebuild` on a real broker, worker and sink: a run no
changelog record of the workers' holds (decided before they had the key, and a forged record
on top) is refused by the restarted worker; the commands name it, rebuild it from the chDB
audit and the next restart decides it with its budget."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from baton.schemas.decision import Outcome, Reason
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for
from tests.helpers import handoff, wait_for
from tests.integration.conftest import PARTITIONS, TEST_POLICY, Stack, one_worker_stack
from tests.stack import SinkProcess, fresh_topics, wait_committed, wait_deciding

pytestmark = pytest.mark.faults

KEY = "r" * 40
RUN, OTHER = "rebuilt-run", "kept-run"


def _app(s: Stack) -> str:
    return f"baton-{s.prefix.rstrip('.')}"


def _baton(s: Stack, *args: str, dsn: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BATON_BOOTSTRAP": s.bootstrap,
        "BATON_TOPIC_PREFIX": s.prefix,
        "BATON_APP_ID": _app(s),
        "BATON_PARTITIONS": str(PARTITIONS),
        "BATON_AUDIT_CHAIN_KEY": KEY,
    }
    if dsn is not None:
        env["BATON_CLICKHOUSE_DSN"] = dsn
    out = subprocess.run(
        [sys.executable, "-m", "baton.cli", "runs", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return out


def _stored(sink: SinkProcess, run: str) -> int:
    rows = sink.query(f"SELECT count() FROM governance.decisions FINAL WHERE run_id = '{run}'")
    return int(rows[0][0])


def _first_record(bootstrap: str, topic: str, run: str, last: bool = False) -> bytes:
    """``run``'s first (or ``last``) record on the changelog ``topic``, read to its end."""
    key = run.encode()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"peek-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    partition = partition_for(key, PARTITIONS)
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
    found: bytes | None = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                break  # (the partition's end)
            if msg.key() == key:
                found = msg.value()
                if not last:
                    break
    finally:
        consumer.close()
    assert found is not None, f"no record of {run} on {topic}"
    return found


def _empty_audit(broker: EmbeddedBroker, tmp_path: Path) -> Path:
    """An audit with the schema and no decision (a sink of other, empty topics made it)."""
    prefix = f"old{time.monotonic_ns()}."
    fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    folder = tmp_path / "old-audit"
    sink = SinkProcess(
        broker.bootstrap, prefix, folder, tmp_path / "old-sink.log", partitions=PARTITIONS
    )
    try:
        sink.wait_ready()
    finally:
        sink.stop()
    return folder


def _changelog(s: Stack) -> str:
    return f"{_app(s)}-runs-changelog"


def _forge(s: Stack, run: str = RUN) -> None:
    """A writer of the changelog: ``run``'s budget given back by a record without the workers'
    MAC (as a compacting Kafka may leave it alone, or a keyless worker writes it)."""
    topic = _changelog(s)
    forged = orjson.loads(_first_record(s.bootstrap, topic, run))
    forged.update(hc=0, sq=10**6)
    forged.pop("sm", None)
    producer = Producer({"bootstrap.servers": s.bootstrap})
    key = run.encode()
    producer.produce(topic, orjson.dumps(forged), key, partition=partition_for(key, PARTITIONS))
    assert producer.flush(10) == 0


def test_a_refused_run_is_named_rebuilt_from_the_audit_and_decided_with_its_budget(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """An upgraded deployment: a worker without the key decided RUN (its records carry no MAC,
    its decisions are linked unkeyed), then the workers get the key and refuse RUN."""
    env = {"BATON_AUDIT_CHAIN_KEY": KEY}
    started = time.time()
    old_audit = _empty_audit(broker, tmp_path)
    with one_worker_stack(broker, tmp_path, TEST_POLICY, "rb") as s:
        s.requests.send(handoff(RUN, n, f"t{n}") for n in range(1, 4))
        assert [d.outcome for d in s.decisions.wait_run(RUN, 3)] == [Outcome.ALLOW] * 3
        wait_committed(s.bootstrap, _app(s), s.catalog.requests, PARTITIONS)
        s.workers[0].stop()
        _forge(s)
        s.add_worker("w2", env)
        wait_deciding(s.bootstrap, s.catalog)
        s.requests.send([handoff(RUN, 4, "t4"), handoff(OTHER, 1, "t1")])
        dead = wait_for(lambda: s.deadletters.records, 30, message="the refused run's event")
        assert [orjson.loads(r)["error_kind"] for r in dead] == ["state_unreadable"]
        s.decisions.wait_run(OTHER, 1)

        listed = _baton(s, "refused")
        assert listed.returncode == 1, listed
        where = f"(partition {partition_for(RUN.encode(), PARTITIONS)})"
        assert f"REFUSED {RUN} {where}: its changelog record at" in listed.stdout, listed
        assert f"REFUSED {OTHER}" not in listed.stdout, listed  # (decided by the keyed worker)

        sink = SinkProcess(
            s.bootstrap, s.prefix, tmp_path / "chdb", tmp_path / "sink.log", partitions=PARTITIONS
        )  # (keyless, as it was before the upgrade)
        try:
            sink.wait_ready()
            wait_for(lambda: (_stored(sink, RUN), _stored(sink, OTHER)) == (3, 1), 60)
            # a worker runs: it could decide a run past the state rebuilt (h49a)
            unsaid = _baton(s, "rebuild", "--refused", "--unkeyed-history", dsn=sink.dsn)
            assert unsaid.returncode == 2 and "--workers-stopped" in unsaid.stderr, unsaid
            running = _baton(
                s, "rebuild", "--refused", "--unkeyed-history", "--workers-stopped", dsn=sink.dsn
            )
            assert running.returncode == 1, running
            assert "stop every worker first" in running.stderr, running
            dry = _baton(s, "rebuild", "--refused", "--unkeyed-history", "--dry-run", dsn=sink.dsn)
            assert dry.returncode == 0, dry  # (a dry run while they run)
            assert f"WOULD REBUILD {RUN} from 3 decisions: 3 handoffs" in dry.stdout, dry
            assert "checked without a chain key" in dry.stdout, dry
            s.workers[1].stop()

            # linked without a key: under the workers' key the chain does not hold
            keyed = _baton(s, "rebuild", RUN, "--dry-run", dsn=sink.dsn)
            assert keyed.returncode == 1, keyed
            assert f"NOT REBUILT {RUN}: its decisions do not replay as recorded" in keyed.stdout
            assert "runs rebuild: would write 0 run states" in keyed.stdout, keyed

            # an audit without the decisions gov.decisions holds (an old backup, another
            # copy): a state rebuilt from it would give their budget back (h49a H2)
            old = f"chdb://{old_audit}"
            stale = _baton(s, "rebuild", RUN, "--unkeyed-history", "--dry-run", dsn=old)
            assert stale.returncode == 1, stale
            assert f"NOT REBUILT {RUN}: the audit lacks 3 decisions of it that" in stale.stdout

            kept = _baton(s, "rebuild", OTHER, dsn=sink.dsn)
            assert kept.returncode == 1, kept
            assert f"NOT REBUILT {OTHER}: not refused" in kept.stdout, kept

            # (the keyless worker's probe runs are refused too)
            done = _baton(
                s, "rebuild", "--refused", "--unkeyed-history", "--workers-stopped", dsn=sink.dsn
            )
            assert done.returncode == 0, done
            assert f"REBUILT {RUN} from 3 decisions: 3 handoffs, $0.00 spent" in done.stdout
            assert "; start the workers: each takes them when it restores" in done.stdout, done
            written = orjson.loads(_first_record(s.bootstrap, _changelog(s), RUN, last=True))
            # past every record the run's life had: an older one written again is not taken
            assert written["sq"] >= int(started * 1000) << 16 and written["sm"], written
            again = _baton(s, "refused")
            assert again.returncode == 0, again
            assert "runs refused: 0 runs of " in again.stdout

            # a keyless worker's later record of a run a keyed one wrote (a rolling upgrade):
            # the restore holds the older record; named, and rebuilt from the audit (h49c F1)
            _forge(s, OTHER)
            older = _baton(s, "refused")
            assert older.returncode == 1, older
            assert f"OLDER {OTHER} (partition " in older.stdout, older
            assert "runs refused: 0 runs of " in older.stdout, older
            dry = _baton(s, "rebuild", OTHER, "--dry-run", dsn=sink.dsn)
            assert dry.returncode == 0, dry
            assert f"WOULD REBUILD {OTHER} from 1 decision: 1 handoff" in dry.stdout, dry
        finally:
            sink.stop()

        s.add_worker("w3", env)
        wait_deciding(s.bootstrap, s.catalog)
        # three handoffs decided before: five more are allowed (max 8), the sixth stopped
        s.requests.send(handoff(RUN, n, f"t{n}") for n in range(5, 11))
        answers = [d for d in s.decisions.wait_run(RUN, 9) if not d.reemitted]
        assert [(d.outcome, d.reason) for d in answers[3:]] == [
            *[(Outcome.ALLOW, Reason.OK)] * 5,
            (Outcome.STOP, Reason.HANDOFF_BUDGET_EXCEEDED),
        ], answers
