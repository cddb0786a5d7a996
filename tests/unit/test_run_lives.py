"""Every id of a run's life covers where that life began: a request copied after the worker
forgot the run's tombstone never takes (and so never replaces in the audit) an id of the run's
earlier life; a redelivery gets the same ids; an audit recorded before lives were marked still
replays as recorded."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from baton.processors import batch
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.engine import Origin, decide, evict
from baton.processors.recorded import policy_document
from baton.processors.replay import Recorded, replay_runs
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome
from baton.schemas.events import ApprovalDenied, ApprovalGranted, RunEvent
from baton.schemas.policy import Policy
from baton.sinks.chain_verify import verify_chains
from tests.builds import interpreted_only
from tests.chdb_audit import chdb_audit
from tests.unit.test_chain import _row
from tests.unit.test_engine_support import (
    at,
    completed,
    finished,
    granted,
    handoff,
    seed_policy,
)

pytestmark = pytest.mark.unit

KEY = b"lives-key"
RUN = "run-1"
#: past the run retention (1 h) and the tombstone retention (here 1 day): the id is new again
LATER = 3 * 86_400.0

#: an old worker made by patching batch.decide: compiled, batch.py calls decide natively
_OLD_WORKER = interpreted_only("a patch of batch.decide, which the compiled batch.py never reads")


def _decided(
    steps: list[tuple[RunEvent, float, bool]], clock: Callable[[float], datetime] = at
) -> list[Decision]:
    """What the worker's batch step published for ``steps`` (event, seconds on ``clock``,
    the sweep forgot the run before it: evicted, then its tombstone dropped), at offsets
    10, 11, ... of its topic (approvals on ``approvals``)."""
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(
        seed_policy(), 1, states, worker="w", chain_key=KEY, approvals_topic="approvals"
    )
    published: list[Decision] = []
    for offset, (event, seconds, forgotten) in enumerate(steps, start=10):
        if forgotten:
            _forget(states, clock(seconds))
        raw = event.model_copy(update={"event_time": clock(seconds)}).to_json()
        topic = "approvals" if isinstance(event, ApprovalGranted | ApprovalDenied) else "requests"
        record = InputRecord(topic, 0, offset, RUN.encode(), raw)
        out = proc.process([record], clock(seconds))
        published += [d for _, d in out.decisions if not d.reemitted]
    return published


def _forget(states: dict[bytes, RunState], now: datetime) -> None:
    """The sweep forgot the run: evicted to its tombstone, and the tombstone dropped when its
    retention (here 1 day) passed."""
    for key, state in list(states.items()):
        tomb = evict(state, now - timedelta(days=2), 3600.0, 86400.0)
        assert tomb is not None and tomb.evicted_at is not None
        assert evict(tomb, now, 3600.0, 86400.0) is None
        del states[key]


def _replayed(rows: list[Recorded]) -> list[tuple[int, str, str]]:
    policy = seed_policy()
    policies = {policy.version: Policy.model_validate_json(policy_document(policy))}
    report = replay_runs([rows], policy, policies, KEY)
    assert report.partial == {} and report.broken == []
    return [u for run in report.runs for u in run.unfaithful]


def _story() -> list[tuple[RunEvent, float, bool]]:
    """A handoff, its report, the run's finish; a month later the first request copied."""
    request = handoff("h1", "t1", "planner", "researcher")
    return [
        (request, 0, False),
        (completed("h1", "t1", "researcher", 0.5), 1, False),
        (finished(), 2, False),
        (request, LATER, True),
    ]


def test_a_first_request_copied_after_the_tombstone_was_forgotten_gets_an_id_of_its_own() -> None:
    """The attack review's finding: decided on a fresh state, the copy was allowed under the
    original allow's id, and the audit (a ReplacingMergeTree on decision_id) kept one of the
    two: one record erased an audit row."""
    decisions = _decided(_story())
    first, copy = decisions[0], decisions[-1]
    assert (first.outcome, copy.outcome) == (Outcome.ALLOW, Outcome.ALLOW)
    assert copy.chain_prev == "" and copy.request_id == first.request_id
    assert copy.decision_id != first.decision_id
    assert len({d.decision_id for d in decisions}) == len(decisions)


