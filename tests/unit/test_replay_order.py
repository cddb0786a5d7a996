"""A run read out of its order (a worker clock stepped back) is put in its chain's order for
replay and for `baton up`'s restore; a chain with a gap, a fork or interleaved starts is named
broken, never replayed or restored from a guessed order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from baton.cli.restore_rebuild import rebuild_runs as _rebuild
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.recorded import policy_document
from baton.processors.replay import Recorded, ReplayReport, in_chain_order, replay_runs
from baton.schemas.decision import Decision, Reason
from baton.schemas.policy import Policy
from baton.schemas.settings import Settings
from tests.unit.test_engine_support import handoff, seed_policy

pytestmark = pytest.mark.unit

KEY = b"chain-key"
BASE = datetime.now(UTC) - timedelta(hours=1)


def _decided(steps: list[tuple[str, str, float]]) -> tuple[Policy, list[Recorded]]:
    """Run ``r`` decided by the worker's batch step: (request id, to_agent, seconds after
    BASE) per event, each a new task (every decision changes the state: each is linked) in
    its own batch at that time (a smaller time: the clock stepped back). The rows as the
    audit holds them, in the worker's order."""
    policy = seed_policy()
    proc = BatchProcessor(policy, 1, {}, worker="w", chain_key=KEY)
    published: list[Decision] = []
    for offset, (request_id, to_agent, seconds) in enumerate(steps):
        now = BASE + timedelta(seconds=seconds)
        event = handoff(request_id, f"t{offset}", "planner", to_agent, run_id="r")
        raw = event.model_copy(update={"event_time": now}).to_json()
        out = proc.process([InputRecord("req", 0, offset, b"r", raw)], now)
        published += [d for _, d in out.decisions]
    return policy, [Recorded.of(d) for d in published]


def _by_time(rows: list[Recorded]) -> list[Recorded]:
    """The audit's read order: decided_at first."""
    return sorted(rows, key=lambda r: r.decided_at)


def _replay(policy: Policy, rows: list[Recorded]) -> ReplayReport:
    policies = {policy.version: Policy.model_validate_json(policy_document(policy))}
    return replay_runs([rows], policy, policies, KEY)


def test_rows_read_in_their_chain_order_are_returned_as_read_without_a_copy() -> None:
    _, rows = _decided([("h0", "researcher", 1), ("h1", "researcher", 2), ("h2", "coder", 3)])
    ordered, why = in_chain_order(rows)
    assert why is None and ordered is rows


def test_a_run_read_out_of_order_after_a_clock_step_back_is_replayed_in_its_chain_order() -> None:
    policy, rows = _decided([("h0", "researcher", 10), ("h1", "coder", 9), ("h2", "coder", 8)])
    read = _by_time(rows)
    assert [r.decision_id for r in read] != [r.decision_id for r in rows]
    ordered, why = in_chain_order(read)
    assert why is None
    assert [r.decision_id for r in ordered] == [r.decision_id for r in rows]
    report = _replay(policy, read)
    assert report.partial == {} and report.broken == []
    assert [u for run in report.runs for u in run.unfaithful] == []


def test_a_row_deleted_from_the_middle_makes_the_run_broken_not_replayed() -> None:
    policy, rows = _decided([("h0", "researcher", 10), ("h1", "coder", 9), ("h2", "coder", 8)])
    del rows[1]
    _, why = in_chain_order(_by_time(rows))
    assert why is not None and "no row of the run holds" in why and rows[1].decision_id in why
    report = _replay(policy, _by_time(rows))
    assert report.runs == [] and report.broken == ["r"]
    assert "chain of decisions is broken" in report.partial["r"]


def test_two_rows_naming_one_predecessor_are_a_fork_never_reordered() -> None:
    policy, rows = _decided([("h0", "researcher", 1), ("h1", "coder", 2)])
    forged = rows[1]._replace(decision_id="forged", chain_hash="f" * 32)
    _, why = in_chain_order([*rows, forged])
    assert why is not None and "both follow" in why and "forged" in why
    report = _replay(policy, [*rows, forged])
    assert report.broken == ["r"] and report.runs == []


def test_a_forged_chain_start_amid_a_run_is_broken_not_taken_for_a_new_run() -> None:
    """A run id new again starts a new chain only after the old one ended (hours later);
    a start read between two linked rows of a run is a forged row."""
    _, rows = _decided([("h0", "researcher", 10), ("h1", "researcher", 9)])
    forged = rows[0]._replace(decision_id="forged", chain_hash="f" * 32)
    read = [rows[1], forged, rows[0]]  # rows[1] (stepped back) read first: the slow path
    _, why = in_chain_order(read)
    assert why is not None and "amid" in why and "forged" in why


