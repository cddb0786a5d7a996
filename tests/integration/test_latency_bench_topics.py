"""bench.latency_bench drops what a phase made: each phase runs on a broker holding no earlier
phase's records (Tansu's memory storage slowed every later phase down)."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from baton.streams.embedded import EmbeddedBroker
from bench.latency_bench import drop_new_topics, topic_names, topics_dropped

pytestmark = pytest.mark.integration


def test_only_the_phases_own_topics_are_deleted(tmp_path: Path) -> None:
    # a broker of its own: on the session's, a client an earlier test left open could have a
    # topic made meanwhile (Tansu creates one a client asks for), and it would be deleted
    with EmbeddedBroker(log_dir=str(tmp_path)) as broker:
        _check(broker, "bench.")
        _check_phase_block(broker.bootstrap)


def _check(broker: EmbeddedBroker, topic_prefix: str) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    kept = f"{topic_prefix}earlier"
    admin.create_topics([NewTopic(kept, 2, 1)])[kept].result(10)
    before = topic_names(broker.bootstrap)
    made = [f"{topic_prefix}in", f"{topic_prefix}out"]
    for future in admin.create_topics([NewTopic(t, 2, 1) for t in made]).values():
        future.result(10)

    assert drop_new_topics(broker.bootstrap, before) == made
    after = topic_names(broker.bootstrap)
    assert kept in after and not set(made) & after
    assert drop_new_topics(broker.bootstrap, before) == []  # nothing new: nothing asked


def _check_phase_block(bootstrap: str) -> None:
    """What a phase is wrapped in: its topics gone after it, kept with ``keep`` (--keep-topics)
    and when the block fails (the bench ends there)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})

    def make(name: str) -> None:
        admin.create_topics([NewTopic(name, 1, 1)])[name].result(10)

    with topics_dropped(bootstrap):
        make("phase.dropped")
    with topics_dropped(bootstrap, keep=True):
        make("phase.kept")
    try:
        with topics_dropped(bootstrap):
            make("phase.failed")
            raise RuntimeError("the phase failed")
    except RuntimeError:
        pass
    names = topic_names(bootstrap)
    assert "phase.dropped" not in names and {"phase.kept", "phase.failed"} <= names
