"""``baton trace RUN_ID``: one run's decisions from the audit, in order, for an incident review."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client

from baton.processors.chain_links import ChainBreak, Link, walk_links
from baton.schemas.decision import UNCHAINED_OUTCOMES, is_link
from baton.schemas.errors import BadArgument
from baton.sinks.render import cell, render_table, shown, shown_cut
from baton.sinks.schema import DATABASE

__all__ = ["TRACE_COLUMNS", "format_trace", "load_trace"]

TRACE_COLUMNS: tuple[str, ...] = (
    "decided_at",
    "event_time",
    "tenant",
    "phase",
    "outcome",
    "reason",
    "from_agent",
    "to_agent",
    "task_id",
    "parent_task_id",
    "owner",
    "depth",
    "handoff_count",
    "spent_usd",
    "reserved_usd",
    "tool_calls",
    "approval_id",
    "approval_expires_at",
    "approver",
    "handoff_status",
    "fallback",
    "action",
    "tool",
    "detail",
    "policy_version",
    "decision_id",
)

#: read with them, not shown: the run's links, walked as `baton audit verify` walks them
_LINK_COLUMNS = ("chain_prev", "chain_hash")

# the worker decides a run's events one after another and publishes them to one partition,
# so decided_at, then the decisions-topic offset, is the order things happened in
_TRACE_SQL = f"""
SELECT {", ".join(f"`{c}`" for c in (*TRACE_COLUMNS, *_LINK_COLUMNS))}
FROM {DATABASE}.decisions FINAL
WHERE run_id = {{run_id:String}}
ORDER BY decided_at, audit_partition, audit_offset
"""


def load_trace(client: Client, run_id: str) -> list[dict[str, Any]]:
    """Every decision of ``run_id`` in order; BadArgument (exit 2) when the audit has none."""
    result = client.query(_TRACE_SQL, parameters={"run_id": run_id})
    columns = (*TRACE_COLUMNS, *_LINK_COLUMNS)
    steps = [dict(zip(columns, row, strict=True)) for row in result.result_rows]
    if not steps:
        similar = client.query(
            f"SELECT DISTINCT run_id FROM {DATABASE}.decisions "
            "WHERE positionCaseInsensitive(run_id, {q:String}) > 0 LIMIT 5",
            parameters={"q": run_id[:12]},
        ).result_rows
        hint = (
            f"; similar run ids: {', '.join(_shown_id(r[0]) for r in similar)}" if similar else ""
        )
        raise BadArgument(
            f"no decisions for run '{_shown_id(run_id)}' in {DATABASE}.decisions (is the audit "
            f"sink running, and has it caught up?){hint}"
        )
    from baton.sinks.audit_conflicts import load_conflicts

    found = load_conflicts(client, run_id) or []
    conflicts = {c.decision_id: c for c in found if c.differs}
    for step in steps:  # a record FINAL replaced under this id said something else
        if step["decision_id"] in conflicts:
            step["conflict"] = conflicts[step["decision_id"]]
    return steps


def _shown_id(run_id: str) -> str:
    """Another run's id in a message: escaped and cut (a forged row's may be 70 KB)."""
    return shown_cut(run_id, 64)


def _usd(value: Decimal | float) -> str:
    return f"${Decimal(value):.2f}" if value < 100_000 else f"${Decimal(value):,.0f}"


def _money(value: Decimal) -> str:
    # cents always shown, micro-dollars when there are any: 0.00, 0.25, 0.123456
    cents = value.quantize(Decimal("0.01"))
    return str(cents) if cents == value else format(value.normalize(), "f")


def _handoff(step: dict[str, Any]) -> str:
    if step["from_agent"] is None and step["to_agent"] is None:
        return ""
    return f"{step['from_agent'] or '?'} -> {step['to_agent'] or '?'}"


def _approval(step: dict[str, Any]) -> str:
    if not step["approval_id"]:
        return ""
    if step["outcome"] == "approval_required":
        expires = step["approval_expires_at"]
        until = f", expires {expires:%H:%M:%S}" if isinstance(expires, datetime) else ""
        return f"{step['approval_id']} requested{until}"
    by = f" by {step['approver']}" if step["approver"] else ""
    return f"{step['approval_id']} {step['reason'].removeprefix('approval_')}{by}"


def _note(step: dict[str, Any]) -> str:
    notes = []
    if step["handoff_status"]:
        notes.append(f"status={step['handoff_status']}")
    if step["fallback"]:
        notes.append(f"fallback={step['fallback']}")
    if step["action"]:
        notes.append(f"action={step['action']}")
    if step["tool"]:
        notes.append(f"tool={step['tool']}")
    if step["detail"]:
        notes.append(str(step["detail"]))
    return " ".join(notes)


def _chain_break(steps: Sequence[dict[str, Any]]) -> ChainBreak | None:
    """Why the run's linked rows do not chain (a row deleted, inserted or replaced in
    ``FINAL``), as `baton audit verify` walks them, links only (no key: the hashes are not
    recomputed). A trace showed a row any writer of gov.decisions or the audit put there
    (a forged stop or allow, a replaced step) as the run's, without a word."""
    links = [
        Link(str(s["decision_id"]), s.get("chain_prev") or "", s["chain_hash"], _at(s))
        for s in steps
        if s.get("chain_hash")
    ]
    return walk_links(links, may_start_before=True).broken if links else None


