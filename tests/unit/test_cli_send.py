"""`baton send --dry-run` checks every line as the worker will, without Kafka: line numbers,
the size limit at its exact boundary, control events, comments, files that are not files."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.main import _register, cli
from baton.schemas.events import MAX_EVENT_BYTES

pytestmark = pytest.mark.unit

GOOD = (
    '{"type":"handoff_requested","request_id":"r1","run_id":"run_1","task_id":"t",'
    '"from_agent":"planner","to_agent":"researcher","event_time":"2026-11-25T10:00:00Z"}'
)


def send(*args: str, stdin: str | bytes | None = None) -> tuple[int, str, str]:
    _register()
    result = CliRunner().invoke(cli, ["send", "--dry-run", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def padded(size: int) -> str:
    """GOOD grown to exactly ``size`` bytes with spaces inside the object (still valid)."""
    return GOOD[:-1] + " " * (size - len(GOOD)) + "}"


def test_good_lines_comments_and_blank_lines() -> None:
    code, out, err = send(stdin=f"# a comment\n\n{GOOD}\n  {GOOD}  \n")
    assert (code, err) == (0, "")
    assert out.strip() == "2 event(s) valid, not sent (--dry-run): 2 to gov.handoff.requests"


def test_each_bad_line_is_named_by_its_number_and_the_exit_is_1() -> None:
    lines = [GOOD, "{oops", "[1, 2]", '{"type":"kill_switch"}', '{"type":"nope"}', GOOD]
    code, out, err = send(stdin="\n".join(lines))
    assert code == 1
    assert [e.split(":")[0] for e in err.splitlines()[:4]] == [
        "baton send",
    ] * 4
    numbers = [e.split(": ")[1] for e in err.splitlines()[:4]]
    assert numbers == ["line 2", "line 3", "line 4", "line 5"]
    assert "control_event" in err and "unknown_type" in err
    assert out.startswith("2 event(s) valid")


def test_a_misspelt_field_is_named_not_dropped() -> None:
    # H1 (session 27): "actoin" was dropped and the refund allowed past the approval gate
    typo = GOOD[:-1] + ',"actoin":"billing.refund.create"}'
    cost = (
        '{"type":"handoff_completed","request_id":"r1","run_id":"run_1","task_id":"t",'
        '"agent":"researcher","cost":12.5,"event_time":"2026-11-25T10:00:05Z"}'
    )
    code, out, err = send(stdin=f"{GOOD}\n{typo}\n{cost}\n")
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith(
        "baton send: line 2: schema: handoff_requested: unknown field 'actoin' "
        "(did you mean 'action'?)"
    )
    assert lines[1].startswith(
        "baton send: line 3: schema: handoff_completed: unknown field 'cost' "
        "(did you mean 'cost_usd'?)"
    )
    assert "1 event(s) valid" in out


def test_the_size_limit_holds_at_its_exact_boundary() -> None:
    at_limit, over = padded(MAX_EVENT_BYTES), padded(MAX_EVENT_BYTES + 1)
    code, out, err = send(stdin=f"{at_limit}\n{over}\n{GOOD}")
    assert code == 1
    assert err.splitlines()[0] == (
        f"baton send: line 2: oversized: {MAX_EVENT_BYTES + 1} bytes, limit is {MAX_EVENT_BYTES}"
    )
    assert out.startswith("2 event(s) valid")


def test_a_runaway_line_is_read_in_chunks_and_counted_once() -> None:
    code, _, err = send(stdin="x" * (5 * MAX_EVENT_BYTES) + f"\n{GOOD}\n")
    assert code == 1 and err.count("line 1: oversized") == 1 and "line 2" not in err


def test_a_directory_or_device_is_refused_by_name(tmp_path: Path) -> None:
    code, _, err = send(str(tmp_path))
    assert code == 2 and "is a directory" in err
    code, _, err = send("/dev/zero")
    assert code == 2 and "/dev/zero is a device" in err
    code, _, err = send(str(tmp_path / "missing.jsonl"))
    assert code == 2 and "cannot read" in err
