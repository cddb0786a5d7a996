"""A worker's start-up check of its own batch step, as its build runs it (processors/batch.py).

Before it connects, ``baton worker`` decides a few probe events on a scratch state (never its
runs table, never published): a handoff on its run's partition, the same event on another
partition (forwarded), the forwarded copy back on the run's partition, and a cost report. Each
is built as Faust hands a record over (:func:`~baton.processors.batch_records.record_of` of a
message whose headers are aiokafka's tuple: empty, or one forward header). Any outcome passes (a
policy may stop every handoff); the step raising, or answering a probe with an ``engine_error``
dead letter (a bug, never the probe's input), ends the worker at start with exit 1 and the
error, rather than a worker that answers every client's event with a stop.

Why: the compiled build (mypyc checks annotations at run time) refused the tuple of headers
Faust gives every record, from session 26 to 47: each event an ``engine_error`` dead letter,
while every unit test, giving lists, passed (docs/replay.md, "A compiled core").
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import orjson

from baton.processors.batch import BatchProcessor
from baton.processors.batch_records import ErrorKind, record_of
from baton.processors.batch_routing import FORWARDED_FROM
from baton.schemas.errors import BatonError
from baton.schemas.events import HandoffCompleted, HandoffRequested
from baton.schemas.policy import Policy
from baton.streams.partitioner import partition_for
from baton.streams.topics import TopicCatalog

__all__ = ["BatchStepBroken", "check_batch_step"]

#: the probes' run (a name no client's run takes: it is never published)
PROBE_RUN = "baton-self-check"


class BatchStepBroken(BatonError):
    """The worker's batch step fails on a probe event: a bug of Baton's or of its build."""

    exit_code = 1


def _message(
    topic: str, partition: int, offset: int, value: bytes, headers: tuple[Any, ...], at: float
) -> Any:
    """A record as Faust hands it over (its attributes, headers as aiokafka's tuple)."""
    return SimpleNamespace(
        topic=topic,
        partition=partition,
        offset=offset,
        key=PROBE_RUN.encode(),
        value=value,
        headers=headers,
        timestamp=at,
    )


def check_batch_step(policy: Policy, catalog: TopicCatalog, worker: str = "self-check") -> int:
    """Decide the probes under ``policy``; the number of decisions they got (a handoff's
    copies on two partitions and a cost report: 2). Raises :class:`BatchStepBroken` naming
    what failed."""
    partitions = catalog.partitions
    home = partition_for(PROBE_RUN.encode(), partitions)
    other = (home + 1) % partitions
    now = datetime.now(UTC)
    at = now.timestamp()
    handoff = HandoffRequested(
        request_id=f"{PROBE_RUN}-h1",
        run_id=PROBE_RUN,
        task_id="t1",
        from_agent="planner",
        to_agent="researcher",
        event_time=now,
    ).to_json()
    cost = HandoffCompleted(
        request_id=f"{PROBE_RUN}-h1",
        run_id=PROBE_RUN,
        task_id="t1",
        agent="researcher",
        cost_usd=0.01,
        tool_calls=1,
        event_time=now,
    ).to_json()
    # the handoff misplaced (forwarded), then its copy back on its run's partition with the
    # forward header, and its cost report; with one partition nothing is misplaced
    copy_headers: tuple[Any, ...] = ()
    batches = []
    if partitions > 1:
        copy_headers = ((FORWARDED_FROM, f"{catalog.requests}/{other}/0".encode()),)
        batches.append([_message(catalog.requests, other, 0, handoff, (), at)])
    batches.append(
        [
            _message(catalog.requests, home, 0, handoff, copy_headers, at),
            _message(catalog.requests, home, 1, cost, (), at),
        ]
    )
    step = BatchProcessor(policy, partitions, {}, worker, approvals_topic=catalog.approvals)
    decided = 0
    for messages in batches:
        try:
            out = step.process([record_of(m) for m in messages], now)
        except Exception as exc:  # the step never raises for a record: a bug
            raise BatchStepBroken(_said(f"{type(exc).__name__}: {exc}")) from exc
        for letter in out.dead_letters:
            if letter.kind == ErrorKind.ENGINE_ERROR:
                raise BatchStepBroken(_said(orjson.loads(letter.value).get("error", "")))
        decided += len(out.decisions)
    return decided


def _said(error: str) -> str:
    return (
        f"the worker's batch step fails on a probe event as Faust hands it over: {error[:500]}; "
        "this build cannot decide (a bug of Baton's or of its build, not of the setup: "
        'BATON_COMPILE=0 builds pure Python; docs/replay.md, "A compiled core")'
    )
