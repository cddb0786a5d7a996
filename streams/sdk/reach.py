"""What librdkafka saw of the brokers (its ``error_cb``), and a metadata read that stops as
soon as every bootstrap broker is known to be down.

librdkafka reports a refused connection, a name it cannot resolve, a TLS or SASL failure
through ``error_cb`` (served by ``poll``) and ``_ALL_BROKERS_DOWN`` once every broker it
knows failed; ``list_topics`` alone only says "timed out" when its timeout is spent (10 s by
default). Not guaranteed: a port that takes the connection and never answers reports
nothing before the timeout (it is then named as such).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from baton.schemas.errors import BrokerUnavailable

__all__ = ["BrokerWatch"]

log = logging.getLogger("baton.client")

#: librdkafka errors that say a broker cannot be reached or spoken to
_TROUBLE = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._RESOLVE,
        KafkaError._SSL,
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
    }
)
#: the connect timeout is spent in slices this long, reading librdkafka's errors between them
_SLICE_S = 0.25


class BrokerWatch:
    """librdkafka's ``error_cb`` of one client's producer and consumer: the last error that
    says a broker is out of reach, and whether all of them were down."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._last: tuple[float, str] | None = None
        self._all_down = threading.Event()

    def on_error(self, err: KafkaError) -> None:
        """The ``error_cb`` (librdkafka's thread of ``poll``/``consume``)."""
        code = err.code()
        if code == KafkaError._ALL_BROKERS_DOWN:
            self._all_down.set()
        elif code in _TROUBLE or err.fatal():
            self._last = (time.monotonic(), err.str())
            log.debug("Kafka at %s: %s", self.bootstrap, err.str())

    @property
    def last(self) -> str | None:
        return self._last[1] if self._last is not None else None

    def trouble(self, within_s: float = 60.0) -> str:
        """``; librdkafka reported N s ago: ...`` when it reported a broker out of reach in the
        last ``within_s`` seconds, else "" (appended to a fail-closed answer's detail)."""
        seen = self._last
        if seen is None or time.monotonic() - seen[0] > within_s:
            return ""
        return f"; librdkafka reported {time.monotonic() - seen[0]:.0f} s ago: {seen[1]}"

    def list_topics(self, producer: Producer, timeout_s: float) -> Any:
        """``producer``'s cluster metadata within ``timeout_s``, asked in slices so what
        librdkafka reports meanwhile is seen: once every bootstrap broker is down (refused,
        unknown name, TLS refused) this raises ``BrokerUnavailable`` at once, naming the
        address and librdkafka's words; past ``timeout_s``, naming what it last saw."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                # no topic name: on Tansu (and auto-creating Kafkas) asking for a missing
                # topic by name creates it with the broker's default partition count
                return producer.list_topics(timeout=max(min(left, _SLICE_S), 0.01))
            except KafkaException as exc:
                producer.poll(0)  # serves error_cb
                seen = self.last
                if self._all_down.is_set() and seen is not None:
                    raise BrokerUnavailable(
                        f"cannot reach Kafka at {self.bootstrap} ({seen}); is the broker "
                        "running, and is this its address (BATON_BOOTSTRAP)?"
                    ) from exc
                if time.monotonic() >= deadline:
                    said = seen or "it took the connection and answered no Kafka request"
                    raise BrokerUnavailable(
                        f"cannot reach Kafka at {self.bootstrap} (no answer within "
                        f"{timeout_s:g} s: {said}); is the broker running, and is this its "
                        "Kafka port?"
                    ) from exc
