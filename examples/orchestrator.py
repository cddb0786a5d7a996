"""A realistic multi-agent orchestrator governed by Baton: planner -> researchers -> writer.

Many runs go concurrently (asyncio). Every delegation is checked with Baton first and the
orchestrator obeys the answer:

* ``allow``            -> the sub-agent does the task; its cost and tool calls are reported;
* ``approval_required`` -> the handoff waits for an approver (the ``approver`` task below
                          plays a finance lead who grants refunds after a short look);
* ``stop``             -> the run switches to the decision's fallback mode:
                          ``single_agent``: the agent that wanted to delegate finishes the run
                          alone (the rest of the plan is dropped);
                          ``constrained``: the plan goes on, but every step is done by the
                          agent holding it, without further delegation.

Runs are varied on purpose: parallel research (sub-agents racing for the shared budget),
a writer that delegates fact checks (depth 2), some refunds that need approval, some greedy
runs that exceed ``max_handoffs``, some that would bring in a fifth agent.

    baton up                                    # in another terminal: prints bootstrap=HOST:PORT
    python examples/orchestrator.py --bootstrap HOST:PORT --runs 50

It obeys policy.example.yaml (the refunds' approver, finance_lead, is one of its
``finance_*`` approvers) as well as the seed policy. Under a policy with ``approval.keys``
the approver signs its grants: ``--approver-key finance_lead.key`` (``baton keys new
finance_lead``). A grant the workers refuse (unsigned, unknown approver, a bad signature)
ends the example at once, exit 2, naming the reason: the runs waiting for it would only
have waited until their approvals expired.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from baton.schemas.decision import Decision, Fallback, Outcome
from baton.schemas.errors import BatonError
from baton.schemas.events import HandoffCompleted, HandoffRequested
from baton.streams.client import ApproverClient, AsyncGovernanceClient


@dataclass
class Run:
    run_id: str
    rng: random.Random
    #: None while the run may delegate; the fallback it switched to after a stop
    mode: Fallback | None = None
    stopped_by: str | None = None
    spent_usd: float = 0.0
    handoffs: int = 0
    log: list[str] = field(default_factory=list)

    def switch(self, decision: Decision) -> None:
        if self.mode is None:
            self.mode = Fallback(decision.fallback or Fallback.SINGLE_AGENT)
            self.stopped_by = decision.reason
            self.log.append(f"stop {decision.reason} -> {self.mode}")


@dataclass
class Stats:
    decisions: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    approvals: int = 0
    spent_usd: float = 0.0


class Orchestrator:
    def __init__(
        self,
        gov: AsyncGovernanceClient,
        approvals: asyncio.Queue[Decision],
        approval_timeout: float,
    ) -> None:
        self.gov = gov
        self.approvals = approvals
        #: an approval not answered within it is a stop (the SDK's governance_unavailable)
        self.approval_timeout = approval_timeout
        self.stats = Stats()

    # ------------------------------------------------------------------ one handoff
    async def delegate(
        self,
        run: Run,
        giver: str,
        taker: str,
        task: str,
        parent: str | None = None,
        action: str | None = None,
    ) -> bool:
        """Hand ``task`` from ``giver`` to ``taker`` if Baton allows; else do it in ``giver``."""
        if run.mode is not None:  # no more delegation in this run
            await self.work(run, giver, task)
            return False
        run.handoffs += 1
        handoff = HandoffRequested(
            request_id=f"{run.run_id}:{run.handoffs}",
            run_id=run.run_id,
            task_id=task,
            parent_task_id=parent,
            from_agent=giver,
            to_agent=taker,
            action=action,
            estimated_usd=round(run.rng.uniform(0.5, 2.0), 2),
            event_time=datetime.now(UTC),
        )
        started = time.perf_counter()
        decision = await self.gov.check(handoff)
        self.stats.latencies.append(time.perf_counter() - started)
        if decision.outcome == Outcome.APPROVAL_REQUIRED:
            self.stats.approvals += 1
            await self.approvals.put(decision)
            decision = await self.gov.wait_for_approval(decision, self.approval_timeout)
        self.stats.decisions[f"{decision.outcome}:{decision.reason}"] += 1
        if decision.outcome != Outcome.ALLOW:
            run.switch(decision)
            await self.work(run, giver, task)
            return False
        cost, tool_calls = await self.work(run, taker, task)
        record = await self.gov.report(
            HandoffCompleted(
                request_id=handoff.request_id,
                run_id=run.run_id,
                task_id=task,
                agent=taker,
                cost_usd=cost,
                tool_calls=tool_calls,
                event_time=datetime.now(UTC),
            )
        )
        self.stats.decisions[f"{record.outcome}:{record.reason}"] += 1
        if record.outcome == Outcome.STOP:  # the shared budget is now spent
            run.switch(record)
        return True

    async def work(self, run: Run, agent: str, task: str) -> tuple[float, int]:
        """Stand-in for an LLM agent doing ``task``: takes a moment, costs money and tools."""
        await asyncio.sleep(run.rng.uniform(0.005, 0.03))
        cost, tool_calls = round(run.rng.uniform(1.0, 7.0), 2), run.rng.randint(1, 8)
        run.spent_usd += cost
        run.log.append(f"{agent} did {task} (${cost:.2f}, {tool_calls} tools)")
        return cost, tool_calls

    # ------------------------------------------------------------------ one run
    async def run(self, run: Run) -> None:
        rng = run.rng
        greedy = rng.random() < 0.15  # asks for more research than max_handoffs allows
        research = [
            f"research_{i}" for i in range(rng.randint(9, 11) if greedy else rng.randint(2, 4))
        ]
        # parallel sub-agents: Baton sees all of them, in order, against one shared budget
        await asyncio.gather(
            *(self.delegate(run, "planner", "researcher", task) for task in research)
        )
        if run.mode == Fallback.SINGLE_AGENT:
            await self.work(run, "planner", "final_answer")  # the planner finishes alone
            return await self.finish(run)
        await self.delegate(run, "planner", "writer", "draft")
        await self.delegate(run, "writer", "researcher", "fact_check", parent="draft")
        if rng.random() < 0.2:  # a refund: needs approval under the seed policy
            await self.delegate(run, "planner", "billing_agent", "refund_check")
            # a task of its own, not a subtask of refund_check: billing_agent owns that one, and
            # handing billing_agent a subtask of its own task is a delegation cycle
            await self.delegate(
                run, "planner", "billing_agent", "refund_create", action="billing.refund.create"
            )
            if rng.random() < 0.5:  # a fifth agent: over max_agents_per_run
                await self.delegate(run, "writer", "legal_reviewer", "legal_review", parent="draft")
        if run.mode == Fallback.SINGLE_AGENT:
            await self.work(run, "planner", "final_answer")
        else:
            await self.delegate(run, "planner", "writer", "final_edit")  # writer owns draft
        await self.finish(run)

    async def finish(self, run: Run) -> None:
        await self.gov.finish(run.run_id)
        self.stats.spent_usd += run.spent_usd
        self.stats.fallbacks[str(run.mode or "none")] += 1


class GrantRefused(Exception):
    """The workers did not count the approver's grant: nothing it waits for will be answered."""


