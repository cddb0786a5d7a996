"""A worker started with exactly docker-compose.yml's environment and command decides a request
(against the embedded broker instead of the Kafka image: only container addresses, ports and
paths are replaced), answers the compose health check, and serves the metrics the alert rules
in deploy/prometheus/alerts.yml name; with the chain key the compose file's keys service makes,
it seals (no "no seal key" warning) and the compose sink, given the same file, stores its
decision and refuses a record forged onto gov.decisions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from baton.processors.probe import wait_until_deciding
from baton.schemas.decision import Decision
from baton.schemas.decision_signing import decision_keys
from baton.schemas.settings import Settings
from baton.streams.embedded import EmbeddedBroker
from baton.streams.net import free_port
from baton.streams.topics import TopicCatalog
from tests.helpers import handoff, wait_for
from tests.stack import Collector, EventSender, SinkProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: what differs between a container and this machine; every other variable is used as written
REPLACED = {
    "BATON_AUDIT_CHAIN_KEY_FILE",
    "BATON_DECISION_SIGNING_KEY",
    "BATON_BOOTSTRAP",
    "BATON_CLICKHOUSE_DSN",
    "BATON_POLICY",
    "BATON_WORKER_DATA_DIR",
    "BATON_WEB_PORT",
    "BATON_METRICS_PORT",
}


def compose_service(name: str) -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][name]


def compose_worker() -> dict:
    return compose_service("worker-1")


def made_chain_key(folder: Path) -> Path:
    """The keys service's command, run here: its key file, its path replaced by ``folder``'s."""
    keys = compose_service("keys")
    inside = Path(keys["command"][-1])
    key = folder / inside.name
    folder.mkdir(mode=0o700)
    args = [*keys["command"][:-1], str(key)]
    done = subprocess.run(
        [sys.executable, "-m", "baton.cli", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.startswith("made chain key"), done
    return key


def made_signing_key(folder: Path) -> tuple[Path, Path]:
    """The signing-key service's command, run here: (the workers' private key, its public half
    in the file the compose alerter reads), their folders replaced by ``folder``'s."""
    command = compose_service("signing-key")["command"]
    private_dir, public = folder / "keys", folder / "public" / Path(command[-1]).name
    public.parent.mkdir(parents=True)
    args = [*command]
    args[args.index("--dir") + 1] = str(private_dir)
    args[args.index("--public-out") + 1] = str(public)
    done = subprocess.run(
        [sys.executable, "-m", "baton.cli", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done
    inside = Path(compose_worker()["environment"]["BATON_DECISION_SIGNING_KEY"])
    return private_dir / inside.name, public


def raw_record(bootstrap: str, topic: str, partition: int, offset: int) -> bytes:
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex}"})
    try:
        reader.assign([TopicPartition(topic, partition, offset)])
        msg = wait_for(lambda: reader.poll(1.0), 30, message="the decision's record")
        assert msg.error() is None and msg.offset() == offset
        return msg.value()
    finally:
        reader.close()


def host_policy(service: dict, inside: str) -> Path:
    """The repository file the service mounts at ``inside``."""
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if target == inside:
            return ROOT / source
    raise AssertionError(f"no volume provides {inside}")


def test_a_worker_with_the_compose_environment_decides_a_request(tmp_path: Path) -> None:
    service = compose_worker()
    compose_env = {k: str(v) for k, v in service["environment"].items()}
    key = made_chain_key(tmp_path / "keys")
    signing_key, public = made_signing_key(tmp_path / "signing")
    here = {
        "BATON_AUDIT_CHAIN_KEY_FILE": str(key),
        "BATON_DECISION_SIGNING_KEY": str(signing_key),
        "BATON_BOOTSTRAP": "",  # filled in below
        "BATON_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'chdb'}",
        "BATON_POLICY": str(host_policy(service, compose_env["BATON_POLICY"])),
        "BATON_WORKER_DATA_DIR": str(tmp_path / "worker"),
        "BATON_WEB_PORT": str(free_port()),
        "BATON_METRICS_PORT": str(free_port()),
    }
    assert set(here) == REPLACED and set(compose_env) >= REPLACED
    broker = EmbeddedBroker(log_dir=tmp_path / "tansu").start()
    log = tmp_path / "worker.log"
    worker = None
    try:
        here["BATON_BOOTSTRAP"] = broker.bootstrap
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        with open(log, "ab") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "baton.cli", *service["command"]],
                env={**clean, **compose_env, **here},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        catalog = TopicCatalog(prefix=compose_env["BATON_TOPIC_PREFIX"])
        partitions = int(compose_env["BATON_PARTITIONS"])
        conf = {"bootstrap.servers": broker.bootstrap}
        admin = AdminClient(conf)
        # the worker creates the topics (with the compose file's partition count) at start
        wait_for(
            lambda: catalog.decisions in admin.list_topics(timeout=5).topics,
            60,
            message=lambda: f"the worker's topics\n{log.read_text()[-4000:]}",
        )
        try:
            wait_until_deciding(conf, catalog.requests, catalog.decisions, partitions, 60)
        except Exception as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-4000:]}") from exc

        run = f"compose_{uuid.uuid4().hex[:6]}"
        decisions = Collector(broker.bootstrap, catalog.decisions)
        try:
            EventSender(broker.bootstrap, catalog.requests).send(
                [handoff(run, 1, "research", tenant="acme")]
            )
            (decision,) = decisions.wait_run(run, 1)
            ((partition, offset),) = decisions.positions[run]
        finally:
            decisions.close()
        # signed with the signing-key service's key: the compose alerter's file verifies it
        alerter_env = {"BATON_DECISION_KEYS_FILE": str(public)}
        keys = decision_keys(Settings(_env_file=None, **_fields(alerter_env)).decision_keys)
        assert keys.verifies(raw_record(broker.bootstrap, catalog.decisions, partition, offset))
        assert (decision.outcome, decision.tenant) == ("allow", "acme")
        assert "no seal key" not in log.read_text()  # it seals run states, commands, records
        _the_compose_sink_refuses_a_forged_record(broker.bootstrap, tmp_path, key, decision)

        port = here["BATON_METRICS_PORT"]
        check = [part.replace(":9100/", f":{port}/") for part in service["healthcheck"]["test"]]
        assert check[0] == "CMD" and check[1] == "python"
        assert subprocess.run([sys.executable, *check[2:]], timeout=30).returncode == 0

        served = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        # a family is declared (# TYPE) even before its first sample (no dead letter yet)
        declared = re.findall(r"^# TYPE (baton_[a-z_]+)", served.decode(), re.M)
        families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in declared}
        rules = (ROOT / "deploy/prometheus/alerts.yml").read_text()
        for metric in set(re.findall(r"\bbaton_[a-z_]+", rules)):
            if not metric.startswith(("baton_audit", "baton_alerts")):  # the sink's, alerter's
                family = re.sub(r"_(total|bucket|sum|count)$", "", metric)
                assert family in families, f"{metric} is not served by the worker"
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(20)
        broker.stop()


