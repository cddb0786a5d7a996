"""The embedded broker's memory, watched by ``baton up``.

Why: Tansu's memory storage keeps every record it is given and applies no retention (a topic
with ``retention.ms=2000`` still held all its records a minute later), so the broker of a
stack left running grows by every request, decision, stop and run state it carries (~1 KB of
memory a KB of record) until the machine runs out. The kernel's out-of-memory killer then
picks a process (the broker, chDB's sink, or something of the user's), and the stack ends
with "signal SIGKILL" and nothing said before.

What it does: ``baton up`` samples the broker's resident memory every few seconds and says a
line when it passes 25 % and then 50 % of its limit (``--broker-memory-max``, 75 % of the
machine's memory by default: /proc/meminfo's MemTotal, or the cgroup's memory.max where
smaller), naming how fast it grows and when it reaches the limit at that rate. Past the limit
it ends the stack itself (exit 4), its children stopped gracefully while the broker still
runs, so the sink stores every decision it has read and the next start restores the runs
from the audit; the kernel's kill gives no such chance.

Not guaranteed: that the kernel does not strike first (other processes' memory counts
against the machine, not against the limit); a reading of /proc that fails is skipped, and
with no /proc at all nothing is watched (said once).
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from baton.cli.supervisor import describe_exit, tail
from baton.processors.capacity import Trend, duration_text
from baton.schemas.errors import BrokerUnavailable, ConfigError

__all__ = [
    "BrokerMemory",
    "MemoryMax",
    "broker_memory_checks",
    "check_broker",
    "machine_memory",
    "memory_limit",
    "resident_bytes",
    "size_text",
    "watch_memory",
]

#: seconds between two readings of the broker's memory
SAMPLE_EVERY_S = 5.0
#: the shares of the limit a line is said at, once each
WARN_AT = (0.25, 0.5)
#: the growth rate is measured over at most this long
_RATE_WINDOW_S = 300.0
#: what --broker-memory-max takes for "not watched"
_OFF = ("off", "none", "0")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)


def machine_memory(
    meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup/memory.max")
) -> int | None:
    """This machine's memory in bytes: MemTotal, or the cgroup's memory.max where smaller;
    None when neither can be read."""
    total = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        total = None
    try:
        text = cgroup.read_text().strip()
        limited = int(text) if text.isdigit() else None
    except (OSError, ValueError):
        limited = None
    if limited is not None and (total is None or limited < total):
        return limited
    return total


def memory_limit(text: str, machine: int | None) -> int | None:
    """``--broker-memory-max``: ``off``, a share of the machine's memory (``75%``) or a size
    (``4G``, ``512M``, ``2.5GiB``, bytes without a unit); None: not watched (off, or a share
    of a memory that cannot be read). A value that is none of these raises ConfigError."""
    value = text.strip()
    if value.lower() in _OFF:
        return None
    if value.endswith("%"):
        try:
            share = float(value[:-1])
        except ValueError:
            share = -1.0
        if not 0 < share <= 100:
            raise ConfigError(
                f"--broker-memory-max {text!r}: a share must be above 0 % and at most 100 %"
            )
        if machine is None:  # no /proc/meminfo: the caller says it is not watched
            return None
        return int(machine * share / 100)
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ConfigError(
            f"--broker-memory-max {text!r}: not a size (4G, 512M, 2.5GiB), a share of the "
            "machine's memory (75%) or off"
        )
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size < 64 << 20:
        raise ConfigError(
            f"--broker-memory-max {text!r}: below 64M (the broker starts near 20M and grows "
            "with every record); give more, or off"
        )
    if size > 1 << 60:
        raise ConfigError(f"--broker-memory-max {text!r}: more than any machine holds; or off")
    return size


class MemoryMax(click.ParamType):
    """``--broker-memory-max`` checked as click checks any option (exit 2, the variable named
    when the value came from it); the command reads it with ``memory_limit``."""

    name = "SIZE|PCT|off"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            memory_limit(str(value), machine_memory())
        except ConfigError as exc:
            self.fail(str(exc).split(": ", 1)[1], param, ctx)
        return str(value)


def resident_bytes(pid: int, proc: Path = Path("/proc")) -> int | None:
    """A process's resident memory (VmRSS) in bytes; None when it cannot be read."""
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def size_text(size: float) -> str:
    """``1.2 GB`` / ``350 MB`` (powers of 1024, as the limit's units)."""
    for unit, scale in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20)):
        if size >= scale:
            return (
                f"{size / scale:.1f} {unit}" if size < 10 * scale else f"{size / scale:.0f} {unit}"
            )
    return f"{size / 1024:.0f} KB"


