"""The fifth session's attack review of run lives (decision and approval ids that cover where a
run's life began, the one chain walker of `baton audit verify` and `baton replay`): each test
is an attack that broke something, fixed, or one that held and is pinned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from baton.cli.verify_cmds import audit_group
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.engine import Origin, decide
from baton.processors.state import SEEN_LIMIT, RunState
from baton.schemas.decision import Decision, Outcome
from baton.schemas.events import ApprovalDenied, ApprovalGranted, RunEvent
from tests.builds import COMPILED, interpreted_only
from tests.chdb_audit import chdb_audit
from tests.unit.test_engine_support import at, completed, denied, handoff, seed_policy

pytestmark = pytest.mark.unit

KEY = b"session5-key"
RUN = "run-1"

#: an old worker made by patching batch.decide: compiled, batch.py calls decide natively
_OLD_WORKER = interpreted_only("a patch of batch.decide, which the compiled batch.py never reads")


def _decided(steps: list[tuple[RunEvent, float]], run: str = RUN) -> list[Decision]:
    """What the worker's batch step published for ``steps`` (event, seconds), each read at
    the next offset of its topic (10, 11, ...)."""
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(
        seed_policy(), 1, states, worker="w", chain_key=KEY, approvals_topic="approvals"
    )
    published: list[Decision] = []
    for offset, (event, seconds) in enumerate(steps, start=10):
        raw = event.model_copy(update={"event_time": at(seconds)}).to_json()
        topic = "approvals" if isinstance(event, ApprovalGranted | ApprovalDenied) else "requests"
        out = proc.process([InputRecord(topic, 0, offset, run.encode(), raw)], at(seconds))
        published += [d for _, d in out.decisions if not d.reemitted]
    return published


def _audit(chdb: Path, decisions: list[Decision]) -> Any:
    """A chDB audit holding ``decisions``, as the sink writes them."""
    return chdb_audit(chdb, decisions)


def test_a_forged_run_id_in_the_audit_is_shown_cut_and_escaped_on_its_fail_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone who can write governance.decisions inserts a row whose run id is a terminal
    escape and 70 KB: `baton audit verify` printed it uncut on its FAIL line (a screen
    cleared, a multi-megabyte line); now it is cut to 64 characters and escaped, as the
    decision ids on the verdict lines are."""
    decisions = _decided([(handoff("h1", "t1", "planner", "researcher"), 0)])
    forged_run = "\x1b[2J" + "x" * 70_000
    forged = Decision.from_json(decisions[0].to_json())
    forged.run_id, forged.chain_prev = forged_run, "f" * 64  # follows a row that is not there
    chdb = tmp_path / "chdb"
    client = _audit(chdb, decisions)
    columns = client.query("SELECT * FROM governance.decisions LIMIT 1")
    row = list(columns.result_rows[0])
    names = list(columns.column_names)
    row[names.index("run_id")] = forged_run
    row[names.index("decision_id")] = "d" * 32
    row[names.index("chain_prev")] = "f" * 64
    client.insert("governance.decisions", [row], column_names=names)
    client.close()
    monkeypatch.setenv("BATON_AUDIT_CHAIN_KEY", KEY.decode())
    result = CliRunner().invoke(audit_group, ["verify", "--dsn", f"chdb://{chdb}"])
    assert result.exit_code == 1, result.output
    (fail,) = [line for line in result.output.splitlines() if line.startswith("FAIL ")]
    assert "\x1b" not in fail and len(fail) < 400, fail[:300]
    assert fail.startswith("FAIL \\x1b[2Jxxx") and "x..." in fail, fail[:300]


