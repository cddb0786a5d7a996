"""A sink that `baton up` starts again at its stop (it was down) is named in stack.json before
its drain: the broker's guard reads the pids there when `baton up` dies, and with only the old,
dead sink named it stopped the broker at once; a `kill -9` of the waiting stop lost every
decision the sink had not stored (session 39: 0 of 3,000 in the audit)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from baton.cli.stack_file import StackRecord, record_path, write_record
from baton.cli.up_stop import stop_children

pytestmark = pytest.mark.unit


@dataclass
class _Proc:
    pid: int


class _Supervisor:
    """The two calls stop_children makes of a Supervisor, recording what the record said
    when the stop began."""

    def __init__(self, data_dir: Path) -> None:
        self.children = {"worker": _Proc(11), "sink": _Proc(12)}
        self.data_dir = data_dir
        self.named_at_stop: dict[str, int] = {}

    def revive(self, name: str) -> bool:
        self.children[name] = _Proc(99)  # started again: a new pid
        return True

    def processes(self) -> dict[str, _Proc]:
        return dict(self.children)

    def stop(self, grace: float, drain: float | None) -> None:
        self.named_at_stop = json.loads(record_path(self.data_dir).read_text())["pids"]


def _written_record(data_dir: Path) -> StackRecord:
    """A running stack's record naming broker 10, worker 11 and sink 12, written."""
    record = StackRecord(
        state="running", pid=os.getpid(), started_at=datetime.now(UTC), data_dir=data_dir,
        app_id="a", bootstrap="127.0.0.1:9092", partitions=4,
        pids={"broker": 10, "worker": 11, "sink": 12},
    )  # fmt: skip
    write_record(record)
    return record


def test_a_sink_started_again_at_the_stop_is_named_before_its_drain(tmp_path: Path) -> None:
    record = _written_record(tmp_path)
    supervisor = _Supervisor(tmp_path)
    said: list[str] = []
    stop_children(supervisor, True, object(), said.append, record, 10)  # type: ignore[arg-type]
    assert supervisor.named_at_stop == {"broker": 10, "worker": 11, "sink": 99}
    assert any("started again" in line for line in said)


def test_a_sink_the_supervisor_started_again_is_named_before_the_drain_too(
    tmp_path: Path,
) -> None:
    """Session 39 (round 3): the supervisor's last tick restarted the sink, then a child's
    failure ended the stack: nothing to revive, so nothing was written, and the record named
    the old sink during the drain."""
    record = _written_record(tmp_path)
    supervisor = _Supervisor(tmp_path)
    supervisor.children["sink"] = _Proc(77)  # started again by the supervisor
    supervisor.revive = lambda name: False  # type: ignore[method-assign]
    stop_children(supervisor, True, object(), [].append, record, 10)  # type: ignore[arg-type]
    assert supervisor.named_at_stop == {"broker": 10, "worker": 11, "sink": 77}
