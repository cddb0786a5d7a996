"""``baton demo``: the first thing a new user runs; starts Baton if needed, plays the scenarios,
shows the alerts and closes with the audit from ClickHouse. Exits 1 if anything was decided
other than the seed policy says."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from baton.cli.demo_play import SEED_RUN, replay_scene
from baton.cli.options import FiniteFloatRange

if TYPE_CHECKING:
    from collections.abc import Iterable

    from baton.cli.demo_play import Demo
    from baton.schemas.decision import Decision

from baton.cli.demo_audit import audit_summary, decided_since
from baton.cli.demo_stack import DemoStack, live_stack

__all__ = ["killed_hint", "register"]


async def _play(
    bootstrap: str,
    topic_prefix: str | None,
    timeout: float,
    runs: int,
    burst: int,
    decision_keys: str | None = None,
) -> Demo:
    """The scenes, played by clients that take only decisions ``decision_keys`` signed (the
    demo's own stack's key; None: BATON_DECISION_KEYS, else any)."""
    from baton.cli.demo_play import Demo, StopsReader
    from baton.streams.sdk import ApproverClient, AsyncGovernanceClient, OperatorClient

    options: dict[str, Any] = {
        "topic_prefix": topic_prefix,
        "timeout": timeout,
        "decision_keys": decision_keys,
    }
    run_prefix = f"demo_{uuid.uuid4().hex[:6]}_"
    async with AsyncGovernanceClient(bootstrap, **options) as gov:
        catalog = gov.channel.catalog
        with (
            ApproverClient(bootstrap, **options) as approver,
            OperatorClient(bootstrap, **options) as operator,
        ):
            stops = StopsReader(dict(gov.options.kafka_config), catalog.stops, run_prefix)
            try:
                demo = Demo(gov, approver, operator, stops, run_prefix)
                await demo.ownership_conflict()
                await demo.handoff_budget()
                await demo.managed_handoff()
                await demo.approval()
                await demo.kill_switch()
                if burst:
                    await demo.burst(runs, burst)
            finally:
                stops.close()
    return demo


@click.command("demo")
@click.option(
    "--bootstrap",
    default=None,
    metavar="HOST:PORT",
    help="Kafka of a running `baton up` [default: start Baton for the demo]",
)
@click.option(
    "--sql",
    "sql_url",
    default=None,
    metavar="URL",
    help="its SQL endpoint (the sql=... `baton up` prints), for the audit summary "
    "[default: the started stack's; none with --bootstrap]",
)
@click.option(
    "--topic-prefix",
    default=None,
    help="with --bootstrap: the stack's topic prefix [env BATON_TOPIC_PREFIX]",
)
@click.option(
    "--runs",
    type=click.IntRange(1, 100_000),
    default=300,
    show_default=True,
    help="runs in the burst",
)
@click.option(
    "--burst",
    type=click.IntRange(0, 1_000_000),
    default=3000,
    show_default=True,
    help="handoffs in the burst (0 = no burst)",
)
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0.1, max=3600),  # the SDK's bound (1e308: its ValueError)
    default=20.0,
    show_default=True,
    help="seconds to wait for each decision",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="where the started stack keeps its logs and audit [default: ./.baton with --keep, "
    "else a temp dir]",
)
@click.option("--keep", is_flag=True, help="leave the started stack running afterwards")
def demo_cmd(
    bootstrap: str | None,
    sql_url: str | None,
    topic_prefix: str | None,
    runs: int,
    burst: int,
    timeout: float,
    data_dir: Path | None,
    keep: bool,
) -> None:
    """Play the seed's scenarios against Baton and print what it decides.

    Ownership conflict on refund_check, the 9th handoff over max_handoffs, a managed
    handoff (pre and post records), an approval for billing.refund.create, a kill switch,
    then a burst of thousands of handoffs; the stop alerts; the audit summary from
    ClickHouse. Without --bootstrap it starts `baton up` itself (stopped at the end unless
    --keep). Exit status 1 names every decision that differed from the seed policy.
    """
    os.umask(0o077)  # its stack's files (up.out holds the SQL token) are its user's alone
    stack: DemoStack | None = None
    temp_dir: str | None = None
    started = time.monotonic()
    try:
        if bootstrap is None:
            if data_dir is None and keep:
                # where `baton up` keeps it too: plain `baton sql` / `baton trace` find it
                data_dir = Path(".baton")
            elif data_dir is None:
                temp_dir = tempfile.mkdtemp(prefix="baton-demo-")
                data_dir = Path(temp_dir)
                # the `baton up` of this folder (a user who started it first) is not the
                # one the demo plays against: say so, and how to play against it
                here = live_stack(Path(".baton").resolve())
                if here is not None:
                    click.echo(
                        f"The `baton up` of this folder ({here[0]}) keeps its own history: "
                        f"this demo starts a stack of its own. To play against yours: {here[1]}"
                    )
            stack = DemoStack(data_dir.resolve(), keep)
            click.echo(
                "Starting Baton: embedded Kafka broker, governance worker, audit sink "
                f"(chDB) and alerter in {stack.data_dir} …"
            )
            stack.start()
            bootstrap, sql_url, topic_prefix = stack.bootstrap, sql_url or stack.sql_url, ""
            click.echo(
                f"Baton is up in {time.monotonic() - started:.1f} s: "
                f"bootstrap={bootstrap}" + (f" sql={sql_url}" if sql_url else "")
            )
        else:
            click.echo(f"Using Baton at {bootstrap}")
            from baton.streams.net import check_reachable

            check_reachable(bootstrap)  # a dead port fails now, not after the clients' timeout
        # follow-up commands only for a stack that is still there when the demo ends
        commands = stack is None or keep
        demo_started = datetime.now(UTC)
        keys = None if stack is None else stack.decision_keys()  # its workers sign with it
        demo = asyncio.run(_play(bootstrap, topic_prefix, timeout, runs, burst, keys))
        problems = list(demo.problems)
        click.echo("")
        click.echo(click.style("── Audit (ClickHouse) ".ljust(78, "─"), bold=True))
        if sql_url:
            fresh = decided_since(demo.seen.values(), demo_started)
            problem = audit_summary(sql_url, demo.prefix, fresh, demo_started, commands=commands)
            if problem is None:  # the what-if scene: `baton replay` over what just happened
                click.echo(click.style("\n── What if (baton replay) ".ljust(78, "─"), bold=True))
                folder = stack.data_dir if stack is not None else Path(tempfile.gettempdir())
                own = None if stack is None else stack.data_dir
                problem = replay_scene(sql_url, demo_started, folder, own, commands=commands)
            if problem:
                problems.append(problem)
                click.echo(click.style(f"  ✘ {problem}", fg="red"))
        else:
            click.echo("  skipped: give --sql URL (the sql=... line of `baton up`)")
        click.echo("")
        elapsed = time.monotonic() - started
        if problems:
            click.echo(
                click.style(
                    f"demo: {len(problems)} difference(s) from the seed policy:",
                    fg="red",
                    bold=True,
                ),
                err=True,
            )
            for problem in problems:
                click.echo(f"  - {problem}", err=True)
            unanswered = [d for d in demo.seen.values() if d.reason == "governance_unavailable"]
            if unanswered:
                click.echo(
                    f"{len(unanswered)} request(s) got no decision from Baton: "
                    f"{unanswered[0].detail}",
                    err=True,
                )
            hint = killed_hint(demo.seen.values())
            if hint:
                click.echo(hint, err=True)
            sys.exit(1)
        click.echo(
            click.style(
                f"All scenarios decided as the seed policy says ({elapsed:.0f} s).",
                fg="green",
                bold=True,
            )
        )
        if stack is not None and keep:
            click.echo(f"Next: {_next_commands(stack.data_dir)}")
        elif sql_url and stack is None:
            click.echo(f"Next: baton trace --dsn {sql_url} {SEED_RUN}")
        elif stack is not None:
            click.echo(NOT_KEPT)
    finally:
        if stack is not None:
            if keep and stack.running:
                click.echo(
                    f"The stack keeps running (pid {stack.proc.pid if stack.proc else '?'},"
                    f" data in {stack.data_dir}): bootstrap={stack.bootstrap}"
                    f" sql={stack.sql_url}, recorded in {stack.data_dir / 'stack.json'} for the "
                    f"other commands; stop it with: kill {stack.proc.pid if stack.proc else ''}"
                )
            else:
                stack.stop()
                if temp_dir:
                    shutil.rmtree(temp_dir, ignore_errors=True)


#: the last line of a demo whose stack is stopped: no commands for a stack that is gone
NOT_KEPT = (
    "The stack this demo started is stopped now, so there is nothing left to query. To "
    "explore it afterwards (`baton trace`, `baton sql`, `baton replay`, with the commands "
    "printed), run `baton demo --keep`: it leaves the stack running. The SDK is in "
    "docs/client.md"
)


def _next_commands(data_dir: Path) -> str:
    """`baton trace` of the seed run and `baton replay` of the stricter policy for the kept
    stack: with no flags when it runs in this folder's .baton (the commands find its
    stack.json there), else with --data-dir."""
    from baton.cli.stack_record import is_default_data_dir

    flag = "" if is_default_data_dir(data_dir) else f"--data-dir {data_dir} "
    stricter = ".baton/stricter.yaml" if not flag else str(data_dir / "stricter.yaml")
    return (
        f"baton trace {flag}{SEED_RUN}; baton replay {flag}--policy {stricter} --since 1h "
        "(docs/replay.md)"
    )


def register(cli: click.Group) -> None:
    cli.add_command(demo_cmd)


def killed_hint(decisions: Iterable[Decision]) -> str | None:
    """The line that names the demo's runs a kill switch in force stopped (the README tour's
    on run_742, whose unsigned release a restart does not issue again: H1, session 27 read
    the demo's differences as a Baton defect), or None when none was."""
    killed = sorted({d.run_id for d in decisions if d.reason == "killed"})
    if not killed:
        return None
    return (
        f"{', '.join(killed)}: stopped by a kill switch in force in this stack, not by the "
        "seed policy's rules (an unsigned release is not issued again after a restart); "
        "release it with a signed `baton kill --release`, or play the demo in a --data-dir "
        "of its own"
    )
