"""A run id's later life (decided as a new run once the worker forgot its tombstone) starts a
new chain: `baton audit verify` and `baton replay` walk the links with one walker and give the
same answer for the same rows: a start after the previous chain ended holds, a start amid a
chain, a gap, a fork, a loop are refused by both, each named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from baton.cli.verify_cmds import _query
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.recorded import policy_document
from baton.processors.replay import Recorded, ReplayReport, in_chain_order, replay_runs
from baton.processors.state import RunState
from baton.schemas.decision import Decision
from baton.schemas.events import RunEvent
from baton.schemas.policy import Policy
from baton.sinks.chain_verify import RunChain, verify_chains
from baton.sinks.chain_verify import utc_row as _utc
from baton.sinks.replay_source import ReplayScope, page_rows, read_pages
from tests.chdb_audit import chdb_audit
from tests.unit.test_chain import _row
from tests.unit.test_engine_support import at, handoff, seed_policy

pytestmark = pytest.mark.unit

KEY = b"lives-key"
RUN = "run-1"
#: the worker forgot the run's tombstone: the day after, its run id is new again
DAY = 86_400.0


def _decided(steps: list[tuple[RunEvent, float, bool]]) -> list[Decision]:
    """What the worker's batch step published for ``steps`` (event, seconds, the run's state
    forgotten before it), each read from the requests topic at the next offset."""
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(seed_policy(), 1, states, worker="w", chain_key=KEY)
    published: list[Decision] = []
    for offset, (event, seconds, forgotten) in enumerate(steps):
        if forgotten:
            states.clear()
        raw = event.model_copy(update={"event_time": at(seconds)}).to_json()
        out = proc.process([InputRecord("requests", 0, offset, RUN.encode(), raw)], at(seconds))
        published += [d for _, d in out.decisions if not d.reemitted]
    return published


def _two_lives() -> list[Decision]:
    """Three handoffs, then (the tombstone forgotten) two more; every decision is linked."""
    return _decided(
        [
            (handoff("h1", "t1", "planner", "researcher"), 0, False),
            (handoff("h2", "t2", "planner", "researcher"), 10, False),
            (handoff("h3", "t3", "planner", "coder"), 20, False),
            (handoff("n1", "t1", "planner", "coder"), 40 * DAY, True),
            (handoff("n2", "t2", "planner", "coder"), 40 * DAY + 10, False),
        ]
    )


def _replay(rows: list[Recorded]) -> ReplayReport:
    policy = seed_policy()
    policies = {policy.version: Policy.model_validate_json(policy_document(policy))}
    return replay_runs([rows], policy, policies, KEY)


def _verified(decisions: list[Decision], partial: bool = False) -> RunChain:
    (verdict,) = verify_chains(
        [_row(d) for d in decisions], KEY, partial=frozenset({RUN} if partial else ())
    )
    return verdict


def _both(decisions: list[Decision]) -> tuple[str | None, list[str]]:
    """Replay's reason and verify's problems for the same rows in the same read order."""
    _, why = in_chain_order([Recorded.of(d) for d in decisions])
    return why, _verified(decisions).problems


def test_a_run_id_back_after_its_tombstone_was_forgotten_is_a_new_life_for_both() -> None:
    """The failing mode: verify named the second start `forked` while replay accepted it."""
    decisions = _two_lives()
    assert [d.chain_prev == "" for d in decisions] == [True, False, False, True, False]
    assert _both(decisions) == (None, [])
    report = _replay([Recorded.of(d) for d in decisions])
    assert report.broken == [] and report.partial == {}
    assert [u for run in report.runs for u in run.unfaithful] == []


def test_a_new_life_after_a_clock_step_back_in_the_old_one_holds_for_both() -> None:
    """Life one read out of its chain order (the clock stepped back): still whole, and
    wholly read before the next start."""
    decisions = _two_lives()
    read = [decisions[0], decisions[2], decisions[1], *decisions[3:]]
    ordered, why = in_chain_order([Recorded.of(d) for d in read])
    assert why is None
    assert [r.decision_id for r in ordered] == [d.decision_id for d in decisions]
    assert _verified(read).problems == []


@pytest.mark.parametrize(
    "order",
    [
        pytest.param([0, 1, 3, 2, 4], id="a second start while the first chain goes on"),
        pytest.param([0, 3, 1, 4, 2], id="two chains interleaved in time"),
        pytest.param([3, 0, 1, 2, 4], id="the second chain's start read before the first"),
    ],
)
def test_chains_that_mix_in_the_read_are_interleaved_for_both(order: list[int]) -> None:
    decisions = _two_lives()
    read = [decisions[i] for i in order]
    why, problems = _both(read)
    assert why is not None and "amid" in why
    assert problems and problems[0].startswith("interleaved: decision")
    assert problems[0].removeprefix("interleaved: ") == why.split("broken: ", 1)[1]
    report = _replay([Recorded.of(d) for d in read])
    assert report.broken == [RUN] and report.runs == []


def test_a_row_deleted_from_either_life_is_missing_for_both() -> None:
    """The middle of the first life, or the second life's start (a start is in the read, so
    the orphaned row is a gap, not where the read begins)."""
    decisions = _two_lives()
    for gone in (1, 3):
        read = [d for i, d in enumerate(decisions) if i != gone]
        why, problems = _both(read)
        assert why is not None and "no row of the run holds" in why
        assert problems == [f"missing: {why.split('broken: ', 1)[1]}"]
        assert decisions[gone + 1].decision_id in problems[0]


def test_a_row_forged_after_a_new_lifes_start_is_forked_for_both() -> None:
    decisions = _two_lives()
    forged = _copy(decisions[4], decision_id="forged")
    why, problems = _both([*decisions, forged])
    assert why is not None and "both follow" in why and "forged" in why
    assert f"forked: {why.split('broken: ', 1)[1]}" in problems
    assert "altered: decision forged does not hash to its chain_hash" in problems


def test_links_in_a_loop_are_unlinked_for_both() -> None:
    decisions = _two_lives()
    looped = _copy(decisions[4], decision_id="loop", chain_prev="x" * 32, chain_hash="y" * 32)
    back = _copy(decisions[4], decision_id="back", chain_prev="y" * 32, chain_hash="x" * 32)
    why, problems = _both([*decisions, looped, back])
    assert why is not None and "7 rows are linked, 5 are reached" in why
    assert f"unlinked: {why.split('broken: ', 1)[1]}" in problems


def test_a_history_trimmed_by_retention_is_partial_for_replay_and_holds_for_a_partial_verify() -> (
    None
):
    """No row starts a chain and one link alone is missing: where what was read begins. With
    the later life in the read too (retention expiring the earlier life, which every run id
    with two lives goes through) it holds alike: the later life starts a day or more after
    the trimmed chain's last row (a deleted row read before a start by a clock step back is
    refused: tests/unit/test_replay_order.py)."""
    decisions = _two_lives()
    trimmed = decisions[1:3]
    assert _both(trimmed)[0] is None
    assert (
        _replay([Recorded.of(d) for d in trimmed])
        .partial[RUN]
        .startswith("its history does not start in what was read")
    )
    assert _verified(trimmed, partial=True).problems == []
    assert _verified(trimmed).problems[0].startswith("missing: decision")
    with_next_life = decisions[1:]
    assert _both(with_next_life)[0] is None
    assert _replay([Recorded.of(d) for d in with_next_life]).broken == []
    assert _verified(with_next_life, partial=True).problems == []
    assert _verified(with_next_life).problems[0].startswith("missing: decision")


def test_two_gaps_in_a_trimmed_history_are_missing_for_both() -> None:
    decisions = _decided(
        [(handoff(f"h{i}", f"t{i}", "planner", "researcher"), i, False) for i in range(5)]
    )
    read = [decisions[1], decisions[2], decisions[4]]  # 0 trimmed, 3 deleted
    _, why = in_chain_order([Recorded.of(d) for d in read])
    assert why is not None and decisions[4].decision_id in why
    assert _verified(read, partial=True).problems == [f"missing: {why.split('broken: ', 1)[1]}"]


def test_verify_reads_a_run_from_chdb_in_replays_order_and_both_pass_two_lives(
    tmp_path: Path,
) -> None:
    """The verify command's own query on a real audit: a run's rows by decided_at (the
    second life's rows come back after the first's whatever their ids), as replay reads."""
    decisions = _two_lives()
    client = chdb_audit(tmp_path / "chdb", decisions)
    sql, params = _query(None, None)
    rows = [_utc(r) for r in client.query(sql, parameters=params).result_rows]
    assert [r[1] for r in rows] == [d.decision_id for d in decisions]
    assert [(v.run_id, v.rows, v.problems) for v in verify_chains(rows, KEY)] == [(RUN, 5, [])]
    read = [r for page in read_pages(client, ReplayScope()).pages for r in page_rows(page)]
    report = _replay(read)
    assert report.broken == [] and report.partial == {} and len(report.runs) == 1
    assert report.runs[0].unfaithful == []


def _copy(d: Decision, **changes: Any) -> Decision:
    copy = Decision.from_json(d.to_json())
    for name, value in changes.items():
        setattr(copy, name, value)
    return copy


def test_a_thousand_forged_rows_on_one_link_make_one_short_line_naming_them() -> None:
    """Rows written by someone who can write the audit: ids of any text and length, as many
    as they like. The verdict stays one bounded line, control characters escaped."""
    decisions = _two_lives()
    forged = [_copy(decisions[4], decision_id=f"\x1b[2J{'x' * 70_000}-{n}") for n in range(1_000)]
    why, problems = _both([*decisions, *forged])
    assert why is not None and "(and 999 more)" in why and "\x1b" not in why
    assert len(why) < 400
    forked = next(p for p in problems if p.startswith("forked:"))
    assert len(forked) < 400 and "\\x1b[2J" in forked
    altered = [p for p in problems if p.startswith("altered:")]
    assert len(altered) == 1_000 and all(len(p) < 200 for p in altered)
