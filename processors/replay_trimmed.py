"""Which runs a replay read as trimmed by the audit's retention cannot have been trimmed by it.

A run whose first chained decision names a predecessor no row read holds is *partial*: its
history starts before what was read. One thing cuts a history so and leaves it honest: the
audit's retention (a TTL on ``inserted_at``, the sink's clock, not a writer's: it deletes
the oldest rows first, table-wide). The read has no lower bound that cuts a run (``--since``
reads each run with a step in the range whole, since session 19). Anything else is rows
deleted at the run's start, or its first link altered: a run the new policy changes that
hides as "partial" would let the gate exit 0 (fail open).

So a run read as trimmed whose first row was decided more than :data:`TRIMMED_MARGIN_S`
after the oldest row read is listed with the broken chains (exit 7): retention would have
deleted that older row before any of the run's. The margin is `baton audit verify`'s for a run
id's lives (``chain_links.NEW_LIFE_AFTER_S``, a day): ClickHouse applies a TTL at merges,
so expired rows outlive their time by hours, never by a day. A false alarm remains
possible and is named: a run whose trimmed history ended more than a day before a late
event decided on its tombstone, or one whose later rows the sink stored more than a day after
they were decided (a sink down that long: those rows outlive older ones decided after them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from baton.processors.chain_links import NEW_LIFE_AFTER_S
from baton.processors.replay_report import ReplayReport

__all__ = ["TRIMMED_MARGIN_S", "LinkCheck", "judge_trimmed"]

#: how much newer than the oldest row read a run's first row may be and still have been
#: trimmed by retention
TRIMMED_MARGIN_S = NEW_LIFE_AFTER_S

#: run id -> (its first row's decided_at, the link it names) -> the run ids of those the
#: audit says something of (``altered_starts``: a forged copy of its chain start)
LinkCheck = Callable[[Mapping[str, tuple[datetime, str]]], set[str]]


def judge_trimmed(report: ReplayReport, altered: LinkCheck | None = None) -> None:
    """Move the runs of ``report.trimmed`` that retention cannot have trimmed to
    ``report.broken``, each with its reason in ``report.partial``; ``altered``: the runs
    whose first row, the one naming the link, does not hash to its chain hash, or whose
    link's row was replaced under its id (a forged copy of a run's chain start replaces the
    worker's row in FINAL, its link, chain and time the writer's: read within a day of the
    oldest row, the run passed as retention's cut, its change hidden, exit 0)."""
    oldest = report.oldest
    if oldest is None or not report.trimmed:
        return
    if altered is not None:
        for run_id in altered(report.trimmed):
            del report.trimmed[run_id]
            report.partial[run_id] = _ALTERED
            report.broken.append(run_id)
    suspects = {
        run_id: seen
        for run_id, seen in report.trimmed.items()
        if (seen[0] - oldest).total_seconds() > TRIMMED_MARGIN_S
    }
    for run_id, (first_at, _) in suspects.items():
        del report.trimmed[run_id]
        report.partial[run_id] = _why(first_at, oldest)
        report.broken.append(run_id)


_ALTERED = (
    "cut at its start: altered, not trimmed: its first row (the one naming a link no row read "
    "holds) does not hash to its chain_hash, or the row that held that link was replaced under "
    "its decision id (a forged copy of its chain start replaces the worker's row in the "
    "audit); is the chain key "
    "(BATON_AUDIT_CHAIN_KEY, or the `baton up` stack's worker/chain.key, found from "
    "its folder) the workers'?"
)


def _why(first_at: datetime, oldest: datetime) -> str:
    days = (first_at - oldest).total_seconds() / 86_400
    return (
        f"cut at its start: its first row (decided {first_at:%Y-%m-%d %H:%M:%S}) names a "
        f"link no row holds, yet the audit holds a row decided {days:,.1f} days before it "
        f"({oldest:%Y-%m-%d %H:%M:%S}); retention deletes the oldest rows first, so it did "
        "not trim this run, nor did --since: its first rows were deleted or its first link "
        "altered (or, rarely, a late event came more than a day after a run whose earlier "
        "rows retention deleted)"
    )
