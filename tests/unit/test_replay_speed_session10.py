"""`baton replay`'s speed work of the tenth session (issue 14): what each change must keep.

The command opens the audit without importing pyarrow. An event time in the form Baton
writes it is read by datetime.fromisoformat, as pydantic read it before. (The pool's four
pieces in flight, 4de8f4f, were reverted: with them a replay whose pool answer did not load
could hang instead of failing closed, tests/unit/test_attacks_session6_replay_pool.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import AfterValidator, TypeAdapter, ValidationError

from baton.schemas.event_times import event_time, event_time_from
from baton.schemas.events import EventTime
from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit

_IMPORTS = """
import atexit, os, sys
said = lambda: print("pyarrow" in sys.modules, "numpy" in sys.modules, file=sys.stderr, flush=True)
atexit.register(said)
# (the command, the whole process, ends with os._exit once its answer is written: no atexit)
end = os._exit
os._exit = lambda code: (said(), end(code))
from baton.cli.main import main
main()
"""


def test_the_command_opens_the_audit_without_importing_pyarrow_and_reports_the_same(
    tmp_path: Path,
) -> None:
    # chDB imports pyarrow (and numpy) when it can: ~0.3 s of the replay's seconds, never used
    # (rows are read as JSON, the policies in Native format)
    from bench.replay_bench import KEY as BENCH_KEY
    from bench.replay_bench import record as bench_record
    from tests.chdb_audit import chdb_audit

    chdb_audit(tmp_path / "chdb", bench_record(40, 300, policy_with(max_handoffs=20))).close()
    (tmp_path / "stricter.yaml").write_text("multi_agent:\n  max_handoffs: 3\n")
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(root)]))
    env = {**os.environ, "PYTHONPATH": path, "BATON_AUDIT_CHAIN_KEY": BENCH_KEY.decode()}
    argv = ["replay", "--policy", str(tmp_path / "stricter.yaml"), "--jobs", "1"]
    argv += ["--dsn", f"chdb://{tmp_path / 'chdb'}", "--format", "json"]
    out = subprocess.run([sys.executable, "-c", _IMPORTS, *argv], env=env, capture_output=True)
    assert out.returncode == 1, out.stderr[-2000:]  # (the stricter policy changes runs)
    assert out.stderr.decode().splitlines()[-1] == "False False", out.stderr[-2000:]
    report = orjson.loads(out.stdout)
    assert report["faithful"] and report["decisions"] > 250 and report["changed_runs"]


_TIMES = TypeAdapter(Annotated[datetime, AfterValidator(event_time)])  # the path before


def _before(value: object) -> object:
    try:
        return _TIMES.validate_python(value)
    except ValidationError as exc:
        return [(e["type"], e["msg"]) for e in exc.errors()]


def _now(value: object) -> object:
    try:
        return TypeAdapter(EventTime).validate_python(value)
    except ValidationError as exc:
        return [(e["type"], e["msg"]) for e in exc.errors()]


@settings(max_examples=400, deadline=None)
@given(
    st.datetimes(datetime(1990, 1, 1), datetime(2300, 1, 1), timezones=st.just(UTC)),
    st.booleans(),
)
def test_an_event_time_in_baton_s_own_form_reads_as_pydantic_then_the_check_read_it(
    at: datetime, whole_seconds: bool
) -> None:
    # the form orjson writes (every recorded input) and isoformat's: the fast path's datetime
    # is the one pydantic's reading and event_time gave, its zone datetime.UTC itself; out of
    # range, the same error
    if whole_seconds:
        at = at.replace(microsecond=0)
    for text in {orjson.dumps(at).decode().strip('"'), at.isoformat()}:
        got, want = _now(text), _before(text)
        assert got == want, text
        if isinstance(got, datetime):
            assert got.tzinfo is UTC and type(got) is datetime


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-01T24:00:00+00:00",  # an hour past the day
        "2026-03-01T09:00:60+00:00",  # a leap second
        "2026-02-30T09:00:00+00:00",
        "2026-03-01T09:00:45,123456+00:00",  # a comma (slow path: the same answer)
        "2026-03-01 09:00:45+00:00",
        "2026-03-01T09:00:45+01:00",
        "2026-03-01T09:00:45.12345+00:00",
        "2026-03-01T09:00:45.1234567+00:00",
        "1999-12-31T23:59:59+00:00",  # out of range
        "2200-01-01T00:00:00+00:00",
        "２０２６-03-01T09:00:45+00:00",  # fullwidth digits
        "2026-03-01T09:00:45Z",
        "2026-03-01T09:00:45",
        "2026-03-01T09:00:4x+00:00",
        "+026-03-01T09:00:45+00:00",
        1772355645,
        "1772355645",
    ],
)
def test_any_other_event_time_is_read_as_before(text: object) -> None:
    assert _now(text) == _before(text)


def test_baton_s_own_form_of_an_event_time_is_read_without_pydantic_s_datetime() -> None:
    def refuse(value: object) -> datetime:
        raise AssertionError(f"pydantic's datetime asked for {value!r}")

    at = event_time_from("2026-03-01T09:00:45.000250+00:00", refuse)  # type: ignore[arg-type]
    assert at == datetime(2026, 3, 1, 9, 0, 45, 250, tzinfo=UTC) and at.tzinfo is UTC
