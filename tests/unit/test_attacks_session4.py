"""Attacks of the fourth review: costly names, a late grant taken for a redelivery, key files."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from baton.cli.send_cmds import _open_input
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.recorded import policy_document
from baton.processors.replay import Recorded, replay_runs, runs_of
from baton.schemas.decision import Decision, Outcome, Phase, Reason
from baton.schemas.errors import ConfigError
from baton.schemas.events import EventError, HandoffCompleted, RunEvent, parse_event
from baton.schemas.names import MAX_EVENT_NAME_CHARS, fold
from baton.schemas.policy import Policy
from baton.schemas.signing import (
    SigningKeyError,
    load_private_key,
    new_private_key,
    private_key_text,
    write_private_key,
)
from tests.unit.test_engine_support import at, granted, handoff, policy_with

pytestmark = pytest.mark.unit

REQUESTS, APPROVALS = "gov.handoff.requests", "gov.approvals"
REFUND = "billing.refund.create"  # in the seed's require_approval_for


# ------------------------------------------------------------------ exactly-once redelivery check
def _exactly_once() -> BatchProcessor:
    policy = policy_with(approval={"ttl_seconds": 300})
    return BatchProcessor(policy, 1, {}, worker="w", exactly_once=True, approvals_topic=APPROVALS)


def _on(topic: str, offset: int, event: RunEvent) -> InputRecord:
    return InputRecord(topic, 0, offset, b"run-1", event.to_json())


def _asked(proc: BatchProcessor, published: list[Decision] | None = None) -> str:
    """A refund handoff at requests offset 1 waits for an approval; its id."""
    ask = handoff("req-refund", "refund", "planner", "billing_agent", action=REFUND)
    [(_, asked)] = proc.process([_on(REQUESTS, 1, ask)], at(0)).decisions
    assert asked.outcome == Outcome.APPROVAL_REQUIRED and asked.approval_id is not None
    if published is not None:
        published.append(asked)
    return asked.approval_id


def test_a_late_grant_at_the_offset_of_the_handoff_that_expired_its_approval_is_answered() -> None:
    # a handoff at requests 0/5, read after the approval's TTL, expired it on the way; a late
    # grant that happens to sit at approvals 0/5 was answered from the run's memory with that
    # expiry, which carried 0/5 and the approval phase: taken for a Kafka redelivery of the
    # grant, it was dropped, and the grant ended in no decision at all
    proc, published = _exactly_once(), []
    approval_id = _asked(proc, published)
    other = handoff("req-other", "lookup", "planner", "search_agent", t=301)
    first = [d for _, d in proc.process([_on(REQUESTS, 5, other)], at(301)).decisions]
    expired = [d for d in first if d.reason == Reason.APPROVAL_EXPIRED]
    assert [d.approval_id for d in expired] == [approval_id]

    late = proc.process([_on(APPROVALS, 5, granted(approval_id, "finance_lead", t=302))], at(302))

    [(_, answer)] = late.decisions
    assert (answer.phase, answer.outcome, answer.reason) == (
        Phase.APPROVAL,
        Outcome.STOP,
        Reason.APPROVAL_EXPIRED,
    )
    assert answer.decision_id == expired[0].decision_id and proc.redelivered == 0
    # the expiry is a timer step (no position, no input), as the sweep decides one, and
    # `baton replay` decides the recorded history again exactly
    assert (expired[0].partition, expired[0].offset, expired[0].input) == (None, None, None)
    rows = [Recorded.of(d) for d in published + first]
    document = Policy.model_validate_json(policy_document(proc.policy))
    report = replay_runs(runs_of(rows), proc.policy, {proc.policy.version: document}, b"")
    [run] = report.runs
    assert run.decisions == 3 and run.unfaithful == [] and run.changed == 0


def test_redeliveries_around_a_lazy_expiry_are_still_answered_with_nothing() -> None:
    proc = _exactly_once()
    approval_id = _asked(proc)
    # the grant itself comes after the TTL, before the sweep: it expires its approval
    grant = _on(APPROVALS, 5, granted(approval_id, "finance_lead", t=301))
    [(_, expiry)] = proc.process([grant], at(301)).decisions
    assert expiry.reason == Reason.APPROVAL_EXPIRED and (expiry.partition, expiry.offset) == (0, 5)
    other = _on(REQUESTS, 7, handoff("r2", "lookup", "planner", "search_agent", t=302))
    assert proc.process([other], at(302)).decisions

    again = proc.process([grant, other], at(303))  # Kafka delivers both records again

    assert again.decisions == [] and proc.redelivered == 2


# ------------------------------------------------------------------ key files and send's input
def _key_file(tmp_path: Path) -> Path:
    path = tmp_path / "oncall.key"
    write_private_key(new_private_key(), path)
    return path


def test_a_key_file_swapped_for_a_fifo_after_its_check_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the key file is checked, then replaced by a FIFO an attacker feeds a key of theirs
    # through (here: a stat that still describes the checked file); a check made before the
    # open let the FIFO's key be read and used
    checked = _key_file(tmp_path).stat()
    fifo = tmp_path / "swapped.key"
    os.mkfifo(fifo, 0o600)
    feeder = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer: opening it cannot block
    os.write(feeder, private_key_text(new_private_key()).encode())
    closer = threading.Timer(0.5, os.close, (feeder,))  # EOF for a reader, if one reads
    closer.start()
    monkeypatch.setattr(Path, "stat", lambda self, **_: checked)
    try:
        with pytest.raises(SigningKeyError, match=r"expected a regular file .* got a FIFO"):
            load_private_key(fifo)
    finally:
        closer.join()


def test_a_key_file_is_named_with_what_is_wrong(tmp_path: Path) -> None:
    fifo, big, shared = tmp_path / "fifo.key", tmp_path / "big.key", _key_file(tmp_path)
    os.mkfifo(fifo)
    big.write_text("x" * 5000)
    big.chmod(0o600)
    shared.chmod(0o644)
    cases = {
        fifo: "expected a regular file of one line made by `baton keys new`, got a FIFO",
        Path("/dev/zero"): "got a device",
        tmp_path: "got a directory",
        big: "got 5000 bytes",
        shared: f"readable by others (mode 644); chmod 600 {shared}",
        tmp_path / "missing.key": "No such file or directory",
    }
    for path, message in cases.items():
        with pytest.raises(SigningKeyError) as caught:
            load_private_key(path)
        assert str(caught.value).startswith(f"key file {path}: ") and message in str(caught.value)
    shared.chmod(0o600)
    assert load_private_key(shared) is not None


def test_send_refuses_a_device_swapped_in_after_a_check_and_still_reads_a_fifo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    regular = tmp_path / "events.jsonl"
    regular.write_text("{}\n")
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_text('{"a": 1}\n'))  # opens: waits
    feeder.start()
    with _open_input(str(fifo)) as stream:
        assert stream.read() == b'{"a": 1}\n'
    feeder.join()
    real_stat = os.stat
    # /dev/zero swapped in after a check that saw a regular file: reading it never ends
    monkeypatch.setattr(os, "stat", lambda path, **kw: real_stat(regular, **kw))
    with pytest.raises(ConfigError, match="/dev/zero is a device, expected a file of JSON"):
        _open_input("/dev/zero")
    with pytest.raises(ConfigError, match=f"{tmp_path} is a directory"):
        _open_input(str(tmp_path))


# ------------------------------------------------------------------ names that cost CPU
_HAN = [chr(c) for c in range(0x4E00, 0x9FFF)]


def _han(i: int, length: int) -> str:
    return "".join(_HAN[(i * length + k) % len(_HAN)] for k in range(length))


def _completion(tools: list[str], **fields: str) -> bytes:
    doc = {
        "type": "handoff_completed",
        "request_id": "r1",
        "run_id": "run-1",
        "task_id": "t1",
        "agent": "billing_agent",
        "tools": tools,
        "event_time": "2026-03-01T09:00:05Z",
        **fields,
    }
    return json.dumps(doc, ensure_ascii=False).encode()


def _refusal(raw: bytes) -> EventError:
    with pytest.raises(EventError) as caught:
        parse_event(raw)
    return caught.value


@pytest.mark.parametrize(
    ("names", "folded"),
    [
        (["アクメ", "企画担当", "研究者", "検索"], ["アクメ", "企画担当", "研究者", "検索"]),
        (
            ["Акме", "Планировщик", "исследователь", "поиск"],
            ["акме", "планировщик", "исследователь", "поиск"],
        ),
        (["شركة", "مخطط", "وكيل١", "بحث"], ["شركة", "مخطط", "وكيل١", "بحث"]),
        (["कंपनी", "योजनाकार", "एजेंट१", "खोज"], ["कंपनी", "योजनाकार", "एजेंट१", "खोज"]),
        (["研究チーム", "한국어에이전트", "注音ㄅㄆ", "研究者researcher"], None),
    ],
    ids=["japanese", "cyrillic", "arabic", "devanagari", "cjk-mixes"],
)
def test_names_of_other_scripts_with_their_marks_still_pass(
    names: list[str], folded: list[str] | None
) -> None:
    tenant, agent, status, tool = names
    event = parse_event(_completion([tool, tool + "2"], tenant=tenant, agent=agent, status=status))
    assert isinstance(event, HandoffCompleted)
    got = [event.tenant, event.agent, event.status, event.tools[0] if event.tools else ""]
    assert got == (folded or [fold(n) for n in names])


def test_an_event_past_its_budget_of_non_ascii_name_characters_is_a_bad_name_naming_both() -> None:
    at_budget = [_han(i, 256) for i in range(MAX_EVENT_NAME_CHARS // 256)]
    assert parse_event(_completion(at_budget)).tools == at_budget  # type: ignore[union-attr]
    error = _refusal(_completion([*at_budget, "研"]))
    assert error.kind == "bad_name"
    assert f"tools.4: bad name: this name takes the event past {MAX_EVENT_NAME_CHARS}" in str(error)
    # single fields count too, and a name seen lately (memoised) counts like any other
    seen = [_han(i, 60) for i in range(18)]
    for name in seen:
        parse_event(_completion([name]))
    error = _refusal(_completion(seen[:17], agent=seen[17]))
    assert error.kind == "bad_name" and "tools.16: bad name: this name takes" in str(error)
    # the SDK's models hold the same budget
    with pytest.raises(ValidationError, match="bad name: this name takes the event past"):
        HandoffCompleted(
            request_id="r",
            run_id="x",
            task_id="t",
            agent="a",
            tools=[*at_budget, "研"],
            event_time="2026-03-01T09:00:05Z",
        )


def test_an_event_of_many_bad_names_is_one_refusal_naming_the_first() -> None:
    error = _refusal(_completion([f"研究者я{i}" for i in range(64)], agent="bad agent"))
    assert error.kind == "bad_name"
    assert str(error).startswith('handoff_completed: agent: bad name "bad agent"')
    assert str(error).count("bad name") == 1


def _parse_cpu(events: list[bytes]) -> float:
    """CPU seconds per event to parse ``events`` (refused or not), the best of three rounds."""
    rounds = []
    for _ in range(3):
        start = time.process_time()
        for raw in events:
            with contextlib.suppress(EventError):
                parse_event(raw)
        rounds.append((time.process_time() - start) / len(events))
    return min(rounds)


def test_no_shape_of_hostile_names_costs_more_than_8_ascii_events_of_their_size() -> None:
    # they cost 25-60x before the budget and the one refusal per event (bench/RESULTS.md):
    # CPython's NFKC takes its slow path on a name holding a composing mark, and each refusal
    # runs every script rule to say why
    def tools64(make: Callable[[int, int], str]) -> list[bytes]:
        return [_completion([make(i + 64 * k, 256) for i in range(64)]) for k in range(3)]

    hostile = {
        "cyrillic at the end": tools64(lambda i, n: _han(i, n - 1) + "я"),
        "leading U+0301": tools64(lambda i, n: "\u0301" + _han(i, n - 1)),
        "a composing mark": tools64(lambda i, n: "a\u0301" + _han(i, n - 2)),
        "short, mixed scripts": tools64(lambda i, n: f"研究者я{i}"),
        "ASCII with a space": tools64(lambda i, n: f"tool {i}"),
        "the budget of marked names, the last refused": [
            _completion(
                ["a\u0301" + _han(i + 4 * k, 253) + ("я" if i == 3 else "a") for i in range(4)]
            )
            for k in range(3)
        ],
    }
    plain = _parse_cpu([_completion([f"t{i}." + "x" * 250 for i in range(64)])] * 40)
    costs = {name: _parse_cpu(events * 10) / plain for name, events in hostile.items()}
    assert max(costs.values()) < 8, costs
