"""Session 24's attack review of the worker's published copies and their hash chain
(processors/recorded_copies.py, the batch step's refusals, the dead-letter envelope): each
test is an attack that broke something, fixed, or one that held and is pinned. In CORE_TESTS
(tests/integration/test_compiled_core.py): run against the compiled build too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.chain import link
from baton.processors.engine import NO_KILLS, Origin, refuse
from baton.processors.recorded import keep_links, publishable
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Reason
from baton.schemas.events import parse_event
from baton.sinks.chain_verify import verify_chains
from tests.unit.test_chain import _row
from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit

KEY = b"session24-key"
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
BIG = "x" * 200


def _event(run: str, n: int, task: str = "t") -> bytes:
    return orjson.dumps({
        "type": "handoff_requested", "request_id": f"h{n}", "run_id": run,
        "task_id": f"{task}{n}{BIG}", "from_agent": "planner", "to_agent": "researcher",
        "event_time": NOW.isoformat(),
    })  # fmt: skip


def _budget_worker(states: dict[bytes, RunState]) -> BatchProcessor:
    return BatchProcessor(
        policy_with(max_handoffs=50), 1, states, worker="w", chain_key=KEY,
        run_state_max_bytes=3000,
    )  # fmt: skip


def _three_steps(
    state: RunState | None, raw: bytes, size: int | None
) -> tuple[RunState | None, list[Decision]]:
    """``_limit`` as batch.py made it until session 24: refuse, publishable, link and
    keep_links one after the other."""
    detail = (
        "the run was stopped at its state budget (run_state_max_bytes 3000); the run is stopped"
        if size is None
        else f"the run's state would grow to {size} bytes (run_state_max_bytes 3000); the run "
        "is stopped"
    )
    event = parse_event(raw, b"rb")
    origin = Origin("w", 0, 7)
    new, decisions = refuse(
        state, event, policy_with(max_handoffs=50), NOW, Reason.RUN_STATE_LIMIT, detail,
        NO_KILLS, origin,
    )  # fmt: skip
    out = publishable(new, decisions, event)
    if new is not None:
        link(new, out, KEY)
        keep_links(decisions, out)
    return new, out


def _kept(state: RunState | None) -> list[tuple[Any, ...]]:
    if state is None:
        return []
    return [
        (k, d.decision_id, d.chain_prev, d.chain_hash, d.input)
        for k in state.recent_keys()
        for d in state.replies(k) or ()
    ]


@pytest.mark.parametrize("size", [None, 4096])
@pytest.mark.parametrize("held", [True, False])
def test_the_state_budget_refusal_publishes_and_keeps_what_the_three_steps_did(
    size: int | None, held: bool
) -> None:
    """``BatchProcessor._limit`` (the run_state_limit stop) publishes the copies, links and
    kept links the three steps gave: the same JSON, the same head, the state's decision
    without its input and linked as its copy, never the state it was handed (a refusal of
    a held run is a new state; of no run, none)."""
    states: dict[bytes, RunState] = {}
    proc = _budget_worker(states)
    proc.process([InputRecord("r", 0, 1, b"rb", _event("rb", 1))], NOW)
    before = states[b"rb"] if held else None
    twin = RunState.from_bytes(before.to_bytes()) if before is not None else None
    event = parse_event(_event("rb", 2), b"rb")
    new, got = proc._limit(before, event, size, NO_KILLS, NOW, Origin("w", 0, 7))
    want_new, want = _three_steps(twin, _event("rb", 2), size)
    assert [d.to_json() for d in got] == [d.to_json() for d in want]
    assert (new is None) == (want_new is None) == (not held)
    if held:
        assert new is not before and new is not None and want_new is not None
        assert new.chain_head == want_new.chain_head == got[-1].chain_hash
        assert new.chain_head != before.chain_head  # linked: not vacuous
        assert _kept(new) == _kept(want_new)
        assert all(k[4] is None for k in _kept(new))  # kept without the input
        assert before.chain_head == twin.chain_head  # the state handed in is not written
    else:
        assert got[0].chain_hash is None and got[0].input is not None


def test_a_run_stopped_at_its_budget_verifies_across_batches() -> None:
    """The budget's two refusals (the event that outgrows it, measured in the careful
    re-decision; the later ones refused unmeasured), retries of each among them: the
    published chain verifies, and the state keeps the head of what was published."""
    states: dict[bytes, RunState] = {}
    proc = _budget_worker(states)
    recs = [InputRecord("r", 0, i, b"rb", _event("rb", i)) for i in range(14)]
    published = [d for _, d in proc.process(recs, NOW).decisions]
    recs2 = [InputRecord("r", 0, 20 + i, b"rb", _event("rb", i)) for i in (3, 13, 20, 21)]
    published += [d for _, d in proc.process(recs2, NOW + timedelta(seconds=1)).decisions]
    reasons = [d.reason for d in published if not d.reemitted]
    assert "run_state_limit" in reasons and reasons[-1] == "run_state_limit"
    rows = [_row(d) for d in published if not d.reemitted]
    (verdict,) = verify_chains(rows, KEY)
    assert verdict.ok, verdict.problems
    last = [d for d in published if not d.reemitted][-1]
    assert states[b"rb"].chain_head == last.chain_hash


def _report(cost: float) -> bytes:
    return orjson.dumps({
        "type": "handoff_completed", "request_id": "h1", "run_id": "rb", "task_id": f"t1{BIG}",
        "agent": "researcher", "cost_usd": cost, "tool_calls": 1, "event_time": NOW.isoformat(),
    })  # fmt: skip


def test_a_reused_report_id_in_a_run_stopped_at_its_budget_is_counted_once_under_its_own_id() -> (
    None
):
    """Two cost reports under one request id (the second another report: the engine counts
    it under its own key and decision id) in a run stopped at its state budget: the second's
    run_state_limit refusal took the first's decision id (the audit kept one of the two rows:
    its chain a link short, `baton audit verify` failed the honest audit and `baton replay`
    called it broken) and its kept reply (a retry of the first got the second's), and each
    redelivery of the second was counted again (spend 1, 3, 5, 7). Now it is remembered and
    identified under its own key, as the engine does: counted once, each answered its own."""
    states: dict[bytes, RunState] = {}
    proc = _budget_worker(states)
    recs = [InputRecord("r", 0, i, b"rb", _event("rb", i)) for i in range(14)]
    published = [d for _, d in proc.process(recs, NOW).decisions]
    assert states[b"rb"].stopped == "run_state_limit"
    first = InputRecord("r", 0, 20, b"rb", _report(1.0))
    second = InputRecord("r", 0, 21, b"rb", _report(2.0))
    answers = []
    for i, rec in enumerate([first, second, second, second, first]):
        out = proc.process([rec], NOW + timedelta(seconds=i + 1))
        answers += [(d.decision_id, d.spent_usd, d.reemitted) for _, d in out.decisions]
        published += [d for _, d in out.decisions]
    (one, _, _), (two, _, _) = answers[:2]
    assert one != two
    assert [(i == one, spent, again) for i, spent, again in answers] == [
        (True, 1.0, False), (False, 3.0, False), (False, 3.0, True), (False, 3.0, True),
        (True, 1.0, True),
    ]  # fmt: skip
    assert states[b"rb"].spent_usd == 3.0
    (verdict,) = verify_chains([_row(d) for d in published if not d.reemitted], KEY)
    assert verdict.ok, verdict.problems


# ------------------------------------------------------------------ the dead-letter envelope
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("run-1", b"not json"),  # a str key
        (b"run-1", memoryview(b"not json")),  # a memoryview value
        ("run-\udc80", memoryview(b"\xff\xfe")),  # both, a lone surrogate, not UTF-8
        (bytearray(b"run-1"), bytearray(b"{}")),
        (b"run-1", 12),  # no bytes at all: left out, said so
    ],
)
def test_a_record_of_other_types_is_a_dead_letter_not_a_crash(key: Any, value: Any) -> None:
    """A record whose key is a ``str`` or whose value is a ``memoryview`` (no Kafka client
    hands one over today; a future receive path could): its dead-letter envelope raised
    (``str.decode``, ``memoryview.decode``) out of ``BatchProcessor.process``, the batch's
    end instead of the record's dead letter. Now the envelope carries their bytes, or says
    that it could not."""
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(policy_with(), 1, states, worker="w")
    ok = InputRecord("r", 0, 2, b"run-2", _event("run-2", 1))
    out = proc.process([InputRecord("r", 0, 1, key, value), ok], NOW)
    assert len(out.dead_letters) == 1 and len(out.decisions) == 1
    (dl,) = out.dead_letters
    doc = orjson.loads(dl.value)
    assert doc["offset"] == 1 and doc["error_kind"]
    assert dl.key is None or type(dl.key) is bytes
    if isinstance(value, int):
        assert "original_dropped" in doc and "original" not in doc
    else:
        carried = doc.get("original") or doc.get("original_b64")
        assert carried is not None and doc["original_size"] == len(bytes(value))


def test_a_run_stopped_at_its_budget_then_evicted_replays_as_recorded() -> None:
    """A run stopped at its state budget, idle past the run retention: the sweep keeps its
    tombstone (the stop with it), and its later events are refused ``run_state_limit`` on the
    tombstone (ids marked with their positions). `baton replay` decided such a refusal on the
    live run (only a step holding a ``run_expired`` stop was tried on the tombstone): every
    later step not reproduced, an honest audit reported unfaithful. Now a refusal step is
    tried on the tombstone the run was due for, as any other step."""
    from baton.processors.engine import evict
    from baton.processors.recorded import Recorded, policy_document
    from baton.processors.replay import replay_runs, runs_of
    from baton.schemas.policy import Policy

    states: dict[bytes, RunState] = {}
    proc = _budget_worker(states)
    recs = [InputRecord("r", 0, i, b"rb", _event("rb", i)) for i in range(14)]
    published = [d for _, d in proc.process(recs, NOW).decisions]
    later = NOW + timedelta(hours=2)
    tomb = evict(states[b"rb"], later, 3600.0, 30 * 86400.0)
    assert tomb is not None and tomb.evicted_at is not None
    states[b"rb"] = tomb
    recs = [InputRecord("r", 0, 30 + i, b"rb", _event("rb", 30 + i)) for i in range(2)]
    published += [d for _, d in proc.process(recs, later).decisions]
    assert [d.reason for d in published[-2:]] == ["run_state_limit"] * 2
    policy = policy_with(max_handoffs=50)
    policies = {policy.version: Policy.model_validate_json(policy_document(policy))}
    rows = [Recorded.of(d) for d in published]
    report = replay_runs(runs_of(rows), policy, policies, KEY, retention_s=3600.0)
    assert report.broken == [] and report.partial == {}
    assert [(r.run_id, r.unfaithful) for r in report.runs] == [("rb", [])]
