"""The pure parts of `baton runs rebuild` (cli/runs_refused.py): which records of the decisions
topic count as a run's decisions, and the audit's query of many runs at once."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from baton.cli.runs_refused import _decision_of, partitions_of
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
