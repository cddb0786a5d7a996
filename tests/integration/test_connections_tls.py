"""Baton over real TLS connections, and no password in any error or log line.

Tansu 0.6 has no TLS listener (its ``--cert``/``--key`` build an acceptor it never uses), so a
mutual-TLS proxy sits in front of it and Tansu advertises the proxy: every connection of every
client - librdkafka's and the worker's aiokafka - is a real TLS connection that must present a
certificate of the test CA. ClickHouse over HTTPS is the SQL endpoint behind the same proxy.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from baton.processors.probe import wait_until_deciding
from baton.schemas.decision import Outcome
from baton.schemas.errors import AuditUnavailable, BrokerUnavailable
from baton.schemas.settings import Settings
from baton.sinks.clickhouse import connect
from baton.streams.kafka import admin_config, consumer_config, producer_config
from baton.streams.net import free_port
from baton.streams.sdk import GovernanceClient
from baton.streams.topics import TopicCatalog, ensure_topics
from tests.helpers import handoff, wait_for
from tests.stack import WorkerProcess
from tests.tls_support import Pki, TlsProxy, make_pki, server_context, tls_tansu

pytestmark = pytest.mark.integration

SECRET = "S3cret-Do-Not-Print"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsProxy]:
    with tls_tansu(pki, tmp_path_factory.mktemp("tansu-tls")) as proxy:
        yield proxy


def _mtls(pki: Pki, bootstrap: str, **more: Any) -> dict[str, Any]:
    return {
        "bootstrap": bootstrap,
        "security_protocol": "SSL",
        "ssl_cafile": pki.ca,
        "ssl_certfile": pki.client_cert,
        "ssl_keyfile": pki.client_key_encrypted,
        "ssl_key_password": pki.client_key_password,
        "connect_timeout_s": 3,
        **more,
    }


# --- Kafka ---------------------------------------------------------------------------------------
def test_admin_producer_and_consumer_work_over_mutual_tls(pki: Pki, tls_broker: TlsProxy) -> None:
    conf = Settings(**_mtls(pki, tls_broker.address)).kafka_config()
    catalog = TopicCatalog(f"tls{uuid.uuid4().hex[:6]}.", 2, 1)
    ensure_topics(admin_config(conf), catalog, timeout=10)
    producer = Producer(producer_config(conf, {"linger.ms": 0}))
    producer.produce(catalog.requests, key=b"run-1", value=b"over tls")
    assert producer.flush(10) == 0
    consumer = Consumer(consumer_config(conf, f"g-{uuid.uuid4().hex[:6]}"))
    try:
        # assigned, not subscribed: a group join takes session.timeout / 2 on Tansu
        consumer.assign([TopicPartition(catalog.requests, p, OFFSET_BEGINNING) for p in (0, 1)])

        def record() -> Any:
            msg = consumer.poll(0.5)
            return msg if msg is not None and msg.error() is None else None

        assert wait_for(record, timeout=30).value() == b"over tls"
    finally:
        consumer.close()
    assert set(tls_broker.clients) == {"baton-worker"}, "every connection showed our certificate"


@pytest.mark.parametrize(
    "identity",
    ["no certificate", "a stranger's certificate", "a CA that did not sign the broker"],
)
def test_a_client_without_the_right_identity_never_reaches_kafka(
    pki: Pki, tls_broker: TlsProxy, identity: str
) -> None:
    fields = {
        "no certificate": {"ssl_certfile": None, "ssl_keyfile": None, "ssl_key_password": None},
        "a stranger's certificate": {
            "ssl_certfile": pki.stranger_cert,
            "ssl_keyfile": pki.stranger_key,
            "ssl_key_password": None,
        },
        # the client refuses the broker: a man in the middle with another CA's certificate
        "a CA that did not sign the broker": {"ssl_cafile": pki.stranger_ca},
    }[identity]
    conf = Settings(**_mtls(pki, tls_broker.address, **fields)).kafka_config()
    refused_before = tls_broker.refused
    with pytest.raises(BrokerUnavailable):
        ensure_topics(admin_config(conf), TopicCatalog("never.", 1, 1), timeout=2)
    assert tls_broker.refused > refused_before, "the TLS handshake failed"


def test_a_worker_and_a_client_govern_over_mutual_tls(
    pki: Pki, tls_broker: TlsProxy, tmp_path: Path
) -> None:
    """The worker's Faust consumer (aiokafka, given _faust_credentials' SSL context), its
    confluent-kafka producer and control follower, and the client SDK: all over mTLS with an
    encrypted key, configured only through BATON_* variables."""
    prefix = f"tw{uuid.uuid4().hex[:6]}."
    settings = Settings(**_mtls(pki, tls_broker.address, topic_prefix=prefix, partitions=2))
    catalog = TopicCatalog(prefix, 2, 1)
    ensure_topics(admin_config(settings.kafka_config()), catalog, timeout=10)
    env = {
        "BATON_SECURITY_PROTOCOL": "SSL",
        "BATON_SSL_CAFILE": str(pki.ca),
        "BATON_SSL_CERTFILE": str(pki.client_cert),
        "BATON_SSL_KEYFILE": str(pki.client_key_encrypted),
        "BATON_SSL_KEY_PASSWORD": pki.client_key_password,
    }
    worker = WorkerProcess(tls_broker.address, prefix, tmp_path, partitions=2, extra_env=env)
    try:
        try:
            wait_until_deciding(settings.kafka_config(), catalog.requests, catalog.decisions, 2, 60)
        except Exception as exc:
            raise AssertionError(f"worker did not decide over TLS: {exc}\n{worker.log()}") from exc
        with GovernanceClient(settings=settings, timeout=15) as gov:
            decision = gov.check(handoff(f"tls-{uuid.uuid4().hex[:6]}", 1, "t1"))
        assert decision.outcome == Outcome.ALLOW, decision
        assert pki.client_key_password not in worker.log()
    finally:
        worker.stop()


def test_kafka_errors_and_logs_never_show_the_sasl_or_key_password(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """Against a closed port: the errors a user sees, their causes, and librdkafka's log lines
    (routed to Python logging, served by a consumer's poll) hold neither password."""
    closed = f"127.0.0.1:{free_port()}"
    settings = Settings(
        **_mtls(pki, closed, security_protocol="SASL_SSL"),
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="baton",
        sasl_password=SECRET,
    )
    caplog.set_level(logging.DEBUG)
    # the CLI silences librdkafka's logger unless -v; a CLI test run in this process before
    # this one leaves it so: open it up for this test (restored after)
    caplog.set_level(logging.DEBUG, logger="baton.kafka")
    conf = settings.kafka_config()
    with pytest.raises(BrokerUnavailable) as info:
        ensure_topics(admin_config(conf), TopicCatalog("x.", 1, 1), timeout=1)
    consumer = Consumer(consumer_config(conf, "g", {"reconnect.backoff.max.ms": 100}))

    def kafka_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "baton.kafka"]

    try:
        consumer.subscribe(["x.gov.decisions"])
        deadline = time.monotonic() + 20  # a loaded machine logs the first failure late
        while not any(closed in line for line in kafka_lines()) and time.monotonic() < deadline:
            consumer.poll(0.1)
    finally:
        consumer.close()
    shown = "".join(traceback.format_exception(info.value)) + caplog.text
    assert any(closed in line for line in kafka_lines()), "librdkafka logged the failures"
    assert SECRET not in shown and pki.client_key_password not in shown


