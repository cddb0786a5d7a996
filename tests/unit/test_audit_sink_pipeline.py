"""When the audit sink hands its batch to the writer: full, timed out, or the writer is free."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import Future
from typing import Any

import pytest

from baton.sinks.audit_batch import AuditBatch
from baton.sinks.sink_loop import AuditSink

pytestmark = pytest.mark.unit


def _sink(rows: int, *, batch_size: int = 20_000, writing: bool = False) -> AuditSink:
    """A sink (no consumer, no client: nothing here does I/O) holding ``rows`` parsed rows."""
    sink = AuditSink({}, None, "gov.decisions", group_id="g", batch_size=batch_size)  # type: ignore[arg-type]
    sink._batch.rows = [[] for _ in range(rows)]
    sink._batch.started = time.monotonic()
    if writing:
        sink._writing = (AuditBatch("gov.decisions"), Future())
    return sink


def test_a_quarter_batch_goes_to_a_free_writer_at_once() -> None:
    assert _sink(5_000)._due()
    assert not _sink(4_999)._due()


def test_while_the_writer_works_the_batch_grows_until_full() -> None:
    assert not _sink(5_000, writing=True)._due()
    assert not _sink(19_999, writing=True)._due()
    assert _sink(20_000, writing=True)._due()


def test_without_eager_only_a_full_batch_or_the_timeout_is_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(AuditSink, "eager", False)
    assert not _sink(15_000)._due()
    assert _sink(20_000)._due()
    late = _sink(1)
    late._batch.started -= late.batch_timeout_s
    assert late._due()


def test_a_backlog_is_read_in_steps_so_a_free_writer_soon_gets_its_next_batch() -> None:
    sink: Any = _sink(0)
    assert sink._room() == 1_000
    assert _sink(19_500)._room() == 500
    assert _sink(0, batch_size=100_000)._room() == 1_000
    assert _sink(0, batch_size=1)._room() == 1


def test_at_a_backlogs_end_the_last_rows_go_without_waiting_for_the_timeout() -> None:
    """The last 4,971-4,997 rows of a 60,000-row backlog waited 0.5-0.6 s for the batch's
    timeout; read to the end, a twentieth of a batch or more goes at once."""
    drained = _sink(1_000)
    drained._drained = True
    assert drained._due()
    trickle = _sink(999)
    trickle._drained = True
    assert not trickle._due()  # a trickle still waits for the timeout: one insert a second
    assert not _sink(1_000)._due()  # not drained: the batch grows to a quarter
    busy = _sink(1_000, writing=True)
    busy._drained = True
    assert not busy._due()  # one write at a time


def test_a_batch_that_could_go_once_drained_polls_briefly_to_find_out() -> None:
    assert _sink(1_000)._wait() <= 0.02
    assert _sink(999)._wait() > 0.5  # until its timeout (1 s), or a quarter batch comes
    assert _sink(0)._wait() == 0.5


def test_the_first_insert_imports_nothing_once_the_sink_has_loaded_its_imports() -> None:
    """clickhouse-connect's first insert imported pandas (0.3-0.45 s with the GIL held) on the
    writer thread while the first batch waited; run_sink loads it before reading a record."""
    probe = (
        "import sys\n"
        "from baton.sinks.audit_insert import load_insert_imports\n"
        "from clickhouse_connect.driver import options\n"
        "load_insert_imports()\n"
        "before = set(sys.modules)\n"
        "options.pd  # what InsertContext.data reads at the first insert\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout[:500]