def test_a_denied_request_copied_past_a_long_runs_window_asks_for_an_approval_of_its_own() -> None:
    """A denial does not end a run; past SEEN_LIMIT keys the run forgets the denied request,
    and a copy of it is decided anew: it asked again under the denied approval's id, so
    `baton approvals` took it as answered (the denial) and never listed it. Its approval id
    now carries the input's position, as the decision ids of such a run do; a redelivery
    (same position) keeps it."""
    policy = seed_policy()
    refund = handoff("h1", "t1", "planner", "billing_agent", action="billing.refund.create")
    state, (asked,) = decide(None, refund, policy, at(0), origin=Origin("w", 0, 0))
    denial = denied(asked.approval_id or "", "finance_lead", t=1)
    state, (no,) = decide(state, denial, policy, at(1), origin=Origin("w", 0, 1))
    assert (no.outcome, no.reason) == (Outcome.STOP, "approval_denied") and state.stopped is None
    for n in range(2, SEEN_LIMIT + 3):
        report = completed(f"c{n}", "t1", "researcher", t=n)
        state, _ = decide(state, report, policy, at(n), origin=Origin("w", 0, n))
    assert not state.has_seen("h:h1")
    _, (copy,) = decide(state, refund, policy, at(9000), origin=Origin("w", 0, 9000))
    _, (again,) = decide(state, refund, policy, at(9001), origin=Origin("w2", 0, 9000))
    assert copy.outcome is Outcome.APPROVAL_REQUIRED
    assert copy.approval_id != asked.approval_id
    assert again.approval_id == copy.approval_id


def test_a_late_event_decided_again_after_a_lost_tombstone_is_named_forked_never_passed() -> None:
    """docs/guarantees.md, Not guaranteed: worker A's sweep evicted the idle run, A stopped
    its late handoff on the tombstone and died before writing either state; worker B decided
    the redelivered handoff on the live run. Both decisions follow the run's head: a fork
    that no walk can tell from a row inserted, so verify fails the run and replay calls it
    broken (and `baton up` restores it stopped): a false alarm, fail closed, never a pass."""
    from baton.processors.engine import evict
    from baton.processors.recorded import policy_document
    from baton.processors.replay import Recorded, replay_runs, runs_of
    from baton.schemas.policy import Policy
    from baton.sinks.chain_verify import verify_chains
    from tests.unit.test_chain import _row

    policy = seed_policy()
    late = handoff("h2", "t2", "planner", "researcher")

    def record(event: RunEvent, offset: int, seconds: float) -> InputRecord:
        raw = event.model_copy(update={"event_time": at(seconds)}).to_json()
        return InputRecord("requests", 0, offset, RUN.encode(), raw)

    states: dict[bytes, RunState] = {}
    a = BatchProcessor(policy, 1, states, worker="a", chain_key=KEY)
    first = record(handoff("h1", "t1", "planner", "researcher"), 0, 0)
    published = [d for _, d in a.process([first], at(0)).decisions]
    written = dict(states)
    tomb = evict(states[RUN.encode()], at(3700), 3600.0, 86400.0)
    assert tomb is not None
    states[RUN.encode()] = tomb
    published += [d for _, d in a.process([record(late, 1, 3701)], at(3701)).decisions]
    b = BatchProcessor(policy, 1, dict(written), worker="b", chain_key=KEY)
    published += [d for _, d in b.process([record(late, 1, 3712)], at(3712)).decisions]
    assert [d.reason for d in published] == ["ok", "run_expired", "ok"]
    (verdict,) = verify_chains([_row(d) for d in published], KEY)
    assert [p.split(":")[0] for p in verdict.problems] == ["forked"]
    policies = {policy.version: Policy.model_validate_json(policy_document(policy))}
    report = replay_runs(runs_of([Recorded.of(d) for d in published]), policy, policies, KEY)
    assert report.broken == [RUN] and "both follow the link" in report.partial[RUN]