def test_a_redelivered_first_event_gets_the_same_ids_and_another_position_does_not() -> None:
    """A crash before the state write: the event comes again from the same partition and
    offset, to a run with no state, and must keep its ids (the sink dedups on them)."""
    policy, request = seed_policy(), handoff("h1", "t1", "planner", "researcher")
    state, first = decide(None, request, policy, at(0), origin=Origin("w1", 0, 7))
    _, again = decide(None, request, policy, at(30), origin=Origin("w2", 0, 7))
    _, elsewhere = decide(None, request, policy, at(30), origin=Origin("w1", 0, 8))
    _, other_partition = decide(None, request, policy, at(30), origin=Origin("w1", 1, 7))
    assert [d.decision_id for d in again] == [d.decision_id for d in first]
    assert elsewhere[0].decision_id != first[0].decision_id
    assert other_partition[0].decision_id != first[0].decision_id
    # the life is the run's: its next events keep it, across the state's bytes too
    report = completed("h1", "t1", "researcher", 0.5)
    restored = RunState.from_bytes(state.to_bytes())
    _, a = decide(state, report, policy, at(1), origin=Origin("w1", 0, 9))
    _, b = decide(restored, report, policy, at(99), origin=Origin("w2", 0, 9))
    assert [d.decision_id for d in a] == [d.decision_id for d in b]


def test_an_approval_starting_a_life_is_not_taken_for_a_request_at_the_same_position() -> None:
    """The requests and approvals topics have their own offsets: a life begun by a stray
    grant at approvals 0:7 is another life than one begun by a request at requests 0:7."""
    from baton.schemas.events import ApprovalGranted

    grant = ApprovalGranted(approval_id="apr_x", run_id=RUN, approver="alice", event_time=at(0))  # type: ignore[call-arg]
    policy, request = seed_policy(), handoff("h1", "t1", "planner", "researcher")
    by_grant, _ = decide(None, grant, policy, at(0), origin=Origin("w", 0, 7))
    by_request, _ = decide(None, request, policy, at(0), origin=Origin("w", 0, 7))
    assert by_grant.life != by_request.life


def test_the_audit_keeps_both_lives_and_replays_them_as_recorded() -> None:
    decisions = _decided(_story())
    assert _replayed([Recorded.of(d) for d in decisions]) == []


@_OLD_WORKER
def test_an_audit_recorded_before_lives_were_marked_replays_as_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old worker gave a new run no life (a state read without one decides so too):
    its ids are the old ones, and replay reproduces them, in both of the run's lives (the
    second one old-style as well, or decided by this version: marked)."""
    old = _decided_without_lives(monkeypatch, _story())
    new_worker = _decided(_story())
    assert [d.decision_id for d in old] != [d.decision_id for d in new_worker]
    assert old[0].decision_id == old[-1].decision_id  # the flaw this version closes
    assert _replayed([Recorded.of(d) for d in old[:-1]]) == []
    # a life begun before the upgrade and the next one after it
    mixed = [*old[:-1], new_worker[-1]]
    assert _replayed([Recorded.of(d) for d in mixed]) == []


@_OLD_WORKER
def test_a_first_event_decided_again_across_the_upgrade_keeps_both_rows_and_both_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old worker published a run's first decision and died before its state write; the
    new one decides the redelivered event (same offset) on no state: a marked id, so the audit
    keeps both rows, each a chain start, and replay and verify take the second as the run's
    next life."""
    request = handoff("h1", "t1", "planner", "researcher")
    before = _decided_without_lives(monkeypatch, [(request, 0, False)])
    after = _decided([(request, 5, False), (completed("h1", "t1", "researcher", 0.5), 6, False)])
    assert before[0].offset == after[0].offset
    assert before[0].decision_id != after[0].decision_id
    audit = [*before, *after]
    assert _replayed([Recorded.of(d) for d in audit]) == []
    assert verify_chains([_row(d) for d in audit], KEY)[0].problems == []


