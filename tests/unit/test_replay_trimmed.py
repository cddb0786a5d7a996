"""A run read as trimmed before what was read: retention's or the read bound's cut stays
partial; a cut retention cannot have made (the run's first row more than a day newer than
the oldest row read, no lower bound that holds its first link) is broken, exit 7, named.
Also: any other partial run is broken (fail closed), its reason named."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from baton.cli.replay_cmds import replay_audit
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.replay import replay_runs, runs_of
from baton.processors.replay_pool import replay_parallel
from baton.processors.replay_trimmed import TRIMMED_MARGIN_S
from baton.processors.state import RunState
from baton.schemas.decision import Decision
from baton.schemas.events import RunEvent
from baton.sinks.replay_source import ReplayScope
from tests.chdb_audit import chdb_audit
from tests.unit.test_engine_support import policy_with
from tests.unit.test_replay import KEY, _budget_history, _policies, record

LOOSE, STRICT = policy_with(max_handoffs=20), policy_with(max_handoffs=3)
DAY = 86_400.0


def _later(timed: list[tuple[RunEvent, datetime]], seconds: float) -> list:
    shift = timedelta(seconds=seconds)
    return [
        (e.model_copy(update={"event_time": e.event_time + shift}), t + shift) for e, t in timed
    ]


def _cut_victim(after_s: float) -> list:
    """An older whole run and a changing one begun ``after_s`` later, its first 2 rows gone."""
    bystander = record(LOOSE, _budget_history("b-bystander", 2, 1.0))
    victim = record(LOOSE, _later(_budget_history("a-victim", 5, 1.0), after_s))
    return victim[2:] + bystander


def test_a_run_cut_within_a_day_of_the_oldest_row_is_retentions_partial_only() -> None:
    report = replay_runs(
        runs_of(_cut_victim(TRIMMED_MARGIN_S - 3600)), STRICT, _policies(LOOSE), KEY
    )
    assert "does not start in what was read" in report.partial["a-victim"]
    assert report.broken == [] and "a-victim" in report.trimmed


def test_a_run_cut_more_than_a_day_after_the_oldest_row_is_broken_and_named() -> None:
    report = replay_runs(runs_of(_cut_victim(2 * DAY)), STRICT, _policies(LOOSE), KEY)
    assert report.broken == ["a-victim"] and "a-victim" not in report.trimmed
    why = report.partial["a-victim"]
    assert why.startswith("cut at its start") and "retention deletes the oldest rows" in why


def test_runs_read_in_pieces_are_judged_over_every_piece() -> None:
    """The older run in one piece, the cut one in another: judged after they merge."""
    rows = _cut_victim(2 * DAY)
    report = replay_parallel(rows, STRICT, _policies(LOOSE), KEY, piece_rows=2)
    assert report.broken == ["a-victim"]


def _decided(timed: list[tuple[RunEvent, datetime]]) -> list[Decision]:
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(LOOSE, 1, states, worker="w", chain_key=KEY)
    out: list[Decision] = []
    for offset, (event, now) in enumerate(timed):
        rec = InputRecord("requests", 0, offset, event.run_id.encode(), event.to_json())
        out += [d for _, d in proc.process([rec], now).decisions]
    return out


def _audit(chdb: Path, decisions: list[Decision]) -> object:
    return chdb_audit(chdb, decisions, ttl_days=20_000)


def test_a_run_begun_before_since_is_replayed_whole_and_rows_deleted_after_since_are_broken(
    tmp_path: Path,
) -> None:
    """With --since, a run with a step in the range is read from its first recorded decision
    (session 19: read from the bound it was partial, so a writer who seeds a predicted run
    id before --since hid the run's change, exit 0); one whose rows after the bound were
    deleted has a gap in its chain: broken, as without the bound."""

    def victim(run: str) -> tuple[list[Decision], datetime]:
        timed = _budget_history(run, 6, 1.0)
        # two handoffs before --since, four more two days later
        timed = timed[:2] + _later(timed[2:], 2 * DAY)
        return _decided(timed), timed[2][1] - timedelta(days=2, seconds=-1)

    kept, since = victim("a-kept")
    cut, _ = victim("a-cut")
    after = [d for d in cut if d.decided_at >= since]
    cut = [d for d in cut if d.decided_at < since] + after[2:]  # its first 2 rows after it
    bystander = _decided(_later(_budget_history("b-bystander", 2, 1.0), 30.0))
    early = _decided(_later(_budget_history("c-early", 2, 1.0), -3600.0))  # none in the range
    assert kept[2].decided_at >= since > kept[1].decided_at
    assert bystander[0].decided_at >= since > early[-1].decided_at

    client = _audit(tmp_path / "chdb", kept + cut + bystander + early)
    # each row stored as it was decided (the sink's clock: --since also takes the runs with a
    # row stored in the range, so every run inserted by this test would be in it)
    client.command(  # type: ignore[attr-defined]
        "ALTER TABLE governance.decisions UPDATE inserted_at = decided_at WHERE 1 "
        "SETTINGS mutations_sync = 1"
    )
    for scope in (ReplayScope(since=since), ReplayScope()):
        report = replay_audit(client, scope, STRICT, _policies(LOOSE), KEY, 1)
        assert "a-kept" not in report.partial and report.broken == ["a-cut"]
        assert "a-kept" in {r.run_id for r in report.changed_runs}  # its 5th handoff, at least
        replayed = {r.run_id for r in report.runs} | set(report.partial)
        assert ("c-early" in replayed) == (scope.since is None)
    report = replay_audit(client, ReplayScope(since=since), STRICT, _policies(LOOSE), KEY, 1)
    assert report.decisions == len(kept) + len(bystander)  # the kept run whole (not the broken)


def test_any_partial_run_but_a_trimmed_one_is_broken_with_its_reason() -> None:
    """Stripped of its chain and its inputs (as an audit older than inputs looks), a run
    cannot be decided: listed broken (exit 7), the reason named (fail closed)."""
    rows = record(LOOSE, _budget_history("run_a", 2, 1.0))
    stripped = [r._replace(chain_prev=None, chain_hash=None, input=None) for r in rows]
    report = replay_runs(runs_of(stripped), STRICT, _policies(LOOSE), KEY)
    assert report.broken == ["run_a"] and "records no input" in report.partial["run_a"]
