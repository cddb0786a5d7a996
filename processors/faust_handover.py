"""The consumer thread's fetch, handed over without mode's method queue.

Faust runs aiokafka's consumer in a mode ``ServiceThread`` and asks it for each fetch with
``call_thread``: the call goes into the thread's ``MethodQueue`` (an ``asyncio.Queue`` and an
``Event``), one of its two queue workers takes it, and before taking the next one waits
through ``Service.wait``: three tasks (the event, the service's stopped and crashed events)
and an ``asyncio.wait`` a call, all in the consumer thread. At ~100-250 fetches a second that
bookkeeping is a good part of the thread's CPU (docs/performance.md, session 14): a call
handed over and answered cost 82-171 us of CPU that way and 36-46 us as here (a mode
``QueueServiceThread`` in one process, alternating, load ~5).

:func:`getmany` hands ``_fetch_records`` (the call ``AIOKafkaConsumerThread.getmany``
enqueues, same arguments) to the thread's loop with one ``call_soon_threadsafe`` and has its
outcome given back with one more. A fetch the thread's shutdown cancels cancels the caller's
wait (mode's queue would leave it waiting for good); a fetch the caller stopped waiting for
before it started is never started, as mode's queue skips a cancelled promise.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["getmany"]


async def getmany(thread: Any, active_partitions: Any, timeout: float) -> Any:
    """``AIOKafkaConsumerThread.getmany`` for ``thread`` (a Faust consumer thread, started):
    the records of one fetch, run on the thread's loop."""
    consumer = thread._ensure_consumer()
    promise = thread.parent_loop.create_future()
    fetch = thread._fetch_records(
        consumer, active_partitions, timeout=timeout, max_records=consumer._max_poll_records
    )
    try:
        thread.thread_loop.call_soon_threadsafe(_start, thread.thread_loop, promise, fetch)
    except BaseException:
        fetch.close()  # never started: no "never awaited" warning
        raise
    return await promise


def _start(loop: asyncio.AbstractEventLoop, promise: asyncio.Future[Any], fetch: Any) -> None:
    """On the consumer thread's loop: run ``fetch``, its outcome to ``promise`` (a future of
    the caller's loop), unless the caller stopped waiting meanwhile."""
    if promise.cancelled():
        fetch.close()
        return
    task = loop.create_task(fetch)
    task.add_done_callback(lambda done: _hand_back(promise, done))


def _hand_back(promise: asyncio.Future[Any], done: asyncio.Task[Any]) -> None:
    """From the consumer thread: settle ``promise`` on its own loop with ``done``'s outcome."""
    promise.get_loop().call_soon_threadsafe(_settle, promise, done)


def _settle(promise: asyncio.Future[Any], done: asyncio.Task[Any]) -> None:
    if promise.done():  # the caller stopped waiting (its fetcher cancelled)
        if not done.cancelled():
            done.exception()  # retrieved: nobody else will
        return
    if done.cancelled():
        promise.cancel()
    elif (exc := done.exception()) is not None:
        promise.set_exception(exc)
    else:
        promise.set_result(done.result())