def test_a_state_written_before_lives_were_marked_keeps_its_old_ids() -> None:
    """A run alive across the upgrade: its stored state has no life, and its later decisions
    keep the old form, so a redelivery straddling the upgrade keeps its id."""
    policy = seed_policy()
    state, _ = decide(None, handoff("h1", "t1", "planner", "researcher"), policy, at(0))
    assert state.life == ""
    wire = state.to_wire()
    assert "lf" not in wire or not wire["lf"]
    report = completed("h1", "t1", "researcher", 0.5)
    _, a = decide(state, report, policy, at(1), origin=Origin("w", 0, 9))
    _, b = decide(state, report, policy, at(1))
    assert a[0].decision_id == b[0].decision_id


def _decided_without_lives(
    monkeypatch: pytest.MonkeyPatch, steps: list[tuple[RunEvent, float, bool]]
) -> list[Decision]:
    """``_decided`` by a worker of the version before lives: no new run gets one (its batch
    step decides a new run with life "", as ``decide`` replays one recorded before lives;
    patched in batch.py, interpreted in both builds: the compiled engine calls its own
    ``life_of`` natively, and a patch of it there did nothing)."""

    def without_lives(*args: Any) -> tuple[RunState | None, list[Decision]]:
        return decide(*args, life="")

    with monkeypatch.context() as patched:
        patched.setattr(batch, "decide", without_lives)
        return _decided(steps)


@pytest.mark.parametrize("forged", ["r0:1@tombstone:0:1", "x0:1", 17, ["r0:1"], "r0:" + "9" * 40])
def test_a_stored_life_mark_of_another_form_is_refused_never_decided_on(forged: object) -> None:
    """It goes into every id of the run: a changelog record holding a forged one does not
    decode (the run's events become state_unreadable dead letters)."""
    state, _ = decide(None, handoff("h1", "t1", "planner", "researcher"), seed_policy(), at(0))
    wire = state.to_wire()
    wire["lf"] = forged
    with pytest.raises(ValueError, match=r"run state key lf: expected a life mark .* got "):
        RunState.from_wire(wire)


