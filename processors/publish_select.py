"""Chooses the worker's publisher from the settings: aiokafka or librdkafka, same topics.

``BATON_WORKER_PRODUCER=aiokafka`` (the default) publishes at-least-once batches with
aiokafka's producer, one produce request per broker per step (processors/publish_aiokafka.py);
``librdkafka`` keeps confluent-kafka's (processors/publish.py), one request per partition.
Exactly-once always uses librdkafka: its transactions are the ones Baton tests.
"""

from __future__ import annotations

from typing import Any

from baton.processors.control_seal import seal_key
from baton.processors.publish import BatchPublisher
from baton.processors.publish_aiokafka import AiokafkaPublisher
from baton.processors.state_gate import StateMac
from baton.schemas.decision_signing import load_signer
from baton.schemas.record_mac import RecordMac
from baton.schemas.settings import Settings

__all__ = ["aiokafka_options", "worker_publisher"]


def aiokafka_options(s: Settings) -> dict[str, Any]:
    """The AIOKafkaProducer arguments for ``s``'s brokers and security, the same CA,
    client certificate, key and SASL user as ``Settings.kafka_config()`` gives librdkafka
    (a bad CA or key raises ConfigError naming the setting, as the worker's Faust does)."""
    options: dict[str, Any] = {
        "bootstrap_servers": [h.strip() for h in s.bootstrap.split(",") if h.strip()],
        "security_protocol": s.security_protocol,
    }
    if "SSL" in s.security_protocol:
        from baton.schemas.connections import client_ssl_context

        key_password = s.ssl_key_password.get_secret_value() if s.ssl_key_password else None
        options["ssl_context"] = client_ssl_context(
            s.ssl_cafile, s.ssl_certfile, s.ssl_keyfile, key_password
        )
    if s.security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = s.sasl_mechanism
        options["sasl_plain_username"] = s.sasl_username
        options["sasl_plain_password"] = (
            s.sasl_password.get_secret_value() if s.sasl_password else None
        )
    return options


def worker_publisher(
    s: Settings,
    *,
    decisions_topic: str,
    stops_topic: str,
    deadletter_topic: str,
    changelog_topic: str,
    transactional_id: str | None,
) -> BatchPublisher | AiokafkaPublisher:
    """The publisher ``s`` asks for (librdkafka whenever ``transactional_id`` is given),
    signing each decision with BATON_DECISION_SIGNING_KEY's key when it is set, and putting
    the audit MAC on it when the workers have a seal key."""
    topics = {
        "decisions_topic": decisions_topic,
        "stops_topic": stops_topic,
        "deadletter_topic": deadletter_topic,
        "changelog_topic": changelog_topic,
    }
    signer = load_signer(s.decision_signing_key)  # (a key that does not read: ConfigError)
    mac_key = seal_key(s)  # the audit MAC's (schemas/record_mac.py): the sink checks it
    publisher: BatchPublisher | AiokafkaPublisher
    if transactional_id is None and s.worker_producer == "aiokafka":
        publisher = AiokafkaPublisher(aiokafka_options(s), **topics)
    else:
        publisher = BatchPublisher(
            s.kafka_config(),
            **topics,
            transactional_id=transactional_id,
            transaction_timeout_ms=s.transaction_timeout_ms,
        )
    publisher.signer = signer
    publisher.mac = RecordMac(mac_key) if mac_key else None
    publisher.state_mac = StateMac.of(mac_key)  # each run state record's (state_gate.py)
    return publisher
