"""The demo's script: plays the seed's scenarios through the client SDK and prints a transcript.

Everything goes through the client SDK (``baton.streams.sdk``) exactly as an orchestrator
would use it; each scenario states what Baton must decide and a difference is recorded in
``Demo.problems`` (the command exits 1 naming them).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import click

from baton.cli.demo_stops import SEED_RUN, StopsReader
from baton.cli.wording import counted
from baton.schemas.decision import Decision, Fallback, Outcome, Reason
from baton.schemas.errors import BatonError
from baton.schemas.events import HandoffCompleted, HandoffRequested
from baton.streams.sdk import ApproverClient, AsyncGovernanceClient, OperatorClient

__all__ = ["SEED_RUN", "Demo", "StopsReader", "replay_scene"]

_STYLE = {
    Outcome.ALLOW: "green",
    Outcome.STOP: "red",
    Outcome.APPROVAL_REQUIRED: "yellow",
    Outcome.RECORDED: "cyan",
}


class Demo:
    """Plays the scenarios with one asyncio client, an approver and an operator."""

    def __init__(
        self,
        gov: AsyncGovernanceClient,
        approver: ApproverClient,
        operator: OperatorClient,
        stops: StopsReader,
        run_prefix: str,
        echo: Callable[[str], None] = click.echo,
    ) -> None:
        self.gov, self.approver, self.operator, self.stops = gov, approver, operator, stops
        self.prefix = run_prefix
        self.echo = echo
        self.problems: list[str] = []
        #: decision_id -> decision, of every decision the demo was given (the audit must agree)
        self.seen: dict[str, Decision] = {}
        self._n = 0

    # ------------------------------------------------------------------ transcript helpers
    def _handoff(
        self,
        run: str,
        giver: str,
        taker: str,
        task: str,
        parent: str | None = None,
        action: str | None = None,
    ) -> HandoffRequested:
        self._n += 1
        return HandoffRequested(
            request_id=f"{run}:h{self._n}",
            run_id=run,
            task_id=task,
            parent_task_id=parent,
            from_agent=giver,
            to_agent=taker,
            action=action,
            event_time=datetime.now(UTC),
        )

    def _show(self, d: Decision, what: str | None = None) -> None:
        self.seen[d.decision_id] = d
        if what:
            self.echo(f"  → {what}")
        outcome = click.style(f"{d.outcome.upper():<17}", fg=_STYLE.get(d.outcome), bold=True)
        extra = f"  fallback={d.fallback}" if d.fallback else ""
        if d.approval_id and d.outcome == Outcome.APPROVAL_REQUIRED:
            extra += f"  approval_id={d.approval_id}"
        if d.approver:
            extra += f"  by={d.approver}"
        self.echo(
            f"      {d.phase:<12} {outcome} {d.reason:<24} owner={d.owner or '-'} "
            f"depth={d.depth} handoffs={d.handoff_count} spent=${d.spent_usd:.2f}{extra}"
        )

    async def _check(self, h: HandoffRequested) -> Decision:
        d = await self.gov.check(h)
        self._show(
            d,
            f"{h.from_agent} → {h.to_agent}  task={h.task_id}"
            + (f"  action={h.action}" if h.action else ""),
        )
        return d

    def _expect(
        self, scenario: str, d: Decision, outcome: Outcome, reason: str, **fields: object
    ) -> None:
        got = {"outcome": d.outcome, "reason": d.reason, **{k: getattr(d, k) for k in fields}}
        want = {"outcome": outcome, "reason": reason, **fields}
        if got != want:
            diff = ", ".join(
                f"{k}={got[k]!s} (expected {want[k]!s})" for k in want if got[k] != want[k]
            )
            self.problems.append(f"{scenario}: {d.request_id}: {diff}")

    def _title(self, text: str) -> None:
        self.echo("")
        head = f"── {text} "  # a title past the 78 columns still ends in a rule
        self.echo(click.style(head + "─" * max(3, 78 - len(head)), bold=True))

    async def _alerts(self, run_id: str, scenario: str) -> None:
        """Print the alerter's lines for the stops Baton decided in ``run_id`` (waits for them)."""
        expected = sum(
            1
            for d in self.seen.values()
            if d.run_id == run_id and d.is_stop and d.reason != Reason.GOVERNANCE_UNAVAILABLE
        )
        if expected and not await self.stops.wait(expected, run_id):
            self.problems.append(
                f"{scenario}: expected {expected} stop alert(s) on gov.stops, "
                f"got {self.stops.count(run_id)}"
            )
        for line in self.stops.alert_lines():
            self.echo(f"  alert: {line}")

    def _verdict(self, before: int) -> None:
        if len(self.problems) == before:
            self.echo(click.style("  ✔ decided as expected", fg="green"))
        else:
            for problem in self.problems[before:]:
                self.echo(click.style(f"  ✘ {problem}", fg="red"))

    # ------------------------------------------------------------------ scenarios
    async def ownership_conflict(self) -> None:
        scenario, before = "ownership conflict", len(self.problems)
        run = SEED_RUN  # the seed's own example, so `baton trace run_742` tells its story
        self._title(f"1. Ownership conflict on refund_check (run {run})")
        first = await self._check(self._handoff(run, "planner", "billing_agent", "refund_check"))
        second = await self._check(self._handoff(run, "planner", "researcher", "refund_check"))
        self._expect(scenario, first, Outcome.ALLOW, Reason.OK, owner="billing_agent")
        self._expect(
            scenario,
            second,
            Outcome.STOP,
            Reason.OWNERSHIP_CONFLICT,
            owner="billing_agent",
            fallback=Fallback.SINGLE_AGENT,
        )
        self.echo(
            "  orchestrator: refund_check stays with billing_agent; the planner goes on "
            "alone (single_agent)"
        )
        await self._alerts(run, scenario)
        self._verdict(before)

    async def handoff_budget(self) -> None:
        scenario, before = "handoff budget", len(self.problems)
        run = f"{self.prefix}budget"
        self._title(f"2. Handoff budget: max_handoffs 8, the 9th is stopped (run {run})")
        handoffs = [
            self._handoff(run, "planner", "researcher", f"research_{i}") for i in range(1, 10)
        ]
        # nine sub-agents at once: the client publishes them in call order
        decisions = await asyncio.gather(*(self.gov.check(h) for h in handoffs))
        for h, d in zip(handoffs, decisions, strict=True):
            self._show(d, f"{h.from_agent} → {h.to_agent}  task={h.task_id}")
        for i, d in enumerate(decisions[:8], start=1):
            self._expect(scenario, d, Outcome.ALLOW, Reason.OK, handoff_count=i)
        self._expect(
            scenario,
            decisions[8],
            Outcome.STOP,
            Reason.HANDOFF_BUDGET_EXCEEDED,
            fallback=Fallback.SINGLE_AGENT,
        )
        self.echo("  orchestrator: fallback single_agent, the planner writes research_9 itself")
        await self._alerts(run, scenario)
        self._verdict(before)

    async def managed_handoff(self) -> None:
        scenario, before = "managed handoff", len(self.problems)
        run = f"{self.prefix}managed"
        self._title(
            f"3. A managed handoff: pre_handoff check, work, post_handoff report (run {run})"
        )
        spent = 0.0
        for giver, taker, task, parent, cost, tools, depth in (
            ("planner", "researcher", "research", None, 2.5, 4, 1),
            ("researcher", "writer", "summary", "research", 1.25, 2, 2),
        ):
            h = self._handoff(run, giver, taker, task, parent)
            pre = await self._check(h)
            self._expect(scenario, pre, Outcome.ALLOW, Reason.OK, depth=depth, owner=taker)
            spent += cost
            post = await self.gov.report(
                HandoffCompleted(
                    request_id=h.request_id,
                    run_id=run,
                    task_id=task,
                    agent=taker,
                    cost_usd=cost,
                    tool_calls=tools,
                    event_time=datetime.now(UTC),
                )
            )
            self._show(post, f"{taker} done: cost ${cost:.2f}, {tools} tool calls")
            self._expect(scenario, post, Outcome.RECORDED, Reason.WITHIN_BUDGET, spent_usd=spent)
        await self.gov.finish(run)
        await self._alerts(run, scenario)
        self._verdict(before)

    async def approval(self) -> None:
        scenario, before = "approval", len(self.problems)
        run = f"{self.prefix}refund"
        self._title(f"4. Approval: billing.refund.create needs an approver (run {run})")
        pending = await self._check(
            self._handoff(
                run, "planner", "billing_agent", "refund_create", action="billing.refund.create"
            )
        )
        self._expect(scenario, pending, Outcome.APPROVAL_REQUIRED, Reason.APPROVAL_PENDING)
        if pending.outcome == Outcome.APPROVAL_REQUIRED:
            self.echo("  approver finance_lead grants it")
            await asyncio.to_thread(
                self.approver.grant,
                pending,
                approver="finance_lead",
                comment="refund within policy",
            )
            granted = await self.gov.wait_for_approval(pending)
            self._show(granted)
            self._expect(
                scenario, granted, Outcome.ALLOW, Reason.APPROVAL_GRANTED, approver="finance_lead"
            )
        await self._alerts(run, scenario)
        self._verdict(before)

    async def kill_switch(self) -> None:
        scenario, before = "kill switch", len(self.problems)
        run = f"{self.prefix}killed"
        self._title(f"5. Kill switch: an operator stops a run, then releases it (run {run})")
        d = await self._check(self._handoff(run, "planner", "researcher", "research"))
        self._expect(scenario, d, Outcome.ALLOW, Reason.OK)
        self.echo(f"  operator oncall: baton kill --run {run}")
        await self._switch(
            scenario, self.operator.kill, run_id=run, operator="oncall", reason="runaway spend"
        )
        d = await self._check(self._handoff(run, "planner", "writer", "draft"))
        self._expect(scenario, d, Outcome.STOP, Reason.KILLED)
        await self._alerts(run, scenario)
        self.echo(f"  operator oncall: baton kill --run {run} --release")
        await self._switch(scenario, self.operator.release, run_id=run, operator="oncall")
        d = await self._check(self._handoff(run, "planner", "writer", "draft_2"))
        self._expect(scenario, d, Outcome.ALLOW, Reason.OK)
        self._verdict(before)

    async def _switch(
        self, scenario: str, action: Callable[..., Decision | None], **kwargs: object
    ) -> None:
        try:
            record = await asyncio.to_thread(action, **kwargs)
        except BatonError as exc:  # e.g. no worker confirmed it: a difference, not a crash
            self.problems.append(f"{scenario}: {exc}")
            return
        if record is not None:
            self._show(record)

    async def burst(self, runs: int, handoffs: int, max_handoffs: int = 8) -> float:
        """``handoffs`` checks over ``runs`` runs, all in flight at once; returns seconds."""
        scenario, before = "burst", len(self.problems)
        self._title(f"6. Burst: {handoffs:,} handoffs across {runs:,} runs, all in flight")
        per_run = [handoffs // runs + (1 if i < handoffs % runs else 0) for i in range(runs)]
        requests = []
        for i, n in enumerate(per_run):
            run = f"{self.prefix}burst_{i:04d}"
            agents = ("researcher", "writer")
            requests += [
                self._handoff(run, "planner", agents[k % 2], f"task_{k}") for k in range(1, n + 1)
            ]
        done = 0

        async def one(h: HandoffRequested) -> Decision:
            nonlocal done
            d = await self.gov.check(h)
            done += 1
            return d

        started = time.monotonic()
        progress = asyncio.create_task(self._progress(lambda: done, len(requests), started))
        decisions = await asyncio.gather(*(one(h) for h in requests))
        took = time.monotonic() - started
        progress.cancel()
        self._progress_line(done, len(requests), took, final=True)
        counts: Counter[tuple[str, str]] = Counter()
        position: Counter[str] = Counter()
        for h, d in zip(requests, decisions, strict=True):
            self.seen[d.decision_id] = d
            counts[(d.outcome, d.reason)] += 1
            position[h.run_id] += 1
            if position[h.run_id] <= max_handoffs:
                self._expect(scenario, d, Outcome.ALLOW, Reason.OK)
            else:
                self._expect(scenario, d, Outcome.STOP, Reason.HANDOFF_BUDGET_EXCEEDED)
        for (outcome, reason), n in counts.most_common():
            self.echo(f"  {n:>6,} × {outcome} {reason}")
        latency_note = f"{len(requests) / took:,.0f} checks/s from one client"
        self.echo(f"  {len(requests):,} decisions in {took:.1f} s ({latency_note})")
        expected_stops = sum(
            1 for d in decisions if d.is_stop and d.reason != Reason.GOVERNANCE_UNAVAILABLE
        )
        if expected_stops and not await self.stops.wait(expected_stops, None, timeout=20):
            self.problems.append(f"burst: {self.stops.count()} stop alerts on gov.stops")
        for line in self.stops.alert_lines(final=True):
            self.echo(f"  alert: {line}")
        if len(self.problems) - before > 5:  # one line per handoff would drown the summary
            more = len(self.problems) - before - 5
            self.problems[before + 5 :] = [f"burst: … and {more} more differences"]
        self._verdict(before)
        return took

    async def _progress(self, done: Callable[[], int], total: int, started: float) -> None:
        while True:
            await asyncio.sleep(0.1 if sys.stderr.isatty() else 1.0)
            self._progress_line(done(), total, time.monotonic() - started)

    @staticmethod
    def _progress_line(done: int, total: int, took: float, final: bool = False) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        bar = "█" * filled + "░" * (width - filled)
        rate = done / took if took > 0 else 0.0
        text = f"  [{bar}] {done:,}/{total:,} decided  {rate:,.0f}/s"
        if sys.stderr.isatty():
            click.echo(f"\r{text}", err=True, nl=final)
        elif final or done:
            click.echo(text, err=True)


def replay_scene(
    dsn: str, since: datetime, folder: Path, stack_dir: Path | None, *, commands: bool = True
) -> str | None:
    """The what-if scene: the demo's recorded history decided again under a stricter
    max_handoffs (half the recorded one), as `baton replay` does; a problem, or None.
    ``stack_dir``: the data dir of the demo's own stack (its chain key; None: the stack behind
    ``dsn``, cli/chain_keys). ``commands``: show the `baton replay` line (only for a stack
    that stays)."""
    import yaml

    from baton.cli.chain_keys import audit_chain_key
    from baton.cli.options import build_settings
    from baton.processors.replay_pool import replay_parallel
    from baton.schemas.policy import parse_policy
    from baton.sinks.clickhouse import connect
    from baton.sinks.replay_source import ReplayScope, read_policies, read_runs_rows

    client = connect(dsn)
    try:
        policies, _ = read_policies(client)
        rows = list(read_runs_rows(client, ReplayScope(since=since)))
    finally:
        client.close()
    versions = Counter(row[5] for row in rows if row[5] in policies)
    if not versions:
        return "replay: the audit holds no recorded policy for the demo's decisions"
    recorded = policies[versions.most_common(1)[0][0]]
    doc = recorded.model_dump(mode="json")
    limit = doc["multi_agent"].get("max_handoffs") or 8
    doc["multi_agent"]["max_handoffs"] = max(1, limit // 2)
    path = folder / "stricter.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    stricter = parse_policy(path.read_text(), str(path))
    chain_key = audit_chain_key(build_settings(), dsn, stack_dir)
    report = replay_parallel(rows, stricter, policies, chain_key)
    stopped = [
        r for r in report.changed_runs if r.first_change and "stop:" in r.first_change.replayed
    ]
    if commands:
        source = f"--dsn {dsn}" if stack_dir is None else f"--data-dir {stack_dir}"
        click.echo(f"  baton replay --policy {path} --since {since:%Y-%m-%dT%H:%M:%SZ} {source}")
    else:
        click.echo("  what `baton replay --policy FILE` says of it:")
    click.echo(
        f"  replayed {counted(len(report.runs), 'run')}, {counted(report.decisions, 'decision')}: "
        "under the "
        f"recorded policy every one is reproduced exactly"
        if not report.unfaithful_runs
        else f"  {counted(len(report.unfaithful_runs), 'run')} NOT reproduced under the recorded "
        "policy"
    )
    click.echo(
        f"  this stricter policy (max_handoffs {limit} -> {max(1, limit // 2)}) would have "
        f"stopped {len(stopped):,} runs earlier:"
    )
    for transition, n in report.transitions.most_common(3):
        click.echo(f"    {transition}  ×{n:,}")
    if report.saved_usd:
        click.echo(f"  ${report.saved_usd:,.2f} of reported spend would not have been spent")
    if report.unfaithful_runs:
        unkeyed = (
            " (no chain key found for its audit: play the demo in the folder of its `baton up`, "
            "or set BATON_AUDIT_CHAIN_KEY)"
            if not chain_key
            else ""
        )
        runs = counted(len(report.unfaithful_runs), "run")
        return f"replay: {runs} not reproduced as recorded{unkeyed}"
    return None