@_OLD_WORKER
def test_a_run_restored_from_its_counters_never_gives_a_copy_an_id_it_decided_before(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`baton up` restores a run it cannot replay (partial, broken) from its counters: no
    dedup marks, no life. A copy of one of its requests decided on that state took the
    original's id (an audit recorded before lives, or a run restored twice) and replaced it in
    the audit; the restored state has forgotten every key, so its ids carry the input's
    position, as a long run's past its window do."""
    from baton.cli.restore_rebuild import from_summaries as _from_summaries
    from baton.schemas.settings import Settings

    request = handoff("h1", "t1", "planner", "researcher", t=LATER)
    recorded = _decided_without_lives(
        monkeypatch,
        [(request, LATER, False), (completed("h1", "t1", "researcher", 0.5), LATER + 1, False)],
    )
    client = chdb_audit(tmp_path / "chdb", recorded)
    (state,) = _from_summaries(client, [RUN], Settings(partitions=1), at(LATER + 60))
    _, copy = decide(state, request, seed_policy(), at(LATER + 61), origin=Origin("w", 0, 99))
    _, again = decide(state, request, seed_policy(), at(LATER + 62), origin=Origin("w2", 0, 99))
    assert copy[0].decision_id != recorded[0].decision_id
    assert again[0].decision_id == copy[0].decision_id  # a redelivery keeps it


def test_a_late_event_decided_on_a_lost_tombstone_is_decided_again_on_the_live_run() -> None:
    """docs/guarantees.md, Not guaranteed: worker A's sweep evicted the idle run and A
    stopped its late handoff on the tombstone, then died before writing either state; the
    next owner decides the redelivered handoff on the run's last written (live) state. Same
    position, two ids: nothing in the state that was written can tell it was decided."""
    policy = seed_policy()
    live, _ = decide(
        None, handoff("h1", "t1", "planner", "researcher"), policy, at(0), origin=Origin("A", 0, 1)
    )
    late = handoff("h2", "t2", "planner", "researcher")
    tomb = evict(live, at(3700), 3600.0, 86400.0)
    assert tomb is not None
    _, by_a = decide(tomb, late, policy, at(3701), origin=Origin("A", 0, 2))
    _, by_b = decide(live, late, policy, at(3712), origin=Origin("B", 0, 2))
    assert (by_a[0].outcome, by_a[0].reason) == (Outcome.STOP, "run_expired")
    assert by_b[0].outcome is Outcome.ALLOW
    assert by_a[0].decision_id != by_b[0].decision_id


def test_a_gated_request_copied_into_a_later_life_asks_for_an_approval_of_its_own(
    tmp_path: Path,
) -> None:
    """The approval id covered the run, the request id and its digest, not the life: the
    copy asked again under the first life's approval id, `baton approvals` showed it
    answered by the first life's grant (never pending), and a copy of that old grant was
    taken as its answer. Now the life's approval is pending and the old grant unknown."""
    from baton.cli.approvals_audit import find_approval, pending_approvals

    start = datetime.now(UTC) - timedelta(seconds=LATER + 60)

    def clock(seconds: float) -> datetime:
        return start + timedelta(seconds=seconds)

    refund = handoff("h1", "t1", "planner", "billing_agent", action="billing.refund.create")
    first_ask = _decided([(refund, 0, False)], clock)[0]
    grant = granted(first_ask.approval_id or "", "finance_lead")
    story = [
        (refund, 0, False),
        (grant, 60, False),
        (finished(), 120, False),
        (refund, LATER, True),
        (grant, LATER + 1, False),
    ]
    decisions = _decided(story, clock)
    asked, answer, copy, old_grant = decisions[0], decisions[1], decisions[-2], decisions[-1]
    assert (answer.outcome, answer.approval_id) == (Outcome.ALLOW, asked.approval_id)
    assert copy.outcome is Outcome.APPROVAL_REQUIRED and copy.approval_id is not None
    assert copy.approval_id != asked.approval_id
    assert (old_grant.outcome, old_grant.reason) == (Outcome.RECORDED, "unknown_approval")
    client = _audit(tmp_path, decisions)
    assert find_approval(client, copy.approval_id)[1] is None
    listed = pending_approvals(client, RUN).pending
    assert [a.asked.approval_id for a in listed] == [copy.approval_id]
    assert _replayed([Recorded.of(d) for d in decisions]) == []


def test_a_state_written_before_lives_were_marked_keeps_its_old_approval_ids() -> None:
    """A run alive across the upgrade (no life): its approvals keep the id an approver may
    be about to sign."""
    from baton.processors.approvals import approval_id_for

    policy = seed_policy()
    state, _ = decide(None, handoff("h0", "t0", "planner", "researcher"), policy, at(0))
    refund = handoff("h1", "t1", "planner", "billing_agent", action="billing.refund.create")
    _, (d,) = decide(state, refund, policy, at(1), origin=Origin("w", 0, 9))
    assert d.approval_id == approval_id_for(refund)
    marked, _ = decide(None, refund, policy, at(1), origin=Origin("w", 0, 9))
    assert approval_id_for(refund, marked.life) not in ("", d.approval_id)


def _audit(tmp_path: Path, decisions: list[Decision]) -> Any:
    """A chDB audit holding ``decisions``, as the sink writes them."""
    return chdb_audit(tmp_path / "chdb", decisions)
