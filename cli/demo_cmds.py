"""``baton demo``: the first thing a new user runs; starts Baton if needed, plays the scenarios,
shows the alerts and closes with the audit from ClickHouse. Exits 1 if anything was decided
other than the seed policy says."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import click

from baton.cli.demo_play import SEED_RUN, replay_scene
from baton.schemas.errors import AuditUnavailable, BatonError
from baton.schemas.redact import mask_credentials

if TYPE_CHECKING:
    from baton.cli.demo_play import Demo

__all__ = ["register"]

_READY = re.compile(r"ready bootstrap=(?P<bootstrap>\S+)(?: sql=(?P<sql>\S+))?")


class DemoStack:
    """``baton up`` as a child process in ``data_dir``: started, parsed, stopped (or kept)."""

    def __init__(self, data_dir: Path, keep: bool) -> None:
        self.data_dir = data_dir
        self.keep = keep
        self.proc: subprocess.Popen[bytes] | None = None
        self.bootstrap = ""
        self.sql_url: str | None = None

    def start(self, timeout: float = 120.0) -> None:
        from baton.streams.net import free_port

        self.data_dir.mkdir(parents=True, exist_ok=True)
        out_path, log_path = self.data_dir / "up.out", self.data_dir / "up.log"
        # the scenarios are the seed's: the stack the demo starts runs the seed policy, on
        # un-prefixed topics, whatever this shell's BATON_* variables say
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("BATON_POLICY", "BATON_TOPIC_PREFIX", "BATON_BOOTSTRAP")
        }
        args = [
            sys.executable,
            "-m",
            "baton.cli",
            "up",
            "--data-dir",
            str(self.data_dir),
            "--sql-port",
            str(free_port()),
        ]
        kwargs: dict[str, Any] = {}
        if self.keep:
            kwargs["start_new_session"] = True  # outlives the demo (and its terminal's Ctrl-C)
        elif sys.platform.startswith("linux"):
            from baton.streams.embedded import kill_when_parent_dies

            kwargs["preexec_fn"] = kill_when_parent_dies
        with open(out_path, "wb") as out, open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=log, **kwargs
            )
        deadline = time.monotonic() + timeout
        while True:
            match = _READY.search(out_path.read_text(errors="replace"))
            if match:
                self.bootstrap, self.sql_url = match["bootstrap"], match["sql"]
                return
            code = self.proc.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                what = (
                    f"exited with code {code}"
                    if code is not None
                    else f"was not ready after {timeout:g} s"
                )
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
                raise BatonError(f"`baton up` {what}; its log ({log_path}):\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _sql(url: str, query: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Rows of ``query`` from a ClickHouse HTTP endpoint (``baton up``'s sql=...).

    The DSN's ``user:token@`` goes in as HTTP Basic auth (urllib would read it as part of
    the host name), and never into a message."""
    parts = urlsplit(url)
    netloc = parts.hostname or "127.0.0.1"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    plain = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    headers = {}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    label = mask_credentials(url)
    request = urllib.request.Request(
        plain, data=f"{query} FORMAT JSONEachRow".encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read().decode()
    except urllib.error.HTTPError as exc:
        raise AuditUnavailable(
            f"ClickHouse at {label} refused {query!r}: {exc.read().decode(errors='replace')[:300]}"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise AuditUnavailable(f"cannot reach ClickHouse at {label}: {exc}") from exc
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def _audit_summary(
    url: str, run_prefix: str, expected: int, since: datetime, timeout: float = 60.0
) -> str | None:
    """Print the audit of the demo's runs once the sink has them all; a problem, or None."""
    where = (
        f"(startsWith(run_id, '{run_prefix}') OR (run_id = '{SEED_RUN}' AND decided_at >= "
        f"parseDateTime64BestEffort('{since.isoformat()}', 6)))"
    )
    count_sql = f"SELECT count() AS n FROM governance.decisions FINAL WHERE {where}"
    deadline = time.monotonic() + timeout
    have, last_error = 0, ""
    while time.monotonic() < deadline:
        try:
            have = int(_sql(url, count_sql)[0]["n"])
            last_error = ""
        except (AuditUnavailable, KeyError, IndexError) as exc:  # sink still starting
            last_error = str(exc)
        if have >= expected:
            break
        time.sleep(0.5)
    else:
        return (
            f"audit: ClickHouse has {have} of the {expected} decisions the demo received "
            f"after {timeout:g} s{f' ({last_error})' if last_error else ''}"
        )
    click.echo(
        f"  the sink has all {expected:,} decisions of this demo (governance.decisions at {url})"
    )
    queries = [
        (
            "decisions by outcome and reason",
            f"SELECT outcome, reason, count() AS decisions FROM governance.decisions FINAL "
            f"WHERE {where} GROUP BY outcome, reason ORDER BY decisions DESC",
        ),
        (
            "per run",
            f"SELECT uniqExact(run_id) AS runs, countIf(phase = 'pre_handoff') AS checks, "
            f"countIf(outcome = 'stop') AS stops, countIf(phase = 'approval') AS approvals, "
            f"max(spent_usd) AS max_run_spend_usd FROM governance.decisions FINAL WHERE {where}",
        ),
    ]
    for title, query in queries:
        rows = _sql(url, query)
        click.echo(f'\n  {title}:  baton sql --dsn {url} "{query}"')
        if rows:
            columns = list(rows[0])
            widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
            click.echo("    " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
            for r in rows:
                click.echo(
                    "    "
                    + "  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths, strict=True))
                )
    return None


async def _play(
    bootstrap: str, topic_prefix: str | None, timeout: float, runs: int, burst: int
) -> Demo:
    from baton.cli.demo_play import Demo, StopsReader
    from baton.streams.sdk import ApproverClient, AsyncGovernanceClient, OperatorClient

    options: dict[str, Any] = {"topic_prefix": topic_prefix, "timeout": timeout}
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
    "--runs", type=click.IntRange(min=1), default=300, show_default=True, help="runs in the burst"
)
@click.option(
    "--burst",
    type=click.IntRange(min=0),
    default=3000,
    show_default=True,
    help="handoffs in the burst (0 = no burst)",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
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
        demo_started = datetime.now(UTC)
        demo = asyncio.run(_play(bootstrap, topic_prefix, timeout, runs, burst))
        problems = list(demo.problems)
        click.echo("")
        click.echo(click.style("── Audit (ClickHouse) ".ljust(78, "─"), bold=True))
        if sql_url:
            problem = _audit_summary(sql_url, demo.prefix, len(demo.seen), demo_started)
            if problem is None:  # the what-if scene: `baton replay` over what just happened
                click.echo(click.style("\n── What if (baton replay) ".ljust(78, "─"), bold=True))
                folder = stack.data_dir if stack is not None else Path(tempfile.gettempdir())
                problem = replay_scene(sql_url, demo_started, folder)
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
            sys.exit(1)
        click.echo(
            click.style(
                f"All scenarios decided as the seed policy says ({elapsed:.0f} s).",
                fg="green",
                bold=True,
            )
        )
        if stack is not None and keep:
            click.echo(f"Next: {_trace_command(stack.data_dir)}")
        elif sql_url and stack is None:
            click.echo(f"Next: baton trace --dsn {sql_url} {SEED_RUN}")
        elif stack is not None:
            click.echo(
                "Next: `baton demo --keep` leaves the stack running to explore with "
                "`baton trace` and `baton sql`; the SDK is in docs/client.md"
            )
    finally:
        if stack is not None:
            if keep:
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


def _trace_command(data_dir: Path) -> str:
    """`baton trace` of the seed run for the kept stack: with no flags when it runs in this
    folder's .baton (the commands find its stack.json there), else with --data-dir."""
    from baton.cli.stack_record import is_default_data_dir

    if is_default_data_dir(data_dir):
        return f"baton trace {SEED_RUN}"
    return f"baton trace --data-dir {data_dir} {SEED_RUN}"


def register(cli: click.Group) -> None:
    cli.add_command(demo_cmd)
