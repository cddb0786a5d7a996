"""How far the worker has decided its partitions: the sweep's caught-up test and the lag gauge.

Both compare the fetch positions after fully decided fetches (``WorkerRuntime.decided``,
kept by the transport) with the high watermarks Faust's consumer knows. Positions, not
offsets of decided records: a transaction's commit marker takes an offset that is never
delivered as a record.
"""

from __future__ import annotations

from collections.abc import Iterable

import faust
from faust.types import TP

__all__ = ["caught_up", "lag", "log_end"]


def _highwater(consumer: object, tp: TP) -> int | None:
    """The high watermark the consumer's last fetch of ``tp`` reported; None when it has
    none (not fetched yet, not assigned or revoked meanwhile, the consumer not started)."""
    try:
        high = consumer.highwater(tp)  # type: ignore[attr-defined]
    except Exception:
        return None
    return high if type(high) is int else None


def caught_up(
    app: faust.App, decided: dict[tuple[str, int], int], topics: Iterable[str], partition: int
) -> bool:
    """True when every event already in ``partition`` of ``topics`` has been decided.

    Eviction and approval expiry use the wall clock; with a backlog waiting (after an
    outage, or a rebalance) the run's newer events — a grant, another handoff — have
    not been seen yet, and acting on the clock would expire or forget what they change.
    """
    consumer = app.consumer
    for topic in topics:
        high = _highwater(consumer, TP(topic, partition))
        position = decided.get((topic, partition))
        if high is None or position is None or position < high:
            return False
    return True


def lag(app: faust.App, decided: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> high watermark - decided position, for the assigned partitions."""
    out: dict[tuple[str, int], int] = {}
    consumer = app.consumer
    try:
        assigned = app.assignor.assigned_actives()
    except Exception:  # not started yet
        assigned = set()
    for tp in assigned:
        position = decided.get((tp.topic, tp.partition))
        high = _highwater(consumer, tp)
        if position is not None and high is not None:
            out[(tp.topic, tp.partition)] = max(high - position, 0)
    return out


def log_end(app: faust.App, topic: str, partition: int) -> int:
    """The partition's high watermark as the consumer's last fetch of it reported, -1 when
    it has none (not fetched, not assigned): what a run's read position is checked against
    (processors/batch_routing.read_before)."""
    try:
        consumer = app.consumer
    except Exception:  # the consumer not started
        return -1
    high = _highwater(consumer, TP(topic, partition))
    return -1 if high is None else high
