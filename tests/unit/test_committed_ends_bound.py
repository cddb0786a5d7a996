"""`committed_ends` bounds each partition and, when asked, all of them (session 30, H3).

`baton doctor` passed its timeout per partition: on a cluster whose open transactions held
the partitions it waited partitions x timeout before falling back to the watermarks. (Tansu
does not hold a read_committed reader behind an open transaction, so this is shown with the
per-partition read replaced by a slow one.)"""

from __future__ import annotations

import time
from typing import Any

import pytest

from baton.streams import transactions

pytestmark = pytest.mark.unit


class _Consumer:
    def __init__(self, _config: Any) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_total_bound_ends_the_reads_of_partitions_that_each_take_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits: list[float] = []

    def slow(_c: Any, _t: str, _p: int, _end: int, _w: int, limit: float) -> int:
        limits.append(limit)
        time.sleep(min(limit, 0.4))  # a partition held: its whole bound
        if limit < 0.4:
            raise TimeoutError("held")
        return 1

    monkeypatch.setattr(transactions, "Consumer", _Consumer)
    monkeypatch.setattr(transactions, "_last_data_end", slow)
    ends = {("t", p): 1 for p in range(10)}
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        transactions.committed_ends({}, ends, timeout_s=0.4, total_timeout_s=1.0)
    assert time.monotonic() - started < 1.5  # not 10 x 0.4 s
    assert limits[0] == pytest.approx(0.4) and len(limits) <= 4
    limits.clear()
    assert transactions.committed_ends({}, dict(list(ends.items())[:2]), timeout_s=0.4) == {
        ("t", 0): 1,
        ("t", 1): 1,
    }
    assert limits == [0.4, 0.4]  # no total bound: each its own


@pytest.mark.parametrize("timeout_s, hold_s", [(10.0, 15.0), (1.0, 6.0), (900.0, 905.0)])
def test_a_restoring_worker_holds_for_its_transaction_timeout_and_a_margin(
    monkeypatch: pytest.MonkeyPatch, timeout_s: float, hold_s: float
) -> None:
    """A changelog held by a transaction left open ends the worker (78) once it has not
    changed for the workers' transaction timeout + 5 s (a fixed 30 s before): a Kafka broker
    has aborted a crashed worker's transaction by then; past it, the restart tries again."""
    from baton.processors import exits

    asked: dict[str, Any] = {}
    monkeypatch.setattr(exits, "committed_ends", lambda _c, ends, **kw: asked.update(kw) or {})
    exits.changelog_ends({}, {("c", 0): 1}, timeout_s)
    assert asked["hold_s"] == hold_s and asked["timeout_s"] >= hold_s
