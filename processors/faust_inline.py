"""Faust's Kafka consumer run on the worker's own event loop instead of a thread of its own.

Faust runs aiokafka's consumer in a ``ServiceThread`` (mode): a second thread with a second
event loop, reached through method queues. Every fetch is a round trip between the two
loops (a self-pipe write each way) and the two threads take turns at the GIL. At a steady
rate of small fetches that costs more CPU than deciding: at 1,000 events/s the consumer
thread used ~15 % of a core, most of it outside Python (docs/performance.md). With
``BATON_CONSUMER_LOOP=inline`` the same service runs as a task on the worker's loop: the
same aiokafka consumer and Faust code, the calls between them plain awaits.

What changes for the thread's service (mode.threads.ServiceThread), and why:
  * ``Worker`` — :class:`InlineWorker` runs ``_serve()`` as a task on the parent loop where
    mode's ``WorkerThread`` would start a thread running a loop of its own.
  * ``thread_loop`` — the parent loop itself (mode's thread-safe calls work on it as on any).
  * ``_gather_remaining_tasks`` — nothing: mode cancels every task of the thread's loop when
    the thread's service ends, which here would be the worker's own tasks. aiokafka's tasks
    are ended by its consumer's ``stop()`` (``on_thread_stop``), which runs before.
  * ``getmany`` — calls ``_fetch_records`` itself, where the thread's enqueues it on mode's
    method queue for the thread's loop to run.
  * ``stop`` — waits for ``_serve()`` to end (the consumer stopped, the group left), as
    mode's ``WorkerThread.stop()`` joins the thread.

  * ``_keepalive2`` — nothing: mode's check that the thread's loop still runs (an ERROR
    "Thread keepalive is not responding" after any batch step longer than 3 s) has no thread
    to check; the loop it would check is the worker's own.

  * after a fetch that brought records, :func:`let_the_next_fetch_go` gives aiokafka's fetch
    routine the loop turns it needs to send the next fetch (woken by the records handed out,
    it starts the request's task, which writes it: 3 turns), so that fetch is in flight while
    the batch is decided, as with a thread; without them it went out only once the batch was
    decided and published. Measured (bench/RESULTS.md, eighth session, H2): the next fetch
    sent 1-2 ms sooner, the decisions' p50 lower in 6 of 8 paired rounds against inline
    without it and in 7 of 8 against the consumer thread, p99 lower in both runs; +11-14 %
    worker CPU an event against inline without it (more fetches), still at or below the
    thread's.

The trade: while the worker decides a batch (milliseconds; ~1 s for 10,000 events) nothing
new arrives and the group's heartbeats wait (BATON_SESSION_TIMEOUT_S, 10 s by default); with a
thread, the next fetch could arrive meanwhile, though Python code of the two threads never
ran at once. A batch step that holds the loop past 2/3 of the session timeout may have lost
the partitions without the generation saying so yet: the worker then publishes nothing of it
and exits uncommitted (``GovernanceWorker._heartbeats_waited``), so a batch that is always
that slow stops every inline worker in turn, where the consumer thread would carry on: give
inline workers a session timeout well above their slowest batch step.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["InlineWorker", "inline_thread_options", "let_the_next_fetch_go"]

#: loop turns aiokafka 0.14's fetch routine takes to write the next FetchRequest once a
#: fetch's records are handed out (measured: 3), and one to spare
_TURNS_TO_THE_NEXT_FETCH = 4


class InlineWorker:
    """Stands in for mode's ``WorkerThread``: the service's ``_serve()`` as a task."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = self.service.parent_loop.create_task(
            self.service._serve(), name=f"inline {self.service.label}"
        )

    def stop(self) -> None:
        """Nothing to join: the service's ``stop`` awaits :meth:`wait` instead."""

    async def wait(self) -> None:
        """Until the service's ``_serve()`` has ended (mode's ``WorkerThread.stop`` joins)."""
        if self.task is not None and not self.task.done():
            await asyncio.wait({self.task})

    def is_alive(self) -> bool:
        return self.task is not None and not self.task.done()


def inline_thread_options(loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """The keyword arguments that make a ``ServiceThread`` run on ``loop`` (the parent's)."""
    return {"loop": loop, "thread_loop": loop, "Worker": InlineWorker}


async def let_the_next_fetch_go() -> None:
    """Yield the loop until aiokafka has sent the next fetch, so it is in flight while the
    batch just fetched is decided (the turns are few and cheap: no sleep, no wait)."""
    for _ in range(_TURNS_TO_THE_NEXT_FETCH):
        await asyncio.sleep(0)