def _at(step: dict[str, Any]) -> float:
    at = step.get("decided_at")
    return at.timestamp() if isinstance(at, datetime) else 0.0


def _lives(steps: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``steps`` split where a chain starts again (``chain_prev`` ""): a run id used again once
    its tombstone was forgotten is decided on a fresh state, its totals from 0. The header
    took the largest life's totals for the run's (a $10 life and a $3 one read $10, H2)."""
    lives: list[list[dict[str, Any]]] = [[]]
    for s in steps:
        if s.get("chain_prev") == "" and any(is_link(t.get("chain_hash")) for t in lives[-1]):
            lives.append([])
        lives[-1].append(s)
    return lives


def _over_lives(lives: list[list[dict[str, Any]]], column: str) -> Any:
    """A running total's end, summed over a run id's lives."""
    return sum(max(s[column] for s in life) for life in lives)


def format_trace(run_id: str, steps: Sequence[dict[str, Any]]) -> str:
    """The run's story: a summary (how it ended, totals) and one line per decision."""
    first, last = steps[0], steps[-1]
    stops = [s for s in steps if s["outcome"] == "stop"]
    same_day = first["decided_at"].date() == last["decided_at"].date()
    when = (
        f"{first['decided_at']:%Y-%m-%d %H:%M:%S} -> {last['decided_at']:%H:%M:%S} UTC"
        if same_day
        else f"{cell(first['decided_at'])} -> {cell(last['decided_at'])} UTC"
    )
    if stops:
        stop = stops[0]
        ended = (
            f"STOPPED at step {steps.index(stop) + 1}: {stop['reason']}"
            f" ({_handoff(stop)}, task={stop['task_id']})"
            + (f", fallback {stop['fallback']}" if stop["fallback"] else "")
        )
        # a stop ends one handoff, not the run: a run that went on (a released kill, the
        # planner's next handoff) read as ended at its first stop
        after = steps.index(stop) + 1
        allowed = [i for i, s in enumerate(steps[after:], after + 1) if s["outcome"] == "allow"]
        if allowed:
            ended += f"; went on: {len(allowed)} allowed after it, the last at step {allowed[-1]}"
    else:
        ended = f"last decision: {last['outcome']} ({last['reason']})"
    policies = sorted({s["policy_version"] for s in steps if s["policy_version"]})
    lives = _lives(steps)
    broken = _chain_break(steps)
    # a run whose worker chained it (an audit from before chains, 0004, has no links at all)
    chained = any(is_link(s.get("chain_hash")) for s in steps)
    lines = [
        f"Run {run_id}  tenant {first['tenant']}  {len(steps)} decisions  {when}",
        *(
            [
                f"WARNING: this run's chain is broken ({broken}): rows were deleted, inserted "
                f"or altered, and what follows is not what the workers decided; `baton audit "
                f"verify --run {run_id}` names them"
            ]
            if broken is not None
            else []
        ),
        *(
            f"WARNING: step {i}: {s['conflict'].describe(_shown_id)}"
            for i, s in enumerate(steps, 1)
            if "conflict" in s
        ),
        *(
            f"WARNING: step {i}: {s['outcome']} without a chain_hash: no worker publishes one "
            "(it chains every decision that changes a run); a record someone else wrote"
            if not s.get("chain_hash")
            else f"WARNING: step {i}: {s['outcome']} whose chain_hash "
            f"'{_shown_id(str(s['chain_hash']))}' is no worker's link (32 lowercase hex); "
            "a record someone else wrote"
            for i, s in enumerate(steps, 1)
            if chained
            and not is_link(s.get("chain_hash"))
            and s["outcome"] not in UNCHAINED_OUTCOMES
        ),
        ended,
        f"handoffs {_over_lives(lives, 'handoff_count')}  "
        f"max depth {max(s['depth'] for s in steps)}  "
        f"spent {_usd(_over_lives(lives, 'spent_usd'))}  "
        f"tool calls {_over_lives(lives, 'tool_calls')}  "
        f"policy {', '.join(policies) or '-'}"
        + (f"  ({len(lives)} lives of this run id, totals summed)" if len(lives) > 1 else ""),
        "",
    ]
    rows = []
    for i, s in enumerate(steps, 1):
        t = s["decided_at"]
        rows.append(
            [
                i,
                f"{t:%H:%M:%S}.{t.microsecond // 1000:03d}" if same_day else cell(t),
                s["phase"],
                s["outcome"].upper() if s["outcome"] == "stop" else s["outcome"],
                s["reason"],
                _handoff(s),
                s["task_id"] or "",
                s["owner"] or "",
                s["depth"],
                s["handoff_count"],
                _money(s["spent_usd"]),
                _approval(s),
                _note(s),
            ]
        )
    columns = [
        "#",
        "time",
        "phase",
        "outcome",
        "reason",
        "handoff",
        "task",
        "owner",
        "depth",
        "handoffs",
        "spent_usd",
        "approval",
        "note",
    ]
    # drop columns that are empty on every line (e.g. no approvals in this run)
    keep = [i for i, c in enumerate(columns) if any(r[i] not in ("", None) for r in rows)]
    table = render_table(
        [columns[i] for i in keep], [[r[i] for i in keep] for r in rows], right=("spent_usd",)
    )
    return "\n".join(shown(line) for line in lines) + "\n" + table
