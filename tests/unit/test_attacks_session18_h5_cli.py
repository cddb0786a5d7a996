"""Session 18 (H5): the commands that print what others wrote, against records nested deep.

F2: `baton tail` read a record on its topic as JSON (orjson reads 1,024 levels) and wrote it
back for ``--format json`` (orjson writes 254), or printed a dead letter's fields with
``str()`` (Python's repr gives up near 1,000 levels): a record nested 300 deep on
gov.decisions (anyone who can write the topic) ended `baton tail --format json` with a
TypeError traceback, one nested 1,000 deep on gov.deadletter ended `baton tail deadletter` with
a RecursionError; with ``-f`` nothing after it was shown (an operator watching for stops
saw none). Such a record is now shown as a record that is not JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import orjson
import pytest
from click.testing import CliRunner

from baton.cli import tail_cmds
from baton.cli.main import _register, cli

pytestmark = pytest.mark.unit

_DEEP_DECISION = b'{"run_id":"run-1","x":' + b"[" * 300 + b"]" * 300 + b"}"
_DEEP_DEAD = b'{"error_kind":"invalid_event","error":' + b"[" * 1000 + b"]" * 1000 + b"}"
_AFTER = orjson.dumps({"error_kind": "not_json", "error": "the record after", "key": "run-2"})


def _tail(monkeypatch: pytest.MonkeyPatch, topic: str, records: list[bytes], *args: str) -> Any:
    def read(*_: Any) -> Iterator[tuple[bytes, int, int]]:
        yield from ((value, 0, offset) for offset, value in enumerate(records))

    monkeypatch.setattr(tail_cmds, "_read", read)
    _register()
    return CliRunner().invoke(cli, ["tail", topic, "--bootstrap", "127.0.0.1:1", *args])


@pytest.mark.parametrize(
    ("topic", "record", "fmt"),
    [
        ("decisions", _DEEP_DECISION, "json"),
        ("deadletter", _DEEP_DECISION, "json"),
        ("deadletter", _DEEP_DEAD, "text"),
        ("deadletter", _DEEP_DEAD, "json"),
    ],
)
def test_a_record_nested_deep_is_shown_as_not_json_and_tail_reads_on(
    monkeypatch: pytest.MonkeyPatch, topic: str, record: bytes, fmt: str
) -> None:
    result = _tail(monkeypatch, topic, [record, _AFTER], "--format", fmt)
    assert result.exception is None, repr(result.exception)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == 2
    assert "the record after" in lines[1]


# ------------------------------------------------------------------ F5: `baton policy current`

_ESC_KEY = 'multi_agent:\n  "\\e]0;PWNED\\a\\e[2J": 1\n'
_ESC_LABEL = 'label: "\\e[2K\\rpolicy in force: seed"\nmulti_agent: {max_handoffs: 1}\n'


class _Record:
    def __init__(self, offset: int, value: bytes) -> None:
        self._offset, self._value = offset, value

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class _ControlTopic:
    """A consumer of a one-partition gov.control holding ``records``."""

    records: ClassVar[list[bytes]] = []

    def __init__(self, *_: Any, **__: Any) -> None:
        self.read = 0

    def list_topics(self, topic: str, timeout: float) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None})})

    def get_watermark_offsets(self, *_: Any, **__: Any) -> tuple[int, int]:
        return 0, len(self.records)

    def assign(self, _: Any) -> None:
        pass

    def position(self, parts: list[Any]) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [TopicPartition(tp.topic, tp.partition, self.read) for tp in parts]

    def poll(self, _: float) -> Any:
        if self.read >= len(self.records):  # the partition's end, as librdkafka says it
            from types import SimpleNamespace

            from confluent_kafka import KafkaError

            eof = SimpleNamespace(code=lambda: KafkaError._PARTITION_EOF)
            return SimpleNamespace(error=lambda: eof, partition=lambda: 0, offset=lambda: self.read)
        self.read += 1
        return _Record(self.read - 1, self.records[self.read - 1])

    def close(self) -> None:
        pass


def test_policy_current_shows_what_a_writer_of_the_control_topic_put_in_an_update_escaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """F5: `baton policy current` printed a policy update's error (the YAML's own keys and
    values) and an applied policy's label as they were: anyone who writes gov.control sent
    ESC sequences to the operator's terminal (clear it, retitle it, or rewrite the line that
    says which policy is in force)."""
    from datetime import UTC, datetime

    import confluent_kafka

    from baton.schemas.events import PolicyUpdated
    from baton.streams import net

    now = datetime.now(UTC)
    _ControlTopic.records = [
        PolicyUpdated(policy_yaml=y, operator="mallory", event_time=now).to_json()
        for y in (_ESC_KEY, _ESC_LABEL)
    ]
    monkeypatch.setattr(confluent_kafka, "Consumer", _ControlTopic)
    monkeypatch.setattr(net, "check_reachable", lambda *_: None)
    _register()
    result = CliRunner().invoke(cli, ["policy", "current", "--bootstrap", "127.0.0.1:1"])
    assert result.exception is None, repr(result.exception)
    lines = result.output.splitlines()
    assert lines[0].startswith("not a policy") and "PWNED" in lines[0]
    assert lines[1].startswith("applied")
    assert lines[-1].startswith("policy in force:")
    assert "\x1b" not in result.output and "\r" not in result.output
