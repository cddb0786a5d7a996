"""A broker start waits for another process's copy of the broker binary (a flock beside the
cache): said once, and bounded. A lock held by a stuck process hung `baton up` at "starting
the embedded Kafka broker", silent, without end (session 39)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from baton.schemas.errors import BrokerUnavailable
from baton.streams.embedded import _wait_for_lock

pytestmark = pytest.mark.unit


def test_a_held_lock_is_said_and_waited_for_within_a_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / ".resolve.lock"
    holder = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    waiter = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(BrokerUnavailable, match=r"stayed locked for 0.3 s .*fuser"):
            _wait_for_lock(waiter, path, 0.3)
        assert capsys.readouterr().err.count(f"waiting for {path}") == 1
        os.close(holder)  # released: taken at once, nothing said
        holder = -1
        _wait_for_lock(waiter, path, 0.3)
        assert capsys.readouterr().err == ""
    finally:
        os.close(waiter)
        if holder >= 0:
            os.close(holder)
