"""Session 15: `baton restore`'s writes count a produce acknowledged without an offset as not
written, like every other producer of Baton's (session 14, F4: ``streams.kafka.undelivered``).

Its two delivery callbacks (the run states to the changelog, the re-issued control commands)
took any report without an error for a write, so a kill switch acknowledged with offset -1 would
be reported re-issued. Hardening more than a live hole: restore's producers are not idempotent
(no producer id, so F4's forged sequence does not reach them) and its settings cannot set acks=0;
what is closed is any report without an offset taken for a write, as everywhere else."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import confluent_kafka
import confluent_kafka.admin
import pytest

from baton.cli import restore_write
from baton.schemas.errors import BrokerUnavailable
from baton.schemas.settings import Settings

pytestmark = pytest.mark.unit


class _Msg:
    def __init__(self, topic: str, partition: int, offset: int | None) -> None:
        self._at = (topic, partition, offset)

    def topic(self) -> str:
        return self._at[0]

    def partition(self) -> int:
        return self._at[1]

    def offset(self) -> int | None:
        return self._at[2]


class _Producer:
    """Acknowledges every record without an error, with ``offset``."""

    offset: int | None = -1

    def __init__(self, config: dict[str, Any]) -> None:
        self.pending: list[tuple[Any, _Msg]] = []

    def produce(self, topic: str, value: bytes, key: bytes, partition: int, on_delivery: Any):
        self.pending.append((on_delivery, _Msg(topic, partition, self.offset)))

    def poll(self, timeout: float = 0) -> int:
        done, self.pending = self.pending, []
        for callback, msg in done:
            callback(None, msg)
        return len(done)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


class _Admin:
    def __init__(self, config: dict[str, Any]) -> None:
        pass

    def create_topics(self, topics: list[Any]) -> dict[str, Any]:
        return {t.topic: SimpleNamespace(result=lambda timeout: None) for t in topics}


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> type[_Producer]:
    monkeypatch.setattr(confluent_kafka, "Producer", _Producer)
    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", _Admin)
    monkeypatch.setattr(
        restore_write, "reissued_commands", lambda commands, refused: [("tenant", "t1", "{}")]
    )
    return _Producer


@pytest.mark.parametrize("offset", [-1, -1001, None])
def test_a_reissued_command_acknowledged_without_an_offset_is_not_reissued(
    producer: type[_Producer], monkeypatch: pytest.MonkeyPatch, offset: int | None
) -> None:
    monkeypatch.setattr(producer, "offset", offset)
    with pytest.raises(BrokerUnavailable, match=r"control\[0\]: acknowledged without an offset"):
        restore_write.reissue(Settings(), ["kill"], print)


@pytest.mark.parametrize("offset", [-1, None])
def test_a_run_state_acknowledged_without_an_offset_is_not_restored(
    producer: type[_Producer], monkeypatch: pytest.MonkeyPatch, offset: int | None
) -> None:
    monkeypatch.setattr(producer, "offset", offset)
    states: Any = [SimpleNamespace(run_id="run-1", to_bytes=lambda: b"state")]
    with pytest.raises(BrokerUnavailable, match=r"runs-changelog\[\d+\]: acknowledged without"):
        restore_write.write_changelog(Settings(), states)


def test_writes_acknowledged_with_offsets_are_restored(
    producer: type[_Producer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(producer, "offset", 0)
    assert restore_write.reissue(Settings(), ["kill"], print) == 1
    states: Any = [SimpleNamespace(run_id=f"run-{i}", to_bytes=lambda: b"s") for i in range(5)]
    restore_write.write_changelog(Settings(), states)