def test_a_run_id_with_terminal_escapes_is_shown_escaped_by_baton_replay() -> None:
    """A run id is an id, not a name: any printable-or-not text up to 256 characters, so an
    orchestrator may name a run `\\x1b]0;...\\x07` (a terminal title, a screen clear, OSC 52
    writes the clipboard). `baton replay`'s report printed it raw in its changed, not
    reproduced and partial lines; `baton audit verify`, `tail` and `top` escape it."""
    from baton.cli.replay_cmds import _exit, _table
    from baton.processors.recorded import policy_document
    from baton.processors.replay import Recorded, replay_runs
    from baton.schemas.errors import ReplayFailed
    from baton.schemas.policy import Policy
    from tests.unit.test_engine_support import policy_with

    run = "run-\x1b[2J\x1b]0;owned\x07"
    task = "t\x1b[8m"
    steps: list[tuple[RunEvent, float]] = [
        (handoff("h1", task, "planner", "researcher", run_id=run), 0),
        (handoff("h2", "t2", "planner", "coder", run_id=run), 1),
    ]
    rows = [Recorded.of(d) for d in _decided(steps, run=run)]
    recorded = seed_policy()
    policies = {recorded.version: Policy.model_validate_json(policy_document(recorded))}
    stricter = policy_with(max_handoffs=1)
    changed = replay_runs([rows], stricter, policies, KEY)
    partial = replay_runs([rows[1:]], stricter, policies, KEY)
    unfaithful = replay_runs([rows], stricter, policies, b"another key")
    assert changed.changed_runs and partial.partial and unfaithful.unfaithful_runs
    for report in (changed, partial, unfaithful):
        text = _table(report, stricter, "p.yaml", "chdb", 1.0)
        assert "\x1b" not in text and "\x07" not in text, text
        assert "run-\\x1b[2J" in text, text
    with pytest.raises(ReplayFailed) as failed:
        _exit(unfaithful)
    assert "\x1b" not in str(failed.value) and "run-\\x1b[2J" in str(failed.value)


def test_requests_refused_by_a_full_worker_never_share_an_audit_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full worker refuses a new run's events (worker_run_limit) without keeping a state:
    the refusal's id covered the run, the request id and the phase only, so a second request
    under that id (another agent: anyone's copy, or an attacker reusing a victim's id) got
    the same id and replaced the first refusal in the audit. It now covers the input's
    position, as a life does; a redelivery keeps it, and replay reproduces both."""
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(seed_policy(), 1, states, worker="w", chain_key=KEY, max_runs=1)
    taken = handoff("h0", "t0", "planner", "researcher", run_id="run-a").to_json()
    proc.process([InputRecord("requests", 0, 1, b"run-a", taken)], at(0))
    victim = handoff("h1", "t1", "planner", "researcher", run_id="run-b")
    forged = victim.model_copy(update={"to_agent": "billing_agent"})

    def refused(event: RunEvent, offset: int) -> Decision:
        rec = InputRecord("requests", 0, offset, b"run-b", event.to_json())
        ((_, d),) = proc.process([rec], at(offset)).decisions
        assert d.reason == "worker_run_limit" and b"run-b" not in states
        return d

    first, copy, again = refused(victim, 2), refused(forged, 3), refused(victim, 2)
    assert first.decision_id != copy.decision_id
    assert again.decision_id == first.decision_id
    from baton.processors.recorded import policy_document
    from baton.processors.replay import Recorded, replay_runs
    from baton.schemas.policy import Policy

    policy = seed_policy()
    policies = {policy.version: Policy.model_validate_json(policy_document(policy))}
    rows = [Recorded.of(d) for d in (first, copy)]
    report = replay_runs([rows], policy, policies, KEY)
    assert report.partial == {} and [u for r in report.runs for u in r.unfaithful] == []
    # a refusal recorded before lives were marked (unmarked id) replays as recorded too
    # (the batch step's refusal given life "", as a worker before lives made it: patched in
    # batch.py, so in the interpreted build only; compiled, batch.py and engine_refusals
    # call refuse and life_of natively, where patching them does nothing)
    if COMPILED:
        return
    from baton.processors import batch
    from baton.processors.engine_refusals import refuse

    def without_life(*args: Any) -> tuple[RunState | None, list[Decision]]:
        return refuse(*args, life="")

    monkeypatch.setattr(batch, "refuse", without_life)
    old = refused(victim, 4)
    assert old.decision_id not in (first.decision_id, copy.decision_id)
    monkeypatch.undo()
    assert refused(victim, 4).decision_id != old.decision_id  # the patch took: unmarked
    report = replay_runs([[Recorded.of(old)]], policy, policies, KEY)
    assert report.partial == {} and [u for r in report.runs for u in r.unfaithful] == []


def test_a_run_a_lost_kill_holds_on_restart_never_gives_a_copy_a_recorded_id() -> None:
    """`baton up` gives a run that a lost kill switch names, and that it did not restore (its
    history forgotten), a stopped state of its own: no life, no dedup marks. A copy of one of
    the run's requests recorded before lives were marked was stopped under the recorded
    allow's id and replaced it in the audit; that state has forgotten every key now, so its
    ids carry the input's position (as a run restored from its counters)."""
    from baton.cli.restore_kills import hold_lost_kills

    policy, request = seed_policy(), handoff("h1", "t1", "planner", "researcher")
    _, (recorded,) = decide(None, request, policy, at(0))  # a worker before lives: unmarked
    states: list[RunState] = []
    assert hold_lost_kills(states, [("run", RUN)], at(86_400 * 60)) == [RUN]
    (held,) = states
    _, (copy,) = decide(held, request, policy, at(86_400 * 60 + 1), origin=Origin("w", 0, 3))
    _, (again,) = decide(held, request, policy, at(86_400 * 60 + 2), origin=Origin("v", 0, 3))
    assert copy.outcome is Outcome.STOP and copy.decision_id != recorded.decision_id
    assert again.decision_id == copy.decision_id


