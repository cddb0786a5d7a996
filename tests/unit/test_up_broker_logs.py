"""`baton up` keeps the broker logs of its last starts only (each start's broker has its own
port, so its own tansu-PORT.log: a week of restarts left one a restart; session 29, H3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from baton.cli import up_restart

pytestmark = pytest.mark.unit


def test_the_newest_earlier_broker_logs_are_kept_the_rest_removed(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(5):
        path = logs / f"tansu-{4000 + i}.log"
        path.write_text(f"start {i}\n")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    (logs / "worker.log").write_text("kept\n")
    up_restart.prune_broker_logs(logs, print)
    assert sorted(p.name for p in logs.iterdir()) == [
        "tansu-4003.log",
        "tansu-4004.log",
        "worker.log",
    ]
    up_restart.prune_broker_logs(tmp_path / "no-logs-yet", print)  # a first start: nothing to do
