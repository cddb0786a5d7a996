"""The pure parts of `baton runs rebuild` (cli/runs_refused.py): which records of the decisions
topic count as a run's decisions, and the audit's query of many runs at once."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from baton.cli.runs_evidence import _decision_of
from baton.cli.runs_refused import partitions_of
from baton.schemas.decision import Decision, Outcome, Phase
from baton.sinks.replay_source import ReplayScope
from baton.streams.partitioner import partition_for

pytestmark = pytest.mark.unit

RUN = "run-1"


def _decision(run: str = RUN) -> dict[str, object]:
    at = datetime(2026, 12, 6, tzinfo=UTC)
    d = Decision(
        decision_id="d1",
        request_id="r1",
        run_id=run,
        tenant="acme",
        phase=Phase.PRE_HANDOFF,
        outcome=Outcome.ALLOW,
        reason="ok",
        event_time=at,
        decided_at=at,
    )
    return orjson.loads(d.to_json())  # type: ignore[no-any-return]


def test_a_workers_decision_of_the_run_counts() -> None:
    assert _decision_of(_decision(), RUN)


@pytest.mark.parametrize(
    "doc",
    [
        {"run_id": RUN, "decision_id": "forged-1"},  # no decision: the sink rejects it (F4)
        {**_decision(), "outcome": "maybe"},
        {**_decision(), "reason": "because"},
        {**_decision(), "decision_id": 7},
        {**_decision(), "decided_at": None},
        _decision("another-run"),
        [RUN, "d1"],
        None,
    ],
    ids=["bare", "outcome", "reason", "id", "time", "other run", "list", "null"],
)
def test_a_record_the_sink_would_not_store_as_the_runs_does_not(doc: object) -> None:
    assert not _decision_of(doc, RUN)


def test_many_runs_are_read_in_one_query() -> None:
    """One query a run made a flood of forged ids cost 82 ms each (h49b F3)."""
    where, params = ReplayScope(run_ids=("a", "b")).where()
    assert "run_id IN {run_ids:Array(String)}" in where and params["run_ids"] == ["a", "b"]


def test_the_partitions_to_restore_are_the_runs_own() -> None:
    runs = ["a", "b", "c", "a"]
    assert partitions_of(runs, 8) == sorted({partition_for(r.encode(), 8) for r in runs})


def test_a_rebuilt_idle_run_is_a_tombstone_from_when_its_retention_ended() -> None:
    """As the worker's sweep made it, not at the rebuild's now: a tombstone made then held the
    run id a whole tombstone retention more, and one due to be forgotten came back (h49c F2)."""
    from datetime import timedelta

    from baton.cli.restore_rebuild import _aged
    from baton.processors.state import RunState
    from baton.schemas.settings import Settings

    settings = Settings(run_retention_s=3600, tombstone_retention_s=86_400)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    state = RunState.new(RUN, "acme", start.timestamp())
    later = start + timedelta(hours=5)
    tomb = _aged(state, settings, later)
    assert tomb is not None and tomb.evicted_at is not None
    assert abs(tomb.evicted_at - (start.timestamp() + 3600)) < 1.0, tomb.evicted_at
    # a day after the sweep made it, forgotten: not a fresh tombstone made at the rebuild
    assert _aged(state, settings, start + timedelta(hours=1, days=1, minutes=1)) is None
    # still live within its retention
    live = _aged(state, settings, start + timedelta(minutes=59))
    assert live is not None and live.evicted_at is None


def test_a_run_the_sweep_forgot_is_kept_as_its_tombstone_for_a_refused_runs_rebuild() -> None:
    """Left out, a refused run the sweep would have forgotten stayed refused for good (no
    record of the workers' lifts a refusal); `baton up`'s restore still leaves it out."""
    from datetime import timedelta

    from baton.cli.restore_rebuild import Rebuilt, _age
    from baton.processors.state import RunState
    from baton.schemas.settings import Settings

    settings = Settings(run_retention_s=3600, tombstone_retention_s=86_400)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    state = RunState.new(RUN, "acme", start.timestamp())
    aged, forgotten = _age(state, settings, start + timedelta(days=3))
    assert aged is None and forgotten is not None
    assert abs(forgotten.evicted_at - (start.timestamp() + 3600)) < 1.0  # type: ignore[operator]
    assert Rebuilt().forgotten == []
