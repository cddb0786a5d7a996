"""One step of a batch's publishing (its decisions, or its run states) until librdkafka has
reported the delivery of each of its records.

The publisher (processors/publish.py) counts a record into the step once librdkafka took it
(``produce`` did not raise), and the record's delivery report counts it off; ``seal`` says
no more records join. The step's future completes when both are done, or fails with
``DeliveryFailed`` naming the first records that were not delivered. Reports are served
where ``poll``/``flush`` is called: on the event loop's thread they complete the future at
once; anywhere else (a flush at shutdown) they hand it to the loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from confluent_kafka import KafkaError

from baton.schemas.errors import BrokerUnavailable
from baton.streams.kafka import undelivered

__all__ = ["DeliveryFailed", "DeliveryStep"]


class DeliveryFailed(BrokerUnavailable):
    """A record could not be delivered within librdkafka's message.timeout.ms."""


class DeliveryStep:
    """The records of one step of a batch (its decisions, or its states) until librdkafka
    has reported each one: ``future`` completes then, or fails naming what was not delivered.

    Counted as produced (``count``) and as reported (``on_delivery``); ``seal`` says no more
    records join, so an early report cannot complete a step still being produced."""

    __slots__ = ("bootstrap", "count", "errors", "future", "loop", "sealed", "thread")

    def __init__(self, bootstrap: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.future: asyncio.Future[None] = self.loop.create_future()
        self.bootstrap = bootstrap
        self.count = 0
        self.errors: list[str] = []
        self.sealed = False

    def on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        failed = undelivered(err, msg)
        if failed is not None:
            self.errors.append(failed)
        self.count -= 1
        if self.sealed and self.count == 0:
            self._complete()

    def seal(self) -> None:
        self.sealed = True
        if self.count == 0:
            self._complete()

    def _complete(self) -> None:
        # reports are served on the loop's thread; a flush at shutdown may serve them elsewhere
        if threading.get_ident() == self.thread:
            self._resolve()
        else:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self.errors:
            self.future.set_exception(
                DeliveryFailed(
                    f"could not deliver {len(self.errors)} records to Kafka at "
                    f"{self.bootstrap}: " + "; ".join(self.errors[:3])
                )
            )
        else:
            self.future.set_result(None)