async def approver(
    client: ApproverClient, approvals: asyncio.Queue[Decision], name: str, timeout: float
) -> None:
    """A finance lead who looks at each refund for a moment and grants it, and checks that the
    workers counted the grant (one they refused leaves the run waiting until it expires)."""
    while True:
        pending = await approvals.get()
        await asyncio.sleep(0.05)
        record = await asyncio.to_thread(
            client.grant,
            pending,
            approver=name,
            comment="refund within policy",
            wait=True,
            timeout=timeout,
        )
        if record is None or record.outcome != Outcome.ALLOW:
            reason = f"{record.reason}: {record.detail}" if record else "no record"
            hint = (
                "; the policy lists approval.keys: pass --approver-key FILE (`baton keys new "
                f"{name}`, its public line under multi_agent.approval.keys)"
                if record is not None and record.reason == "approval_unsigned"
                else ""
            )
            raise GrantRefused(
                f"the workers did not count {name}'s grant of {pending.approval_id} ({reason}){hint}"
            )


async def main_async(args: argparse.Namespace) -> int:
    options = {"topic_prefix": args.topic_prefix, "timeout": args.timeout}
    rng = random.Random(args.seed)
    async with AsyncGovernanceClient(args.bootstrap, **options) as gov:
        approvals: asyncio.Queue[Decision] = asyncio.Queue()
        orchestrator = Orchestrator(gov, approvals, args.approval_timeout)
        finance = ApproverClient(
            args.bootstrap, topic_prefix=args.topic_prefix, key_file=args.approver_key
        )
        with finance:
            approving = asyncio.create_task(
                approver(finance, approvals, args.approver, args.timeout)
            )
            prefix = uuid.uuid4().hex[:6]
            runs = [
                Run(f"run_{prefix}_{i:04d}", random.Random(rng.random())) for i in range(args.runs)
            ]
            limit = asyncio.Semaphore(args.concurrency)

            async def one(run: Run) -> None:
                async with limit:
                    await orchestrator.run(run)

            started = time.perf_counter()
            running = asyncio.ensure_future(asyncio.gather(*(one(run) for run in runs)))
            await asyncio.wait((running, approving), return_when=asyncio.FIRST_COMPLETED)
            took = time.perf_counter() - started
            if approving.done():  # the approver failed: the runs it left waiting end too
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
                approving.result()  # raises GrantRefused
            approving.cancel()
    s = orchestrator.stats
    checks = len(s.latencies)
    lat = sorted(s.latencies)
    print(
        f"{len(runs)} runs, {checks} handoff checks in {took:.1f} s "
        f"({checks / took:.0f} checks/s); check latency p50 "
        f"{statistics.median(lat) * 1000:.0f} ms, p99 {lat[int(0.99 * (checks - 1))] * 1000:.0f} ms"
    )
    print(f"approvals granted: {s.approvals}; spend ${s.spent_usd:.2f}")
    print("decisions:", ", ".join(f"{k} {v}" for k, v in s.decisions.most_common()))
    print("runs by fallback mode:", ", ".join(f"{k} {v}" for k, v in s.fallbacks.most_common()))
    if args.verbose:
        for run in runs[:5]:
            print(f"\n{run.run_id}:", *run.log, sep="\n  ")
    unavailable = s.decisions.get("stop:governance_unavailable", 0)
    return 1 if unavailable else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bootstrap", default=None, help="Kafka bootstrap HOST:PORT (default: $BATON_BOOTSTRAP)"
    )
    parser.add_argument("--topic-prefix", default=None, help="default: $BATON_TOPIC_PREFIX")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=200, help="runs in flight at once")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per check")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--approver", default="finance_lead", help="who grants the refunds [finance_lead]"
    )
    parser.add_argument(
        "--approver-key",
        default=None,
        help="the approver's private key file, to sign grants (needed when the policy lists "
        "multi_agent.approval.keys)",
    )
    parser.add_argument(
        "--approval-timeout",
        type=float,
        default=60.0,
        help="seconds a handoff waits for its approval before it counts as a stop [60]",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print a few run logs")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except (BatonError, GrantRefused) as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
