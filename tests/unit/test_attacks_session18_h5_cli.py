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
from typing import Any

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
