"""bench.latency_bench's relay variants as sides of one run (``relay:burn=N``, ``relay:pad=N``),
its broker pinning and its idle phase (``--idle``)."""

import argparse
import os
import threading

import pytest

from bench.latency_bench import idle_phase, no_side, pin_threads, relay_env

pytestmark = pytest.mark.unit


def test_the_plain_relay_clears_both_experiments() -> None:
    # an ambient BENCH_RELAY_BURN_US must not leak into the baseline
    assert relay_env("relay") == {"BENCH_RELAY_BURN_US": "0", "BENCH_RELAY_PAD_TO": "0"}


def test_a_relay_side_sets_its_burn_and_pad() -> None:
    assert relay_env("relay:burn=80") == {"BENCH_RELAY_BURN_US": "80", "BENCH_RELAY_PAD_TO": "0"}
    assert relay_env("relay:pad=1150,burn=40") == {
        "BENCH_RELAY_BURN_US": "40",
        "BENCH_RELAY_PAD_TO": "1150",
    }


@pytest.mark.parametrize("side", ["relay:spin=80", "relay:burn=-5", "relay:burn=nan", "relay:pad"])
def test_a_bad_relay_setting_is_a_clear_error(side: str) -> None:
    with pytest.raises(SystemExit, match="burn=N, pad=N"):
        relay_env(side)


def test_pinning_covers_every_thread_of_the_process() -> None:
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, args=(10,))
    other.start()
    try:
        pin_threads(os.getpid(), {cpu})
        assert os.sched_getaffinity(other.native_id) == {cpu}
        assert os.sched_getaffinity(0) == {cpu}
    finally:
        for task in os.listdir(f"/proc/{os.getpid()}/task"):
            os.sched_setaffinity(int(task), allowed)
        stop.set()
        other.join(10)


def test_an_idle_phase_counts_the_brokers_cpu_a_second_and_none_has_no_process() -> None:
    # this process stands in for the broker: a thread spinning while the phase measures
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    busy = threading.Thread(target=spin)
    busy.start()
    try:
        args = argparse.Namespace(seconds=0.4)
        broker, own = idle_phase(no_side(), args, os.getpid(), settle_s=0.0)
    finally:
        stop.set()
        busy.join(10)
    assert own == 0.0  # side "none": nothing connected, nothing counted
    assert 0.2 <= broker <= float(os.cpu_count() or 1) + 0.1