def _fields(variables: dict[str, str]) -> dict[str, str]:
    return {name.removeprefix("BATON_").lower(): value for name, value in variables.items()}


def _the_compose_sink_refuses_a_forged_record(
    bootstrap: str, tmp_path: Path, key: Path, decision: Decision
) -> None:
    """The compose sink's environment with the same key file stores the worker's decision and
    refuses a copy of it under another id written to gov.decisions by someone without the key
    (before session 48 the compose files gave neither the key: the sink stored it)."""
    service = compose_service("sink")
    sink_env = {k: str(v) for k, v in service["environment"].items() if k not in REPLACED}
    sink_env["BATON_AUDIT_CHAIN_KEY_FILE"] = str(key)
    sink = SinkProcess(
        bootstrap,
        sink_env["BATON_TOPIC_PREFIX"],
        tmp_path / "chdb",
        tmp_path / "sink.log",
        partitions=int(sink_env["BATON_PARTITIONS"]),
        extra_env=sink_env,
    )
    try:
        sink.wait_ready()
        forged = Decision.from_json(decision.to_json())
        forged.decision_id = forged.request_id = f"forged-{uuid.uuid4().hex[:6]}"
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce("gov.decisions", forged.to_json(), decision.run_id.encode())
        assert producer.flush(10) == 0
        run = decision.run_id
        wait_for(
            lambda: (
                sink.query(
                    "SELECT count() FROM governance.rejected FINAL WHERE error_kind = 'forged'"
                )
                == [(1,)]
            ),
            60,
            message=lambda: f"the forged record refused\n{sink.log()}",
        )
        stored = sink.query(f"SELECT decision_id FROM governance.decisions WHERE run_id = '{run}'")
        assert stored == [(decision.decision_id,)], stored
    finally:
        sink.stop()
