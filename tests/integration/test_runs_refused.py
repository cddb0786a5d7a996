"""`baton runs refused` against a real broker's changelog (no worker: the records are written
as a worker and a forger would write them): what a restore refuses, named safely; and the
settings it refuses to guess (no key, another partition count, another app id)."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from baton.cli.main import cli
from baton.processors.state import RunState
from baton.processors.state_gate import StateMac
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for

KEY = "s" * 40
PARTITIONS = 2


def _changelog(broker: EmbeddedBroker, app: str, records: list[tuple[bytes, bytes]]) -> None:
    topic = f"{app}-runs-changelog"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    config = {"cleanup.policy": "compact"}
    for f in admin.create_topics([NewTopic(topic, PARTITIONS, 1, config=config)]).values():
        f.result(10)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for key, value in records:
        producer.produce(topic, value, key, partition=partition_for(key, PARTITIONS))
    assert producer.flush(10) == 0


def _record(run: str, mac: bool) -> tuple[bytes, bytes]:
    key = run.encode()
    value = RunState.new(run, "t", time.time()).to_bytes()
    return key, StateMac(KEY.encode()).marked(_topic, key, value) if mac else value


_app = f"rr{time.monotonic_ns()}"
_topic = f"{_app}-runs-changelog"


def _run(broker: EmbeddedBroker, *args: str, key: str | None = KEY) -> tuple[int, str]:
    env = {
        "BATON_BOOTSTRAP": broker.bootstrap,
        "BATON_APP_ID": _app,
        "BATON_PARTITIONS": str(PARTITIONS),
        "BATON_AUDIT_CHAIN_KEY": key,
        "BATON_WORKER_DATA_DIR": "/nonexistent/worker",
        # (opened only when a run is rebuilt: nothing here answers)
        "BATON_CLICKHOUSE_DSN": "http://127.0.0.1:9",
    }
    result = CliRunner().invoke(cli, ["runs", *args], env=env)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def changelog(broker: EmbeddedBroker) -> EmbeddedBroker:
    hostile = "evil\x1b[2J\u202e" + "x" * 900  # (a key past 1,024 bytes is no run's)
    _changelog(
        broker,
        _app,
        [
            _record("held", mac=True),
            _record("forged", mac=False),
            _record(hostile, mac=False),
            (b"\xff\xfe not utf-8", b"{}"),
            _record("\\xff\\xfe not utf-8", mac=True),  # (shown alike, a run held)
            _record("held-then-forged", mac=True),
            _record("held-then-forged", mac=False),
        ],
    )
    return broker


def test_the_runs_a_restore_refuses_are_named_and_nothing_else(changelog: EmbeddedBroker) -> None:
    code, out = _run(changelog, "refused")
    assert code == 1, out
    lines = out.splitlines()
    refused = [line.split()[1] for line in lines if line.startswith("REFUSED ")]
    assert refused[1:] == ["forged", "\\xff\\xfe"], out  # (in the keys' byte order)
    assert refused[0].startswith("evil\\x1b[2J\\u202exxx") and len(refused[0]) < 300, out
    assert "\x1b" not in out and "\u202e" not in out, (
        "a key's control characters reached the terminal"
    )
    assert "(a key no event carries: not UTF-8)" in out, out
    # held, then a record after it not taken: the state held may be older (h49c F1)
    assert "OLDER held-then-forged (partition" in out and "not the 1 newer record" in out, out
    assert "; 1 run held older than its records" in out, out
    assert "runs refused: 3 runs of 6 runs on" in out, out
    assert "4 records not taken" in out, out
    assert "baton runs rebuild --refused" in out and "WARNING" not in out


def test_without_the_workers_key_nothing_is_said(changelog: EmbeddedBroker) -> None:
    code, out = _run(changelog, "refused", key=None)
    assert code == 2, out
    assert "no seal key" in out and "BATON_AUDIT_CHAIN_KEY" in out, out
    other, out = _run(changelog, "refused", key="another key entirely, 32 bytes+")
    assert other == 1 and "runs refused: 6 runs of 6 runs" in out, out  # (every one refused)
    assert "WARNING: every run on the changelog is refused" in out, out


def test_a_partition_count_or_app_id_not_the_workers_is_refused(changelog: EmbeddedBroker) -> None:
    code, out = _run(changelog, "refused", "--partitions", "3")
    assert code == 2 and "has 2 partitions, the count given" in out, out
    code, out = _run(changelog, "refused", "--app-id", "nobody-here")
    assert code == 4 and "no topic nobody-here-runs-changelog" in out and "BATON_APP_ID" in out


def test_a_key_no_event_carries_never_names_a_run_to_rebuild(changelog: EmbeddedBroker) -> None:
    """A forged key b"\\xff..." is shown as the text of a held run's id: rebuilding that run
    would write over a state a worker holds."""
    code, out = _run(changelog, "rebuild", "\\xff\\xfe not utf-8")
    assert code == 1, out
    assert "NOT REBUILT \\xff\\xfe not utf-8: not refused: the workers' restore holds" in out


def test_rebuild_takes_run_ids_or_refused(changelog: EmbeddedBroker) -> None:
    assert _run(changelog, "rebuild")[0] == 2
    assert _run(changelog, "rebuild", "x", "--refused")[0] == 2
    code, out = _run(changelog, "rebuild", "x", "--unkeyed-history", "--history-key-file", "k")
    assert code == 2 and "not both" in out, out


def test_a_transaction_left_open_on_the_changelog_is_named_not_a_traceback(
    broker: EmbeddedBroker,
) -> None:
    """It held back every record after it (Tansu never aborts one): `committed_ends` raised
    PartitionHeld through both commands, a traceback and exit 1, "some are refused" (h49b F2)."""
    app = f"open{time.monotonic_ns()}"
    _changelog(broker, app, [])
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": app})
    producer.init_transactions(10)
    producer.begin_transaction()
    producer.produce(f"{app}-runs-changelog", b"{}", b"open", partition=0)
    assert producer.flush(10) == 0
    env = {
        "BATON_BOOTSTRAP": broker.bootstrap,
        "BATON_APP_ID": app,
        "BATON_PARTITIONS": str(PARTITIONS),
        "BATON_AUDIT_CHAIN_KEY": KEY,
        "BATON_CONNECT_TIMEOUT_S": "2",
    }
    result = CliRunner().invoke(cli, ["runs", "refused"], env=env)
    assert result.exit_code == 4, result.output
    assert "held at offset" in result.output and "transaction left open" in result.output
    assert "Traceback" not in result.output
    producer.abort_transaction(10)
