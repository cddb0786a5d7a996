"""The eleventh session's attack review of the compiled build (mypyc, BATON_COMPILE=1): forged
records that the interpreted build refuses must be refused by the compiled one too. These
tests run in the suite (interpreted) and against the compiled build
(tests/integration/test_compiled_core.py lists this file); each failed on the compiled build
before its fix. Findings and repro scripts: the session's H5 findings (bench/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from baton.processors.state import RunState

pytestmark = pytest.mark.unit


def _record(**changes: Any) -> bytes:
    wire = orjson.loads(RunState.new("run-x", "default", 1772355600.0).to_bytes())
    wire["tasks"] = [
        ["plan", "planner", "orchestrator", None, 1],
        ["s1", "coder", "planner", "plan", 2],
    ]
    wire["ag"] = ["orchestrator", "planner", "coder"]
    return orjson.dumps({**wire, **changes})


@pytest.mark.parametrize("depth", [True, False, 1.0, "1", None])
def test_a_task_depth_that_is_not_an_int_is_unreadable_in_either_build(depth: object) -> None:
    # a compiled build read a TaskNode's depth unboxed (an int): True passed the check as 1,
    # and the bool was kept in the shared task dict and written back to the changelog
    tasks = [
        ["plan", "planner", "orchestrator", None, 1],
        ["s1", "coder", "planner", "plan", depth],
    ]
    with pytest.raises(ValueError, match="has depth"):
        RunState.from_bytes(_record(tasks=tasks))
    state = RunState.from_bytes(_record())
    assert [type(node.depth) for node in state.tasks.values()] == [int, int]


def test_a_format_3_records_task_depth_that_is_a_bool_is_unreadable_in_either_build() -> None:
    state = RunState.from_bytes(_record())
    old = [3, *[None] * 21]
    old[1:10] = ["run-x", "default", 1772355600.0, 1772355600.0, 0, 0.0, 0, None, False]
    old[10] = [["plan", "planner", "orchestrator", None, True]]
    old[11], old[12], old[13], old[14], old[15] = [], [], [], [], []
    with pytest.raises(ValueError, match="has depth"):
        RunState.from_bytes(orjson.dumps(old[:16]))
    old[10] = [["plan", "planner", "orchestrator", None, 1]]
    assert RunState.from_bytes(orjson.dumps(old[:16])).run_id == state.run_id


#: one audit row as read_pages reads it (JSON, REPLAY_COLUMNS order, decided_at in micros)
_ROW = [
    "run-1", "d1", "allow", "ok", None, "v1", 1772355600000000, "w-1", 0, 7,
    '{"type":"handoff_requested"}', "", "ab" * 16,
]  # fmt: skip


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("run_id", 7),
        ("input", 0),
        ("input", ["x"]),
        ("policy_version", 1.5),
        ("chain_hash", True),
        ("chain_prev", {}),
        ("outcome", None),
        ("partition", "x"),
        ("offset", "x"),
        ("decided_at", "soon"),
        ("decided_at", 2**63 - 1),
    ],
)
def test_a_forged_audit_row_of_other_types_is_refused_by_name(column: str, value: object) -> None:
    # the compiled replay core checks Recorded's types where it reads them: a number as a
    # row's input or run id ended the whole replay with a TypeError traceback (the
    # interpreted one crashed on some of these too: a forged server's rows, never ClickHouse's)
    from baton.processors.recorded import REPLAY_COLUMNS
    from baton.schemas.errors import AuditUnavailable
    from baton.sinks.replay_source import page_rows

    forged = list(_ROW)
    forged[REPLAY_COLUMNS.index(column)] = value
    page = orjson.dumps(_ROW) + b"\n" + orjson.dumps(forged) + b"\n"
    with pytest.raises(AuditUnavailable, match=f"whose {column} is"):
        list(page_rows(page))
    with pytest.raises(AuditUnavailable, match="whose row is"):
        list(page_rows(b'{"run_id": "run-1"}\n'))
    quoted = [*_ROW[:6], str(_ROW[6]), *_ROW[7:9], "7", *_ROW[10:]]
    rows = list(page_rows(orjson.dumps(_ROW) + b"\n" + orjson.dumps(quoted) + b"\n"))
    assert rows[0] == rows[1] and rows[0].offset == 7 and rows[0].decided_at.year == 2026
