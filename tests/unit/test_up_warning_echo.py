"""`baton up` shows its children's WARNING and ERROR lines (session 33: the worker's capacity
warnings, kill switches and policy updates, the sink's failing inserts were in DATA_DIR/logs
only), bounded so that a flood of one warning never floods the terminal."""

from __future__ import annotations

import pytest

from baton.cli.supervisor import WarningEcho

pytestmark = pytest.mark.unit

TEXT = "2026-12-04 05:02:23,812 WARNING baton.processors.control: kill_switch tenant acme by oncall"
JSON = '{"ts": "2026-12-04T05:02:23Z", "level": "error", "logger": "baton.capacity", "msg": "full"}'


def test_warning_and_error_lines_are_echoed_in_either_format_and_others_not() -> None:
    said: list[str] = []
    echo = WarningEcho("worker", said.append)
    echo(TEXT)
    echo(JSON)
    echo("2026-12-04 05:02:23,812 INFO baton.worker: 1 batch")
    echo("baton worker vm:1: Kafka 127.0.0.1:9, policy x, 8 partitions")
    echo("a traceback line mentioning WARNING in the middle")
    assert said == [f"worker: {TEXT}", f"worker: {JSON}"]


def test_a_flood_is_cut_to_the_burst_a_window_and_the_rest_counted() -> None:
    said: list[str] = []
    now = [0.0]
    echo = WarningEcho("worker", said.append, burst=3, window_s=60, clock=lambda: now[0])
    for _ in range(50):
        echo(TEXT)
    assert len(said) == 4 and "more in this minute go to its log only" in said[-1]
    now[0] = 61.0
    echo(TEXT)
    assert said[4] == "worker: 47 more warning line(s) went to its log only"
    assert said[5] == f"worker: {TEXT}"


def test_a_huge_line_is_cut() -> None:
    said: list[str] = []
    WarningEcho("sink", said.append)(TEXT + "x" * 100_000)
    assert len(said[0]) <= 610
