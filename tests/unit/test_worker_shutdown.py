"""A worker's stop ends the tasks left once its services stopped at once, not after mode's
fixed sleeps (1 s waiting for them to end on their own, then 1 s more: 2 s every stop)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from baton.cli.worker_cmd import _worker_class

pytestmark = pytest.mark.unit


def test_the_tasks_left_at_the_stop_are_cancelled_at_once_and_their_cleanup_runs() -> None:
    loop = asyncio.new_event_loop()
    cleaned: list[str] = []

    async def idle_forever(name: str) -> None:  # an aiokafka sender or connection reader
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append(name)

    try:
        tasks = [loop.create_task(idle_forever(name)) for name in ("sender", "reader")]
        loop.run_until_complete(asyncio.sleep(0))  # both started
        worker = SimpleNamespace(loop=loop)
        started = time.monotonic()
        _worker_class()._gather_all(worker)
        took = time.monotonic() - started
        assert sorted(cleaned) == ["reader", "sender"]
        assert not asyncio.all_tasks(loop) and all(t.cancelled() for t in tasks)
        assert took < 0.5, f"{took:.2f} s (mode's own waits 1 s for tasks that never end)"

        started = time.monotonic()
        loop.run_until_complete(_worker_class()._sentinel_task(worker))
        assert time.monotonic() - started < 0.5
    finally:
        loop.close()


def test_nothing_left_is_nothing_to_wait_for() -> None:
    loop = asyncio.new_event_loop()
    try:
        _worker_class()._gather_all(SimpleNamespace(loop=loop))
    finally:
        loop.close()
