"""The decisions a client ignored because no key of its ``decision_keys`` signed them.

A client given the workers' public keys (schemas/decision_signing.py) takes only decisions
they signed; one under a key it awaits that is not signed so (forged into gov.decisions, or
published by a worker signing with another key, or none) is ignored, and the caller waits on.
What it ignored is counted here, by request (so that its fail-closed stop at the timeout says
why), and logged at most every 10 s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from baton.streams.sdk.waiters import WaitKey

__all__ = ["UNSIGNED_KEPT", "UnsignedDecisions"]

log = logging.getLogger("baton.client")

#: the request keys whose ignored decisions a client counts (the newest)
UNSIGNED_KEPT = 1024
#: the least time between two of its log lines
_LOG_EVERY_S = 10.0


class UnsignedDecisions:
    """Counts of ignored decisions, in all and for the newest UNSIGNED_KEPT request keys."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self._by_key: OrderedDict[WaitKey, int] = OrderedDict()
        self._logged = float("-inf")

    def ignored(self, msg: Any, key: WaitKey) -> None:
        """The record ``msg`` under ``key`` was ignored: counted, and logged."""
        with self._lock:
            self.total += 1
            counts = self._by_key
            counts[key] = counts.pop(key, 0) + 1
            if len(counts) > UNSIGNED_KEPT:
                counts.popitem(last=False)
            now = time.monotonic()
            if now - self._logged < _LOG_EVERY_S:
                return
            self._logged = now
            total = self.total
        log.warning(
            "ignored %s[%d]@%d, a decision for run %r request %r that no key of decision_keys "
            "signed (forged, or the workers sign with another BATON_DECISION_SIGNING_KEY, or "
            "none); %d ignored so far",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            key[0][:80],
            key[1][:80],
            total,
        )

    def count(self, key: WaitKey) -> int:
        """How many decisions under ``key`` were ignored (0 once it is no longer kept)."""
        with self._lock:
            return self._by_key.get(key, 0)