# --- ClickHouse over HTTPS -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def https_clickhouse(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, int]]:
    """(https DSN through a TLS proxy, the token in it, the plain endpoint's port)."""
    from baton.sinks.sqlserver import serve_sql

    client = connect(f"chdb://{tmp_path_factory.mktemp('chdb')}", create=True)
    server = serve_sql(client, port=0)
    try:
        tls = server_context(pki, require_client_cert=False)
        with TlsProxy(("127.0.0.1", server.port), tls) as proxy:
            yield (
                f"https://{server.user}:{server.token}@127.0.0.1:{proxy.port}/",
                server.token,
                (server.port),
            )
    finally:
        server.close()
        client.close()


def test_clickhouse_https_with_the_ca_answers(
    pki: Pki, https_clickhouse: tuple[str, str, int]
) -> None:
    dsn, _, _ = https_clickhouse
    client = connect(dsn, ca_cert=pki.ca)
    try:
        assert client.query("SELECT 40 + 2").result_rows == [(42,)]
    finally:
        client.close()


def test_clickhouse_https_without_the_ca_is_refused_and_names_the_setting(
    pki: Pki, https_clickhouse: tuple[str, str, int], caplog: pytest.LogCaptureFixture
) -> None:
    dsn, token, _ = https_clickhouse
    caplog.set_level(logging.DEBUG)
    for ca in (None, pki.stranger_ca):
        with pytest.raises(AuditUnavailable) as info:
            connect(dsn, ca_cert=ca)
        assert "does not trust" in str(info.value) and "BATON_CLICKHOUSE_CA" in str(info.value)
        assert token not in "".join(traceback.format_exception(info.value))
    assert token not in caplog.text
    # verify off (a throwaway server): the same connection is accepted
    connect(dsn, verify=False).close()


def test_an_https_dsn_is_spoken_as_tls_whatever_its_port(
    pki: Pki, https_clickhouse: tuple[str, str, int]
) -> None:
    """clickhouse-connect takes TLS from the port (443/8443), not from the scheme: an https
    DSN on the plain endpoint's port must fail its handshake, never send the token in clear."""
    _, token, plain_port = https_clickhouse
    with pytest.raises(AuditUnavailable) as info:
        connect(f"https://baton:{token}@127.0.0.1:{plain_port}/", ca_cert=pki.ca)
    assert "TLS handshake" in str(info.value) and token not in str(info.value)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_clickhouse_connection_errors_never_show_the_password(
    scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dsn = f"{scheme}://baton:{SECRET}@127.0.0.1:{free_port()}/default"
    with pytest.raises(AuditUnavailable) as info:
        connect(dsn)
    shown = "".join(traceback.format_exception(info.value)) + caplog.text
    assert "127.0.0.1" in str(info.value) and f"{scheme}://baton:***@" in str(info.value)
    assert SECRET not in shown


def test_baton_sql_reaches_https_clickhouse_with_the_ca_setting(
    pki: Pki, https_clickhouse: tuple[str, str, int]
) -> None:
    """BATON_CLICKHOUSE_CA reaches the audit commands' connection (not only connect())."""
    import os
    import subprocess
    import sys

    dsn, token, _ = https_clickhouse
    env = {**os.environ, "BATON_CLICKHOUSE_DSN": dsn}
    cmd = [sys.executable, "-m", "baton.cli", "sql", "SELECT 40 + 2"]
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "BATON_CLICKHOUSE_CA" in refused.stderr
    assert token not in refused.stderr + refused.stdout
    env["BATON_CLICKHOUSE_CA"] = str(pki.ca)
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "42" in ok.stdout
