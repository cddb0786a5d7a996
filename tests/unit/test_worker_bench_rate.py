"""bench.worker_bench's backlog rate: decisions stamped once per batch, before it is decided."""

import math
from collections import Counter

import pytest

from bench.worker_bench import backlog_rate

pytestmark = pytest.mark.unit


def _stamps(*batches: tuple[str, int]) -> Counter[str]:
    return Counter({f"2026-11-30T04:00:{sec}+00:00": n for sec, n in batches})


def test_three_batches_of_a_second_each_read_ten_thousand_a_second_not_fifteen() -> None:
    stamps = _stamps(("00.000", 10_000), ("01.000", 10_000), ("02.000", 10_000))
    assert backlog_rate(stamps, 30_000) == pytest.approx(10_000)


def test_a_small_tail_batch_reads_the_same_rate_as_three_even_batches() -> None:
    # the "dip" of issue 15: the backlog over the span read 15k here and 10k with the tail
    even = backlog_rate(_stamps(("00.0", 10_000), ("01.0", 10_000), ("02.0", 10_000)), 30_000)
    tail = backlog_rate(
        _stamps(("00.0", 10_000), ("01.0", 10_000), ("02.0", 9_900), ("02.99", 100)), 30_000
    )
    assert tail == pytest.approx(even)


def test_more_decisions_than_events_scale_back_to_events() -> None:
    stamps = _stamps(("00.0", 12_000), ("01.0", 12_000), ("02.0", 12_000))
    assert backlog_rate(stamps, 30_000) == pytest.approx(10_000)


def test_a_backlog_decided_in_one_batch_has_no_rate() -> None:
    assert math.isnan(backlog_rate(_stamps(("00.0", 30_000)), 30_000))
