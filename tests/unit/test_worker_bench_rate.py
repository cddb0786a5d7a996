"""bench.worker_bench's backlog rate: decisions stamped once per batch, before it is decided."""

import math
from collections import Counter

import pytest

from bench.worker_bench import backlog_rate, makespan_rate

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


def test_two_workers_of_three_batches_each_read_their_sum_not_half_again() -> None:
    # each worker 10k events a second; stamps alone spanned 2 s for 60k events: 30k/s
    a = _stamps(("00.0", 10_000), ("01.0", 10_000), ("02.0", 10_000))
    b = _stamps(("00.1", 10_000), ("01.1", 10_000), ("02.1", 10_000))
    assert makespan_rate({"a": a, "b": b}, 60_000) == pytest.approx(60_000 / 3.1)


def test_one_worker_alone_reads_as_its_backlog_rate() -> None:
    a = _stamps(("00.0", 10_000), ("01.0", 10_000), ("02.0", 10_000))
    assert makespan_rate({"a": a}, 30_000) == pytest.approx(backlog_rate(a, 30_000))


def test_a_worker_that_decided_its_share_in_one_batch_gives_no_rate() -> None:
    a = _stamps(("00.0", 10_000), ("01.0", 10_000))
    assert math.isnan(makespan_rate({"a": a, "b": _stamps(("00.5", 5_000))}, 25_000))