@_OLD_WORKER
def test_a_first_event_decided_again_across_the_upgrade_by_a_clock_behind_is_named_interleaved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/guarantees.md, Not guaranteed: a worker from before lives published a run's first
    decision and died before its state write; the new worker, whose clock is 5 s behind,
    decides the redelivered event (a marked id) and the run goes on. Read by decided_at the
    old one-row chain sits amid the new one: verify and replay refuse the run (fail closed),
    never pass a start amid a chain."""
    from baton.processors import batch
    from baton.processors.recorded import policy_document
    from baton.processors.replay import Recorded, replay_runs, runs_of
    from baton.schemas.policy import Policy
    from baton.sinks.chain_verify import verify_chains
    from tests.unit.test_chain import _row

    request = handoff("h1", "t1", "planner", "researcher")

    # a worker before lives: no new run gets one (patched in batch.py, interpreted in both
    # builds: the compiled engine calls its own life_of natively)
    def without_lives(*args: Any) -> tuple[RunState | None, list[Decision]]:
        return decide(*args, life="")

    with monkeypatch.context() as old_worker:
        old_worker.setattr(batch, "decide", without_lives)
        before = _decided([(request, 10)])
    after = _decided([(request, 5), (handoff("h2", "t2", "planner", "researcher"), 12)])
    assert before[0].decision_id != after[0].decision_id  # (one offset: only the life differs)
    rows = sorted([*before, *after], key=lambda d: d.decided_at)
    assert [d.chain_prev == "" for d in rows] == [True, True, False]
    (verdict,) = verify_chains([_row(d) for d in rows], KEY)
    assert [p.split(":")[0] for p in verdict.problems] == ["interleaved"]
    policy = seed_policy()
    policies = {policy.version: Policy.model_validate_json(policy_document(policy))}
    report = replay_runs(runs_of([Recorded.of(d) for d in rows]), policy, policies, KEY)
    assert report.broken == [RUN]


def test_a_forged_link_with_terminal_escapes_is_shown_escaped_by_verify() -> None:
    """A row written out of band may name any text as its chain_prev: its first 16
    characters were quoted raw in the missing and forked verdicts (a screen clear in 16)."""
    from baton.sinks.chain_verify import verify_chains
    from tests.unit.test_chain import _row

    decisions = _decided([(handoff("h1", "t1", "planner", "researcher"), 0)])
    forged = Decision.from_json(decisions[0].to_json())
    forged.decision_id, forged.chain_prev = "d" * 32, "\x1b[2J\x1b]0;x\x07" + "f" * 60
    twin = Decision.from_json(forged.to_json())
    twin.decision_id = "e" * 32
    for rows in ([decisions[0], forged], [decisions[0], forged, twin]):
        (verdict,) = verify_chains([_row(d) for d in rows], KEY)
        shown = [p for p in verdict.problems if p.startswith(("missing", "forked"))]
        assert shown and all("\x1b" not in p and "\x07" not in p for p in shown), shown
        assert all("\\x1b[2J" in p for p in shown), shown


def test_an_earlier_life_retention_is_expiring_is_partial_not_broken() -> None:
    """The audit's TTL expires a run's rows oldest first: while it eats a run id's earlier
    life, that life's oldest surviving row names a link no row holds, and a later life starts
    a chain. Verify failed the run (`missing`) though it checks runs near the horizon as
    partial, and replay called it broken (a `baton up` restart restored it stopped): every run
    id with two lives went through this. Now a missing link read before any start, whose
    chain ends before the next begins, is where a partial history begins: verify passes such
    a run (partial only), replay lists it partial; without the horizon it is still missing."""
    from baton.processors.replay import Recorded, in_chain_order
    from baton.sinks.chain_verify import verify_chains
    from tests.unit.test_chain import _row
    from tests.unit.test_chain_verify_lives import _two_lives

    lives = _two_lives()
    trimmed = [_row(d) for d in lives[1:]]
    (near,) = verify_chains(trimmed, b"lives-key", partial=frozenset({RUN}))
    assert near.problems == []
    (whole,) = verify_chains(trimmed, b"lives-key")
    assert [p.split(":")[0] for p in whole.problems] == ["missing"]
    rows, why = in_chain_order([Recorded.of(d) for d in lives[1:]])
    assert why is None and [r.decision_id for r in rows] == [d.decision_id for d in lives[1:]]
    # the trimmed chain read amid the later one (a row deleted, a start inserted) is refused
    mixed = [_row(d) for d in (lives[1], lives[3], lives[2], lives[4])]
    (verdict,) = verify_chains(mixed, b"lives-key", partial=frozenset({RUN}))
    assert [p.split(":")[0] for p in verdict.problems] == ["interleaved"]
    # a second missing link is a gap, horizon or not (here the later life's start deleted)
    cut = [_row(d) for d in (lives[1], lives[2], lives[4])]
    (gap,) = verify_chains(cut, b"lives-key", partial=frozenset({RUN}))
    assert [p.split(":")[0] for p in gap.problems] == ["missing"]


def test_a_restart_restores_the_later_life_of_a_run_whose_earlier_one_retention_trimmed() -> None:
    """`baton up` rebuilds a run from its first row: with its earlier life's start expired by
    retention that row is no start, and the run was restored from its counters, STOPPED
    (audit_unverified), though its current life is whole in the audit. The earlier life holds
    nothing the later one was decided on (a new life starts on a fresh state): the run is
    rebuilt from the later life's start, as the worker held it."""
    from pydantic import SecretStr

    from baton.cli.restore_rebuild import rebuild_runs as _rebuild
    from baton.processors.recorded import policy_document
    from baton.processors.replay import Recorded
    from baton.schemas.policy import Policy
    from baton.schemas.settings import Settings
    from tests.unit.test_chain_verify_lives import _two_lives

    lives = _two_lives()
    policy = seed_policy()
    policies = {policy.version: Policy.model_validate_json(policy_document(policy))}
    settings = Settings(partitions=1, audit_chain_key=SecretStr("lives-key"))
    now = lives[-1].decided_at
    assert now is not None
    rebuilt = _rebuild([[Recorded.of(d) for d in lives[1:]]], policies, settings, b"lives-key", now)
    assert rebuilt.unverified_counters == [] and rebuilt.broken == [] and rebuilt.unfaithful == []
    (state,) = rebuilt.states
    whole = _rebuild([[Recorded.of(d) for d in lives]], policies, settings, b"lives-key", now)
    assert state.stopped is None and state.to_bytes() == whole.states[0].to_bytes()
    assert state.life == f"r0:{lives[3].offset}"
