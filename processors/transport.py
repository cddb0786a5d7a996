"""Faust's aiokafka transport, tuned for the governance worker's hot path.

Two changes, both measured:

* **Fetch wait.** A Kafka fetch waits up to ``fetch.max.wait.ms`` for data. Apache Kafka
  answers as soon as data arrives; Tansu (the embedded broker) holds every fetch until the
  wait expires, and Faust hard-codes 1500 ms. The wait comes from ``BATON_FETCH_MAX_WAIT_MS``.
* **Batches straight from the fetcher.** Faust hands every message to its conductor and
  streams one at a time (two tasks per message in ``Consumer._drain_messages``, a channel
  queue, stream processors); on these machines that per-message path cost more than the
  governance itself. Messages of the topics the app names in ``app.baton_source_topics`` are
  collected per fetch and given to ``app.baton_on_batch`` as one list; the handler
  acknowledges them (``consumer.ack``) once their outputs are delivered, so offsets are
  committed by Faust's own committer exactly as for stream events. Every other message
  (table changelogs during recovery, other agents) takes Faust's normal path.

The worker registers this transport as ``baton-kafka://``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from faust.transport import drivers
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["SCHEME", "BatchHandler", "register"]

SCHEME = "baton-kafka"

BatchHandler = Callable[[list[Any]], Awaitable[None]]


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # read by AIOKafkaConsumer.start() when it builds its Fetcher
        consumer._fetch_max_wait_ms = self.app.conf.baton_fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - worker loop
        # Faust's loop (faust/transport/consumer.py, Consumer._drain_messages), with the
        # source topics' messages collected into one batch per fetch.
        on_batch: BatchHandler | None = getattr(self.app, "baton_on_batch", None)
        sources: frozenset[str] = getattr(self.app, "baton_source_topics", frozenset())
        if on_batch is None:
            await super()._drain_messages(fetcher)
            return
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        track = self.track_message
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                batch: list[Any] = []
                #: read offsets of the batch's messages, published only once the batch is
                #: decided: the worker's sweep reads them to know a partition has caught up
                batch_read: dict[Any, int] = {}
                ait = getmany(timeout=1.0)
                await asyncio.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        offset = message.offset
                        r_offset = batch_read.get(tp, get_read_offset(tp))
                        if r_offset is not None and offset < r_offset:
                            continue  # already read (Faust drops these too)
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if message.topic in sources:
                            track(message)
                            batch.append(message)
                            batch_read[tp] = offset
                        else:
                            if batch:  # keep order with anything else this fetch held
                                await on_batch(batch)
                                self._read_offset.update(batch_read)
                                batch, batch_read = [], {}
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                    if batch:
                        await on_batch(batch)
                        self._read_offset.update(batch_read)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


class Transport(faust_aiokafka.Transport):
    Consumer: ClassVar[type[_Consumer]] = _Consumer


def register() -> None:
    """Make ``baton-kafka://host:port`` resolve to this transport (idempotent)."""
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