def test_a_row_without_a_link_moves_with_the_linked_row_it_was_read_after() -> None:
    _, rows = _decided([("h0", "researcher", 10), ("h1", "coder", 9)])
    unlinked = rows[1]._replace(decision_id="u", chain_prev=None, chain_hash=None)
    first = rows[0]._replace(decision_id="u0", chain_prev=None, chain_hash=None)
    read = [first, rows[1], unlinked, rows[0]]
    ordered, why = in_chain_order(read)
    assert why is None
    assert [r.decision_id for r in ordered] == [
        "u0", rows[0].decision_id, rows[1].decision_id, "u",
    ]  # fmt: skip


def test_a_history_whose_start_was_not_read_stays_partial_as_trimmed() -> None:
    policy, rows = _decided([("h0", "researcher", 10), ("h1", "coder", 9), ("h2", "coder", 8)])
    trimmed = _by_time(rows[1:])
    ordered, why = in_chain_order(trimmed)
    assert why is None and ordered is trimmed
    report = _replay(policy, trimmed)
    assert report.broken == [] and "does not start in what was read" in report.partial["r"]


def test_links_in_a_loop_are_broken() -> None:
    _, rows = _decided([("h0", "researcher", 1), ("h1", "researcher", 2)])
    looped = rows[1]._replace(decision_id="loop", chain_prev="x" * 32, chain_hash="y" * 32)
    back = rows[1]._replace(decision_id="back", chain_prev="y" * 32, chain_hash="x" * 32)
    _, why = in_chain_order([rows[0], looped, back, rows[1]])
    assert why is not None and "reached" in why


def _settings() -> Settings:
    return Settings(partitions=1, audit_chain_key=SecretStr(KEY.decode()))


def test_restore_rebuilds_a_run_read_out_of_order_as_the_worker_held_it() -> None:
    policy, rows = _decided([("h0", "researcher", 10), ("h1", "coder", 9)])
    now = BASE + timedelta(seconds=20)
    rebuilt = _rebuild([_by_time(rows)], {policy.version: policy}, _settings(), KEY, now)
    assert rebuilt.unverified_counters == [] and rebuilt.unfaithful == []
    (state,) = rebuilt.states
    assert state.stopped is None and state.handoff_count == 2
    assert state.chain_head == rows[-1].chain_hash  # the worker's head: every step replayed


def test_restore_of_a_broken_chain_names_it_and_restores_it_stopped() -> None:
    """A gap read after a clock step back (the read then starts past the chain's start:
    restored from its counters, stopped) and a fork (replayed as read: not reproduced,
    stopped): both named broken, neither reopened."""
    policy, rows = _decided([("h0", "researcher", 10), ("h1", "researcher", 9), ("h2", "x", 8)])
    now = BASE + timedelta(seconds=20)
    gap = _by_time([rows[0], rows[2]])
    fork = [*rows, rows[2]._replace(decision_id="forged", chain_hash="f" * 32)]
    for run, counted, stopped in ((gap, ["r"], []), (fork, [], [Reason.AUDIT_UNVERIFIED])):
        rebuilt = _rebuild([run], {policy.version: policy}, _settings(), KEY, now)
        assert rebuilt.unverified_counters == counted  # restored stopped from its counters
        assert [s.stopped for s in rebuilt.states] == stopped
        assert rebuilt.broken[0].startswith("r: its chain of decisions is broken")


def test_a_replay_with_a_broken_chain_exits_7_though_other_runs_replayed() -> None:
    """A partial run trimmed by retention leaves the answer standing; a broken one does not:
    the audit was altered, never read as "nothing changes"."""
    from baton.cli.replay_cmds import _exit
    from baton.processors.replay import RunOutcome
    from baton.schemas.errors import ReplayFailed

    policy, rows = _decided([("h0", "researcher", 10), ("h1", "coder", 9), ("h2", "coder", 8)])
    report = _replay(policy, _by_time([rows[0], rows[2]]))
    report.runs.append(RunOutcome("other"))
    with pytest.raises(
        ReplayFailed, match=r"1 run is broken or cannot be decided \(first: r,"
    ) as failed:
        _exit(report)
    assert failed.value.exit_code == 7
