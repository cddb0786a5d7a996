"""processors/faust_handover.py: the consumer thread's fetch handed to its loop and answered
without mode's method queue; the outcome (records, error, a shutdown's cancel) reaches the
caller, and a fetch the caller gave up before it started never starts."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mode.threads import QueueServiceThread

from baton.processors import faust_adapter, faust_handover

pytestmark = pytest.mark.unit


class _NoQueue:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the fetch went through mode's method queue ({name})")


class _Thread(QueueServiceThread):
    """A consumer thread's shape: a started mode thread, ``_fetch_records`` run on it."""

    getmany = faust_handover.getmany

    def __init__(self, fetch: Any) -> None:
        super().__init__()
        self.fetch, self.ran_on = fetch, []

    def _ensure_consumer(self) -> Any:
        return type("Consumer", (), {"_max_poll_records": 7})()

    async def _fetch_records(self, consumer: Any, partitions: Any, **kwargs: Any) -> Any:
        self.ran_on.append(threading.get_ident())
        return await self.fetch(partitions, **kwargs)


@contextlib.asynccontextmanager
async def _started(fetch: Any) -> AsyncIterator[_Thread]:
    """A started thread whose method queue fails any call; stopped at the end."""
    thread = _Thread(fetch)
    await thread.start()
    thread._method_queue = _NoQueue()  # type: ignore[assignment]
    try:
        yield thread
    finally:
        thread._method_queue = None
        await thread.stop()


def test_the_fetch_runs_on_the_thread_and_its_records_come_back() -> None:
    async def fetch(partitions: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.01)
        return {"records": sorted(partitions), **kwargs}

    async def go() -> None:
        async with _started(fetch) as thread:
            got = await thread.getmany({2, 1}, 0.5)
            assert got == {"records": [1, 2], "timeout": 0.5, "max_records": 7}
            assert thread.ran_on and thread.ran_on[0] != threading.get_ident()

    asyncio.run(go())


def test_the_fetch_error_is_raised_to_the_caller() -> None:
    async def fetch(partitions: Any, **kwargs: Any) -> Any:
        raise ConnectionError("broker went away")

    async def go() -> None:
        async with _started(fetch) as thread:
            with pytest.raises(ConnectionError, match="went away"):
                await thread.getmany(set(), 0.1)

    asyncio.run(go())


def test_a_fetch_the_thread_cancels_cancels_the_callers_wait() -> None:
    async def fetch(partitions: Any, **kwargs: Any) -> Any:
        asyncio.current_task().cancel()  # what the thread's shutdown does to its tasks
        await asyncio.sleep(1)

    async def go() -> None:
        async with _started(fetch) as thread:
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(thread.getmany(set(), 0.1), 5)

    asyncio.run(go())


def test_a_fetch_the_caller_gave_up_before_it_started_never_starts() -> None:
    loop = asyncio.new_event_loop()
    try:
        promise = loop.create_future()
        promise.cancel()
        ran = []

        async def fetch() -> None:
            ran.append(1)

        coro = fetch()
        faust_handover._start(loop, promise, coro)
        loop.run_until_complete(asyncio.sleep(0))
        assert ran == [] and coro.cr_frame is None  # closed, not left unawaited
    finally:
        loop.close()


def test_the_workers_consumer_thread_fetches_this_way_and_inline_its_own_way() -> None:
    assert faust_adapter._ConsumerThread.getmany is faust_handover.getmany
    assert faust_adapter._InlineConsumerThread.getmany is not faust_handover.getmany
