"""`baton replay`'s report as printed: a table for people, JSON for tools."""

from __future__ import annotations

import itertools

import orjson

from baton.cli.signer import shown
from baton.cli.wording import counted
from baton.processors.chain_links import shown_id
from baton.processors.compiled import core_build
from baton.processors.replay import ReplayReport, RunOutcome
from baton.schemas.policy import Policy
from baton.sinks.render import printable_json, shown_cut

__all__ = ["_json", "_table"]

#: changed runs listed in the table (all of them in --format json)
_SHOWN = 20
#: a partial run's reason as shown (it may quote a forged row's decision id: any length)
_WHY_CHARS = 400
_OUTCOME_CHARS = 120  # of an outcome:reason shown (the engine's are under 60)


def _change_line(run: RunOutcome) -> str:
    c = run.first_change
    assert c is not None
    at = f"{c.decided_at:%Y-%m-%d %H:%M:%S}"
    handoff = shown(c.handoff)
    was, got = _outcome(c.recorded), _outcome(c.replayed)
    return f"  {shown_id(run.run_id)}  step {c.step}  {at}  {handoff}: {was} → {got}"


def _outcome(text: str) -> str:
    """An ``outcome:reason`` cut and escaped (a forged audit row's reason may be any text)."""
    return shown_cut(text, _OUTCOME_CHARS)


def _table(report: ReplayReport, policy: Policy, path: str, label: str, seconds: float) -> str:
    rate = report.decisions / seconds if seconds > 0 else 0.0
    lines = [
        f"replayed {counted(len(report.runs), 'run')}, {counted(report.decisions, 'decision')} "
        f"from {label} "
        f"under {path} (policy {policy.version}) in {seconds:.2f} s ({rate:,.0f} decisions/s)"
    ]
    unfaithful = report.unfaithful_runs
    if unfaithful:
        lines.append(f"as recorded: NOT reproduced in {counted(len(unfaithful), 'run')}:")
        for run in unfaithful[:_SHOWN]:
            step, was, got = run.unfaithful[0]
            was, got = _outcome(was), _outcome(got)
            lines.append(f"  {shown_id(run.run_id)}  step {step}: recorded {was}, replayed {got}")
    else:
        lines.append(f"as recorded: all {report.decisions:,} decisions reproduced exactly")
    changed = report.changed_runs
    if not changed:
        lines.append("under the new policy: nothing changes")
    else:
        total = sum(r.changed for r in changed)
        lines.append(
            f"under the new policy: {counted(len(changed), 'run')} change, "
            f"{counted(total, 'decision')}:"
        )
        transitions = [(_outcome(t), n) for t, n in report.transitions.most_common()]
        width = max(len(t) for t, _ in transitions)
        for transition, n in transitions:
            lines.append(f"  {transition:<{width}}  ×{n:,}")
        lines.append(
            f"spend: ${report.saved_usd:,.2f} reported for handoffs the new policy stops "
            f"(would have been saved); ${report.blocked_estimate_usd:,.2f} of their estimates"
        )
        lines.append("first difference of each changed run:")
        lines += [_change_line(r) for r in changed[:_SHOWN]]
        if len(changed) > _SHOWN:
            lines.append(f"  ... and {len(changed) - _SHOWN:,} more (--format json lists all)")
    if report.partial:
        lines.append(f"partial, not replayed: {counted(len(report.partial), 'run')}")
        # the broken runs first: the exit message names the first as "listed above"
        broken = [r for r in dict.fromkeys(report.broken) if r in report.partial][:_SHOWN]
        first = set(broken)
        others = (r for r in report.partial if r not in first)
        for run_id in [*broken, *itertools.islice(others, _SHOWN - len(broken))]:
            why = report.partial[run_id]
            lines.append(f"  {shown_id(run_id)}: {shown(why[:_WHY_CHARS])}")
        if len(report.partial) > _SHOWN:
            lines.append(
                f"  ... and {len(report.partial) - _SHOWN:,} more (--format json lists all)"
            )
    return "\n".join(lines)


def _json(
    report: ReplayReport, policy: Policy, policies: dict[str, Policy], seconds: float
) -> bytes:
    doc = {
        "policy_version": policy.version,
        "recorded_policies": sorted(policies),
        "runs": len(report.runs),
        "decisions": report.decisions,
        "seconds": round(seconds, 3),
        # compiled (mypyc: `pip install .` where gcc is found) or interpreted, docs/replay.md
        "core": core_build(),
        "faithful": not report.unfaithful_runs,
        "unfaithful": {r.run_id: r.unfaithful for r in report.unfaithful_runs},
        "changed_runs": len(report.changed_runs),
        "changed_decisions": sum(r.changed for r in report.runs),
        "transitions": dict(report.transitions.most_common()),
        "saved_usd": round(report.saved_usd, 6),
        "blocked_estimate_usd": round(report.blocked_estimate_usd, 6),
        "changes": [
            {
                "run_id": r.run_id,
                "changed": r.changed,
                "first_step": r.first_change.step if r.first_change else None,
                "at": r.first_change.decided_at if r.first_change else None,
                "request_id": r.first_change.request_id if r.first_change else None,
                "handoff": r.first_change.handoff if r.first_change else None,
                "recorded": r.first_change.recorded if r.first_change else None,
                "replayed": r.first_change.replayed if r.first_change else None,
                "saved_usd": round(r.saved_usd, 6),
            }
            for r in report.changed_runs
        ],
        "partial": report.partial,
        "broken": report.broken,
    }
    return printable_lines(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def printable_lines(text: bytes) -> bytes:
    """Indented JSON with a run id's C1 controls, bidi overrides and line separators as
    ``\\u`` escapes (orjson escapes C0 only: H2, session 27, a client's run id repainted the
    operator's terminal); its raw newlines are the indentation's alone."""
    if text.isascii():
        return text
    return "\n".join(printable_json(ln) for ln in text.decode().split("\n")).encode()
