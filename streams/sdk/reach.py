"""What librdkafka saw of the brokers (its ``error_cb``), and a metadata read that names it.

librdkafka reports a refused connection, a name it cannot resolve, a TLS or SASL failure
through ``error_cb`` (served by ``poll``); ``list_topics`` alone only says "timed out" when its
timeout is spent (10 s by default), which the SDK repeated. Not guaranteed: a port that takes
the connection and never answers reports nothing (it is then named as such).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from baton.schemas.errors import BrokerUnavailable
from baton.streams.net import shown_bootstrap

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
    says a broker is out of reach."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._last: tuple[float, str] | None = None

    def on_error(self, err: KafkaError) -> None:
        """The ``error_cb`` (librdkafka's thread of ``poll``/``consume``)."""
        if err.code() in _TROUBLE or err.fatal():
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
        librdkafka reports meanwhile is seen; past ``timeout_s``, ``BrokerUnavailable``
        naming the address and what librdkafka last said of it (a refused connection, a host
        name that does not resolve, a TLS or SASL failure), or that nothing answered.

        The whole ``timeout_s`` is waited even when every broker is down: a broker still
        starting (compose, a rolling restart) refuses connections for a few seconds, and
        the connect timeout is how long a client waits for it."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                # no topic name: on Tansu (and auto-creating Kafkas) asking for a missing
                # topic by name creates it with the broker's default partition count
                return producer.list_topics(timeout=max(min(left, _SLICE_S), 0.01))
            except KafkaException as exc:
                producer.poll(0)  # serves error_cb
                if time.monotonic() < deadline:
                    continue
                seen, where = self.last, shown_bootstrap(self.bootstrap)
                if seen is not None:
                    raise BrokerUnavailable(
                        f"cannot reach Kafka at {where} within {timeout_s:g} s "
                        f"({shown_bootstrap(seen, 400)}); is the broker running, and is this "
                        "its address (BATON_BOOTSTRAP)?"
                    ) from exc
                raise BrokerUnavailable(
                    f"cannot reach Kafka at {where} within {timeout_s:g} s (it took "
                    "the connection and answered no Kafka request); is the broker running, "
                    "and is this its Kafka port?"
                ) from exc