class BrokerMemory:
    """The broker's memory against ``limit``: ``tick`` samples it (at most every
    ``SAMPLE_EVERY_S``), ``say``s a line at each share of ``WARN_AT`` passed, and raises
    ``BrokerUnavailable`` once it is past the limit."""

    def __init__(
        self,
        pid: int,
        limit: int,
        say: Callable[[str], None],
        *,
        machine: int | None = None,
        rss: Callable[[int], int | None] = resident_bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pid = pid
        self.limit = limit
        self.machine = machine
        self._say = say
        self._rss = rss
        self._clock = clock
        self._next = clock()
        self._trend = Trend(_RATE_WINDOW_S, 2 * SAMPLE_EVERY_S)
        self._warned = 0  # how many of WARN_AT were said
        self.last: int | None = None

    def tick(self) -> None:
        now = self._clock()
        if now < self._next:
            return
        self._next = now + SAMPLE_EVERY_S
        held = self._rss(self.pid)
        if held is None:  # gone (the stack notices) or unreadable for a moment
            return
        self.last = held
        self._trend.add(now, held)
        if held > self.limit:
            raise BrokerUnavailable(
                f"the embedded Kafka broker holds {size_text(held)} in memory"
                f"{self._of_machine(held)}, past --broker-memory-max {size_text(self.limit)}: "
                "it keeps every record and applies no retention, so baton up stops everything "
                "before the machine runs out. Start it again: the runs' state, kill switches and "
                "signed policies come back from the audit (requests not yet decided are "
                "answered by no one; the SDK stops them). Give a higher --broker-memory-max "
                "(BATON_BROKER_MEMORY_MAX), or run on a Kafka cluster (docs/deploy.md)"
            )
        while self._warned < len(WARN_AT) and held > WARN_AT[self._warned] * self.limit:
            share = WARN_AT[self._warned]
            self._warned += 1
            if self._warned < len(WARN_AT) and held > WARN_AT[self._warned] * self.limit:
                continue  # past the next share too: one line, the higher one
            self._say(
                f"the embedded Kafka broker holds {size_text(held)} in memory, {share:.0%} of "
                f"--broker-memory-max {size_text(self.limit)}{self._of_machine(held)}"
                f"{self._growth(now, held)}. It keeps every record (no retention): past the "
                "limit baton up stops everything, and a start restores the runs from the "
                "audit; restart it at a quiet moment, or run on a Kafka cluster (docs/deploy.md)"
            )

    def _of_machine(self, held: int) -> str:
        if not self.machine:
            return ""
        return f" ({held / self.machine:.0%} of this machine's {size_text(self.machine)})"

    def _growth(self, now: float, held: int) -> str:
        per_s = self._trend.per_s(now, held)
        if per_s is None:
            return ""
        left = (self.limit - held) / per_s
        return (
            f", growing {size_text(per_s * 60)} a minute (the limit in ~{duration_text(left)} "
            "at this rate)"
        )


def watch_memory(
    broker: Any, limit: int | None, machine: int | None, asked: str, say: Callable[[str], None]
) -> BrokerMemory | None:
    """The started broker's watch, or None (said, unless asked off)."""
    pid = getattr(broker, "pid", None)
    if limit is None:
        if asked.strip().lower() not in _OFF:
            say(
                "this machine's memory cannot be read: the broker's memory is not watched "
                f"({asked})"
            )
        return None
    if not pid or resident_bytes(pid) is None:
        say("the broker's memory cannot be read here (/proc): it is not watched")
        return None
    return BrokerMemory(pid, limit, say, machine=machine)


def check_broker(broker: Any, memory: BrokerMemory | None = None) -> None:
    """The stack ends with its broker: its topics were in memory, nothing can resume."""
    code = broker.returncode
    if code is None:
        return
    output = tail(broker.log_path) if broker.log_path else ""
    held = ""
    if (
        memory is not None
        and memory.last is not None
        and memory.last > WARN_AT[0] * memory.limit
        and code == -signal.SIGKILL
    ):
        held = (
            f" (it held {size_text(memory.last)} in memory at the last look: the kernel's "
            "out-of-memory killer sends SIGKILL; see --broker-memory-max)"
        )
    raise BrokerUnavailable(
        f"the embedded Kafka broker on {broker.bootstrap} exited with {describe_exit(code)}"
        f"{held}; its topics were in memory and are gone, so baton up stops everything. "
        f"Its last output ({broker.log_path}):\n{output or '(none)'}"
    )


def broker_memory_checks(data_dir: Path | None) -> list[Any]:
    """`baton doctor`'s line on a live `baton up`'s embedded broker: how much it holds against
    its --broker-memory-max (✘ past half of it: the stack stops itself at the limit); no line
    for a stack of your own (a Kafka cluster applies retention)."""
    from baton.cli.doctor_checks import fail, ok
    from baton.cli.stack_record import find_stack

    found = find_stack(data_dir)
    record = found.record
    if record is None or not record.live(found.data_dir) or not record.pids.get("broker"):
        return []
    held = resident_bytes(record.pids["broker"])
    if held is None:
        return []
    name = "embedded broker memory"
    limit = record.broker_memory_max
    if limit is None:
        return [ok(name, f"holds {size_text(held)}; not watched (--broker-memory-max off)")]
    detail = (
        f"holds {size_text(held)}, {held / limit:.0%} of --broker-memory-max "
        f"{size_text(limit)}: it keeps every record (no retention), and baton up stops "
        "everything past the limit"
    )
    if held > WARN_AT[-1] * limit:
        return [
            fail(
                name,
                detail,
                "restart baton up at a quiet moment (the runs come back from the audit), or "
                "give it a higher --broker-memory-max",
            )
        ]
    return [ok(name, detail)]
