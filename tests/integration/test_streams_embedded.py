"""The embedded Tansu broker starts, serves Kafka clients, reports start-up failures and stops."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from baton.schemas.errors import BrokerUnavailable
from baton.streams.embedded import EmbeddedBroker
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_session_broker_round_trips_a_message(broker: EmbeddedBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}roundtrip"
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce(topic, key=b"run-1", value=b"hello")
    assert producer.flush(10) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"{topic_prefix}g",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    try:
        consumer.subscribe([topic])
        msg = wait_for(lambda: consumer.poll(0.5), timeout=20, message="the produced message")
        assert msg.error() is None
        assert (msg.key(), msg.value()) == (b"run-1", b"hello")
    finally:
        consumer.close()


def test_stop_terminates_reaps_and_frees_the_port(tmp_path: Path) -> None:
    with EmbeddedBroker(log_dir=tmp_path) as embedded:
        port, proc = embedded.port, embedded._proc
        assert embedded.bootstrap == f"127.0.0.1:{port}"
        assert _accepts(port)
    assert proc is not None and proc.returncode is not None  # reaped, not a zombie
    assert not embedded.running
    assert not _accepts(port)
    assert "listening on: tcp://127.0.0.1:" in (tmp_path / f"tansu-{port}.log").read_text()
    embedded.stop()  # idempotent


def test_taken_port_is_refused_with_a_clear_error(broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerUnavailable, match=f"{broker.port}: the port is already in use"):
        EmbeddedBroker(port=broker.port).start()


def test_death_at_startup_reports_the_broker_output(tmp_path: Path, free_port: int) -> None:
    # 192.0.2.1 (TEST-NET-1) is no local address: Tansu cannot bind it and dies at once
    with pytest.raises(BrokerUnavailable, match="during start-up") as info:
        EmbeddedBroker(
            port=free_port, host="192.0.2.1", log_dir=tmp_path, startup_timeout_s=5
        ).start()
    assert "AddrNotAvailable" in str(info.value)
