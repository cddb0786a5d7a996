"""bench.latency_bench's worker CPU by thread: the event loop, the busiest other thread (Faust's
consumer thread), the rest."""

import os
import threading
import time

import pytest

from bench.latency_bench import (
    compiled_loaded,
    cpu_split,
    run_queue_seconds,
    thread_cpu_seconds,
    wait_split,
)
from tests.builds import COMPILED

pytestmark = pytest.mark.unit


def test_the_split_names_the_main_thread_the_busiest_other_and_the_rest() -> None:
    before = {10: 1.0, 11: 2.0, 12: 3.0, 13: 0.5}
    after = {10: 1.5, 11: 2.25, 12: 3.75, 13: 0.5, 14: 0.125}  # 14 started meanwhile
    assert cpu_split(10, before, after) == (0.5, 0.75, 0.375)


def test_a_busy_thread_of_this_process_is_counted_apart_from_the_main_thread() -> None:
    spun, stop = threading.Event(), threading.Event()

    def spin() -> None:
        until = time.thread_time() + 0.3
        while time.thread_time() < until:
            pass
        spun.set()
        stop.wait(10)  # alive while measured: an ended thread leaves /proc

    worker = threading.Thread(target=spin)
    before = thread_cpu_seconds(os.getpid())
    worker.start()
    try:
        assert spun.wait(10)
        main, busiest, _rest = cpu_split(os.getpid(), before, thread_cpu_seconds(os.getpid()))
    finally:
        stop.set()
        worker.join(10)
    assert busiest >= 0.2 and main < busiest


def test_run_queue_waits_are_split_by_the_threads_cpu_names() -> None:
    cpu = ({10: 1.0, 11: 2.0, 12: 3.0}, {10: 1.5, 11: 2.25, 12: 3.75, 14: 0.1})
    waits = ({10: 0.1, 11: 0.2, 12: 0.3}, {10: 0.15, 11: 0.5, 12: 0.35, 14: 0.0625})
    # 12 spent the most CPU of the others: its wait is the second figure, 11 and 14 the rest
    main, busiest, rest = wait_split(10, waits, cpu)
    assert (round(main, 6), round(busiest, 6), round(rest, 6)) == (0.05, 0.05, 0.3625)


def test_this_process_has_a_run_queue_wait_for_each_thread() -> None:
    waits = run_queue_seconds(os.getpid())
    assert threading.get_native_id() in waits
    assert all(w >= 0.0 for w in waits.values())


def test_an_interpreted_process_maps_no_compiled_baton_module() -> None:
    # the editable install: pure Python; a compiled build first on PYTHONPATH (tests/
    # integration/test_compiled_core.py): its modules are mapped, and counted
    if COMPILED:
        assert compiled_loaded(os.getpid()) > 0
    else:
        assert compiled_loaded(os.getpid()) == 0
