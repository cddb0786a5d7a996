"""`baton up`'s watch of its embedded broker's memory (Tansu keeps every record in memory and
applies no retention): the limit's syntax, the lines at 25 % and 50 %, the stop past it."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from baton.cli import up_memory
from baton.cli.up_memory import (
    BrokerMemory,
    check_broker,
    machine_memory,
    memory_limit,
    resident_bytes,
    size_text,
)
from baton.schemas.errors import BrokerUnavailable, ConfigError

MB = 1 << 20
GB = 1 << 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("75%", 6 * GB),
        ("50 %", 4 * GB),
        ("4G", 4 * GB),
        ("512M", 512 * MB),
        ("2.5GiB", int(2.5 * GB)),
        ("1gb", GB),
        (str(100 * MB), 100 * MB),
        ("off", None),
        ("OFF", None),
        ("0", None),
    ],
)
def test_the_limit_is_a_size_a_share_of_the_machine_or_off(text: str, expected: int | None) -> None:
    assert memory_limit(text, 8 * GB) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0%", "above 0 %"),
        ("150%", "at most 100 %"),
        ("nan%", "above 0 %"),
        ("-5%", "above 0 %"),
        ("x%", "above 0 %"),
        ("lots", "not a size"),
        ("4X", "not a size"),
        ("-4G", "not a size"),
        ("1e9", "not a size"),
        ("10M", "below 64M"),
        ("99999999999999999999T", "more than any machine"),
    ],
)
def test_a_limit_that_is_none_of_them_is_refused_naming_the_option(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match="--broker-memory-max") as caught:
        memory_limit(text, 8 * GB)
    assert why in str(caught.value)


def test_a_share_of_a_memory_that_cannot_be_read_is_not_watched() -> None:
    assert memory_limit("75%", None) is None
    assert memory_limit("4G", None) == 4 * GB


def test_the_machine_is_its_memtotal_or_its_cgroups_limit_where_smaller(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       8388608 kB\nMemFree:  1 kB\n")
    cgroup = tmp_path / "memory.max"
    cgroup.write_text("max\n")
    assert machine_memory(meminfo, cgroup) == 8 * GB
    cgroup.write_text(f"{2 * GB}\n")
    assert machine_memory(meminfo, cgroup) == 2 * GB
    cgroup.write_text(f"{16 * GB}\n")
    assert machine_memory(meminfo, cgroup) == 8 * GB
    assert machine_memory(tmp_path / "none", tmp_path / "none") is None


def test_a_process_resident_memory_is_read_from_proc(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "status").write_text("Name:\ttansu\nVmRSS:\t  18804 kB\n")
    assert resident_bytes(42, tmp_path) == 18804 * 1024
    assert resident_bytes(43, tmp_path) is None


class _Broker:
    """A broker whose memory the test sets, on a clock the test moves."""

    def __init__(self, limit: int, machine: int | None = 24 * GB) -> None:
        self.now = 0.0
        self.held: int | None = 20 * MB
        self.lines: list[str] = []
        self.watch = BrokerMemory(
            7,
            limit,
            self.lines.append,
            machine=machine,
            rss=lambda pid: self.held,
            clock=lambda: self.now,
        )

    def at(self, seconds: float, held: int | None) -> None:
        self.now, self.held = seconds, held
        self.watch.tick()


def test_it_says_a_line_at_a_quarter_and_at_half_of_the_limit_once_each() -> None:
    broker = _Broker(400 * MB)
    broker.at(0, 20 * MB)
    broker.at(5, 90 * MB)
    assert broker.lines == []
    broker.at(10, 101 * MB)
    assert len(broker.lines) == 1
    assert "holds 101 MB in memory, 25% of --broker-memory-max 400 MB" in broker.lines[0]
    assert "(0% of this machine's 24 GB)" in broker.lines[0]
    # 81 MB over 10 s: 486 MB a minute, 299 MB left
    assert "growing 486 MB a minute (the limit in ~1 min at this rate)" in broker.lines[0]
    assert "It keeps every record (no retention)" in broker.lines[0]
    broker.at(15, 150 * MB)
    broker.at(20, 190 * MB)
    assert len(broker.lines) == 1
    broker.at(25, 201 * MB)
    assert len(broker.lines) == 2
    assert "holds 201 MB in memory, 50% of --broker-memory-max 400 MB" in broker.lines[1]
    broker.at(30, 300 * MB)
    assert len(broker.lines) == 2


def test_a_jump_past_both_shares_is_one_line_the_higher_one() -> None:
    broker = _Broker(400 * MB)
    broker.at(0, 250 * MB)
    assert len(broker.lines) == 1
    assert "50% of --broker-memory-max" in broker.lines[0]
    assert "growing" not in broker.lines[0]  # one reading tells no rate


def test_it_reads_at_most_every_few_seconds_and_skips_a_reading_that_failed() -> None:
    broker = _Broker(400 * MB)
    reads = []
    broker.watch._rss = lambda pid: reads.append(pid) or broker.held
    broker.at(0, 20 * MB)
    broker.at(1, 20 * MB)
    broker.at(4.9, 20 * MB)
    assert len(reads) == 1
    broker.at(5, None)  # gone or unreadable for a moment: the stack notices a broker's end
    assert broker.watch.last == 20 * MB
    broker.at(10, 30 * MB)
    assert broker.watch.last == 30 * MB
    assert len(reads) == 3


def test_past_the_limit_it_stops_the_stack_saying_why_and_what_to_do() -> None:
    broker = _Broker(400 * MB, machine=8 * GB)
    broker.at(0, 100 * MB)
    broker.at(5, 399 * MB)
    with pytest.raises(BrokerUnavailable) as caught:
        broker.at(10, 401 * MB)
    text = str(caught.value)
    assert caught.value.exit_code == 4
    assert "holds 401 MB in memory (5% of this machine's 8.0 GB), past --broker-memory-max" in text
    assert "applies no retention" in text
    assert "Start it again: the runs' state" in text
    assert "BATON_BROKER_MEMORY_MAX" in text


def test_a_growth_that_reaches_the_limit_in_hours_says_hours() -> None:
    broker = _Broker(8 * GB)
    broker.at(0, 1 * GB)
    broker.at(300, int(2.1 * GB))  # 1.1 GB in 5 min: 5.9 GB left at ~225 MB/min: ~27 min
    assert "the limit in ~27 min" in broker.lines[0]
    slow = _Broker(8 * GB)
    slow.at(0, int(1.9 * GB))
    slow.at(300, int(2.1 * GB))  # 0.2 GB in 5 min: 5.9 GB left: ~2.5 h
    assert "the limit in ~2 h" in slow.lines[0] or "the limit in ~3 h" in slow.lines[0]


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (512, "0 KB"),
        (300 * 1024, "300 KB"),
        (5 * MB, "5.0 MB"),
        (164 * MB, "164 MB"),
        (int(2.5 * GB), "2.5 GB"),
        (24 * GB, "24 GB"),
    ],
)
def test_sizes_read_as_a_person_writes_them(size: int, text: str) -> None:
    assert size_text(size) == text


def _ended(code: int, last: int | None, limit: int = 400 * MB) -> str:
    broker = SimpleNamespace(returncode=code, log_path=None, bootstrap="127.0.0.1:9", pid=7)
    memory = BrokerMemory(7, limit, print, rss=lambda pid: last)
    memory.tick()
    with pytest.raises(BrokerUnavailable) as caught:
        check_broker(broker, memory)
    return str(caught.value)


def test_a_broker_killed_while_holding_much_memory_is_named_a_likely_oom_kill() -> None:
    text = _ended(-signal.SIGKILL, 150 * MB)
    assert "exited with signal SIGKILL (it held 150 MB in memory at the last look" in text
    assert "out-of-memory killer" in text
    # a small broker killed: no such guess; another end: none either
    assert "out-of-memory" not in _ended(-signal.SIGKILL, 20 * MB)
    assert "out-of-memory" not in _ended(1, 150 * MB)


def test_a_running_broker_is_no_end() -> None:
    check_broker(SimpleNamespace(returncode=None), None)


def test_the_option_is_registered_with_its_variable() -> None:
    from baton.cli.up import up_cmd
    from baton.schemas import env_names

    option = next(p for p in up_cmd.params if p.name == "broker_memory_max")
    assert option.envvar == env_names.BROKER_MEMORY_MAX == "BATON_BROKER_MEMORY_MAX"
    assert option.default == "75%"
    assert env_names.BROKER_MEMORY_MAX in env_names.OPTION_VARIABLES
    assert up_memory.WARN_AT == (0.25, 0.5)
