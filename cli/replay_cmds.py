"""``baton replay``: what another policy would have decided over the recorded history.

Reads each run's recorded inputs from the audit (``sinks.replay_source``; with --from-kafka
from gov.decisions, ``cli.replay_decisions``), decides them again
with the pure engine under the new policy and under the recorded one (``processors.replay``),
and prints what would change. Exit 0: nothing changes; 1: something does (a CI gate for
policy pull requests); 7: replay cannot answer (nothing replayable, or the recorded policy
did not reproduce the audit); 2, 4, 5: a bad option or policy, Kafka, the audit.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

# the imports below build the policy models and load the replay core: ~85k objects, none of
# them garbage, which the collector's passes walked again and again (~7 % of their CPU, ~0.04
# s of every replay's start while its --jobs processes wait); collecting_rarely collects
# once before it freezes them
_COLLECTING = gc.isenabled()
gc.disable()
try:
    from baton.cli.options import KAFKA_CONNECTION, build_settings, group_variables, read_policy
    from baton.cli.replay_exit import _exit, _unwritten
    from baton.cli.replay_output import _json, _table
    from baton.cli.replay_progress import _Progress
    from baton.cli.stack_record import audit_settings, data_dir_option, stack_settings
    from baton.processors import replay_pool
    from baton.processors.compiled import core_build
    from baton.processors.replay import ReplayReport
    from baton.processors.replay_pool import mark
    from baton.processors.replay_steps import RUN_RETENTION_S, TOMBSTONE_RETENTION_S
    from baton.schemas.errors import BatonError, ConfigError, ReplayFailed
    from baton.schemas.policy import Policy
finally:
    if _COLLECTING:
        gc.enable()

__all__ = ["register", "replay_audit", "replay_cmd"]

_AGE = re.compile(r"(\d{1,7})\s*([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
#: the CPUs this process may run on (a container's share, not the host's count)
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
#: rows below which one process replays: a forkserver pool (the caller runs threads) takes
#: ~0.4 s of a CPU to start; the command's own pool, forked before the audit opens, ~6 ms
_PARALLEL_ROWS = 20_000
_FORKED_PARALLEL_ROWS = 5_000
#: with --jobs N, the last pieces hold at most 1/(N * _SHARE) of the rows left: the pool's
#: pieces in flight when the reading process runs out are small (replay_audit)
_SHARE = 8


def _time(_ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO time (UTC when it names no zone) or an age before now (90s, 30m, 24h, 7d)."""
    if value is None:
        return None
    text = value.strip()
    m = _AGE.fullmatch(text)
    if m:
        try:
            return datetime.now(UTC) - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
        except OverflowError:
            raise click.BadParameter(f"{text[:60]!r} reaches before year 1") from None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"expected an ISO time (2026-11-25T09:00:00Z, 2026-11-25) or an age (30m, 24h, 7d; "
            f"at most 7 digits), got {text[:60]!r}"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@click.command("replay")
@click.option(
    "--policy",
    "policy_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="the policy to try (YAML); the recorded decisions were made under the policies the "
    "audit names (policy_version)",
)
@click.option(
    "--since",
    callback=_time,
    default=None,
    help="runs with a decision at or after this time (or stored since: the sink's clock), each "
    "replayed from its first: ISO (UTC unless a zone is given) or an age (24h)",
)
@click.option("--from", "from_", callback=_time, default=None, help="same as --since")
@click.option("--to", callback=_time, default=None, help="decisions before this time (ISO or age)")
@click.option("--run", "run_id", default=None, help="replay this run only")
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=min(_CPUS, 4),
    show_default=True,
    help="processes deciding runs in parallel (with --from-kafka each reads and decides whole "
    "partitions): the CPUs this process may use, at most 4 (a replay of fewer than 5,000 "
    "decisions uses one)",
)
@click.option("--tenant", default=None, help="replay this tenant's runs only")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for people, json for tools",
)
@click.option(
    "--dsn",
    "--clickhouse-dsn",
    "clickhouse_dsn",
    default=None,
    help="the audit: http(s)://user:pass@host:8123/db, chdb:///abs/dir, or `baton up`'s SQL "
    "endpoint; wins over --data-dir [env BATON_CLICKHOUSE_DSN; for https:// also "
    "BATON_CLICKHOUSE_CA and BATON_CLICKHOUSE_VERIFY; BATON_CLICKHOUSE_TIMEOUT_S]",
)
@click.option(
    "--from-kafka",
    is_flag=True,
    help="read the workers' decisions from gov.decisions instead of the audit (deployments "
    "without one): replayed as the audit's are, under the policies they name, every chain "
    "checked; a partition at a time in each --jobs process (memory: one partition's "
    "decisions a process)",
)
@click.option(
    "--redecide",
    is_flag=True,
    help="with --from-kafka: decide the request and approval topics' records again under "
    "--baseline instead (the control topic applied in order; trusts the topics' order and "
    "stamps: docs/replay.md)",
)
@click.option(
    "--baseline",
    "baseline_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="with --redecide: the policy the workers ran [default: BATON_POLICY, else the seed]",
)
@click.option(
    "--bootstrap",
    default=None,
    help="with --from-kafka: Kafka; wins over --data-dir [env BATON_BOOTSTRAP; also read: "
    f"{group_variables(KAFKA_CONNECTION)}]",
)
@data_dir_option
def replay_cmd(
    policy_path: Path,
    since: datetime | None,
    from_: datetime | None,
    to: datetime | None,
    run_id: str | None,
    jobs: int,
    tenant: str | None,
    fmt: str,
    clickhouse_dsn: str | None,
    from_kafka: bool,
    redecide: bool,
    baseline_path: Path | None,
    bootstrap: str | None,
    data_dir: Path | None,
) -> None:
    """Decide the recorded history again under --policy and show what would change.

    Every run in scope is replayed from its first recorded decision with the same engine the
    workers run, under --policy and, in the same pass, under the policy each decision was
    made under (the proof: zero differences expected). Prints the runs and decisions
    replayed, how many change and how (allow → stop:handoff_budget_exceeded ×412), the first
    differing step of each changed run and the spend that would have been saved. --since
    takes the runs with a decision in the range, each from its first recorded decision; runs
    whose history retention trimmed are partial: named, not replayed.

    Exit 0 when nothing changes, 1 when something does, 7 when replay cannot answer. The
    chain key is BATON_AUDIT_CHAIN_KEY (the workers'), else the `baton up` stack's
    worker/chain.key: with it every field of every chained decision is checked.

    --from-kafka reads the same decisions from gov.decisions instead of the audit (the same
    replay, report and exits; one partition in memory a process at a time); --from-kafka --redecide
    decides the request and approval topics again under --baseline instead (it trusts their
    order and stamps: docs/replay.md).

    The replay core is compiled (mypyc: `pip install .` where gcc is found) or interpreted: the
    JSON's "core" says which ran, and so do this help's last line and `baton doctor`.
    """
    _timeline_checked()  # (its first line: "command")
    if since is not None and from_ is not None:
        raise click.UsageError("--since and --from are the same bound: give one")
    start = since or from_
    if start is not None and to is not None and to <= start:
        raise click.UsageError(f"--to {to.isoformat()} is not after --from {start.isoformat()}")
    if redecide and not from_kafka:
        raise click.UsageError("--redecide re-decides the Kafka topics: give --from-kafka too")
    if baseline_path is not None and not redecide:
        raise click.UsageError("--baseline is the policy --redecide decides under: give both")
    new_policy = read_policy(policy_path)
    began = time.monotonic()
    refused: list[str] = []
    try:
        if redecide:
            from baton.cli.replay_kafka import replay_from_kafka

            settings = stack_settings({"bootstrap": bootstrap}, data_dir)
            baseline = read_policy(baseline_path or settings.policy)
            report, policies = replay_from_kafka(
                settings, new_policy, baseline, start, to, run_id, tenant
            )
            label = f"Kafka at {settings.bootstrap} (baseline {baseline.version})"
        else:
            from baton.cli.chain_keys import audit_chain_key, stack_chain_key, stack_mac_keys

            workers = build_settings()  # the workers' chain key and run retention
            scope = _scope(start, to, run_id, tenant)
            if from_kafka:
                from baton.cli.replay_decisions import replay_decisions

                settings = stack_settings({"bootstrap": bootstrap}, data_dir)
                key = stack_chain_key(workers, bootstrap, data_dir)
                report, policies, refused, label = replay_decisions(
                    settings, scope, new_policy, key, jobs, workers.run_retention_s, _Progress,
                    workers.tombstone_retention_s, stack_mac_keys(workers, bootstrap, data_dir),
                )  # fmt: skip
            else:
                settings = audit_settings(clickhouse_dsn, data_dir)
                key = audit_chain_key(workers, settings.clickhouse_dsn, data_dir)
                report, policies, refused, label = _replay(
                    settings, scope, new_policy, key, jobs, workers.run_retention_s,
                    workers.tombstone_retention_s,
                )  # fmt: skip
    except MemoryError:
        # (malloc refused: `ulimit -v`, a container's address-space limit; --jobs N holds N
        # partitions or pieces at once): a traceback's exit 1 read as "decisions change"
        raise ReplayFailed(
            "out of memory while replaying: replay gave no answer; replay again with fewer "
            "--jobs, a narrower --since or --to, or more memory"
        ) from None
    except (BatonError, click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except Exception as exc:
        # a bug: its traceback's exit 1 would read as the gate's "decisions change"
        traceback.print_exc()
        raise ReplayFailed(
            f"replay failed on an unexpected error ({type(exc).__name__}): replay gave no "
            "answer (a bug: report it with the traceback above)"
        ) from None
    seconds = time.monotonic() - began
    mark("replayed")
    from baton.sinks.render import shown_refusals

    for line in shown_refusals(refused):
        click.echo(f"baton replay: {line}; not used", err=True)
    try:
        if fmt == "json":
            # bytes: orjson's UTF-8 written as it is (18 MB for 55k changed runs: decoding it
            # and encoding it again cost ~0.1 s of CPU at the end, the pool done)
            out = _json(report, new_policy, policies, seconds)
            click.echo(out if hasattr(sys.stdout, "buffer") else out.decode())
        else:
            click.echo(_table(report, new_policy, str(policy_path), label, seconds))
        if sys.stdout is not None:  # (closed: `>&-`; click wrote nothing)
            sys.stdout.flush()
    except OSError as exc:
        _unwritten(exc)
    _exit(report)


def _timeline_checked() -> None:
    """The timeline's first line (``mark("command")``) written, or, when
    ``BATON_REPLAY_TIMELINE`` names no file this process can append to (a folder, a full
    disk), one ConfigError line naming it (exit 2), before anything is read."""
    try:
        replay_pool.check_timeline()
    except OSError as exc:
        raise ConfigError(
            f"BATON_REPLAY_TIMELINE={replay_pool._TIMELINE!r} cannot be appended to "
            f"({exc.strerror or exc}): name a file, or unset it"
        ) from None


def _scope(
    start: datetime | None, to: datetime | None, run_id: str | None, tenant: str | None
) -> Any:
    from baton.schemas.names import fold
    from baton.sinks.replay_source import ReplayScope

    # the audit records tenants in their folded form (schemas/names.py): --tenant ACME is acme
    return ReplayScope(start, to, run_id, fold(tenant) if tenant is not None else None)


def _replay(
    settings: Any,
    scope: Any,
    new_policy: Policy,
    key: bytes,
    jobs: int,
    retention_s: float,
    tombstone_s: float,
) -> tuple[ReplayReport, dict[str, Policy], list[str], str]:
    from baton.cli.audit_options import audit_client
    from baton.sinks.clickhouse import audit_errors, parse_dsn
    from baton.sinks.replay_source import read_policies

    label = parse_dsn(settings.clickhouse_dsn).label
    mark("replay imported")
    # the --jobs pool is forked before the audit's client (chDB runs threads) opens: ready in
    # milliseconds, where a forkserver's fresh interpreter takes ~0.4 s (replay_pool); it
    # inherits the collector's settings
    with replay_pool.collecting_rarely(), replay_pool.owned_pool(jobs - 1) as pool:
        mark("pool forked")
        with (
            _without_arrow(),
            audit_client(settings) as client,
            audit_errors(label, "reading the recorded decisions"),
        ):
            mark("audit open")
            policies, refused = read_policies(client)
            mark("policies read")
            report = replay_audit(
                client, scope, new_policy, policies, key, jobs, _Progress, retention_s, pool,
                tombstone_s,
            )  # fmt: skip
    return report, policies, refused, label


@contextlib.contextmanager
def _without_arrow() -> Iterator[None]:
    """The audit opened without importing pyarrow (numpy with it: ~0.3 s of every replay):
    chDB imports it only if it can, and replay reads JSON rows and Native results only."""
    blocked = "pyarrow" not in sys.modules and "chdb.state" not in sys.modules
    if blocked:
        sys.modules["pyarrow"] = None  # type: ignore[assignment]  (import pyarrow: ImportError)
    try:
        yield
    finally:
        if blocked and "pyarrow" in sys.modules and sys.modules["pyarrow"] is None:
            del sys.modules["pyarrow"]


def replay_audit(
    client: Any,
    scope: Any,
    new_policy: Policy,
    policies: dict[str, Policy],
    key: bytes,
    jobs: int,
    progress: Callable[[int], _Progress] | None = None,
    retention_s: float = RUN_RETENTION_S,
    pool: Any = None,
    tombstone_s: float = TOMBSTONE_RETENTION_S,
) -> ReplayReport:
    """The replay of ``scope``'s runs read from ``client``'s audit, with ``jobs`` processes
    for a long one; ``progress(total rows)`` makes the progress bar; ``retention_s``: the
    workers' run retention (when their sweep evicted an idle run); ``pool``: the pool of
    ``jobs - 1`` processes, started already (``replay_pool.start_pool``), else one is
    started for a long replay."""
    from baton.processors.replay_trimmed import judge_trimmed
    from baton.sinks.chain_verify import altered_starts
    from baton.sinks.replay_source import page_rows, read_pages

    pages = read_pages(client, scope)
    mark("pages counted")
    if pages.rows < (_PARALLEL_ROWS if pool is None else _FORKED_PARALLEL_ROWS):
        jobs = 1  # starting a pool would cost more than it saves
    # pieces of whole runs: enough of them that every process has work to the end (at most
    # 2,500 rows: ~0.1 s each at 25k decisions/s); with a pool, the first and the last ones
    # smaller (split_page's share): every process starts on the first page and none waits
    # long for another's last piece at the end
    rows = min(max(pages.rows // (jobs * 16), 1_000), 2_500)
    pieces = _pieces(pages, rows, _SHARE * jobs if jobs > 1 else 0)
    bar = progress(pages.rows) if progress is not None else None
    report = replay_pool.replay_pieces(
        pieces,
        page_rows,
        new_policy,
        policies,
        key,
        jobs,
        bar,
        retention_s=retention_s,
        judge=False,
        pool=pool if jobs > 1 else None,
        tombstone_s=tombstone_s,
    )
    if bar is not None:
        bar.done()
    # a run read as trimmed that retention cannot have trimmed is broken (exit 7): each run is
    # read whole, --since or not, so no bound of the read cuts one
    judge_trimmed(report, lambda links: altered_starts(client, links, key))
    mark("judged")
    return report


def _pieces(pages: Any, rows: int, share: int) -> Iterator[bytes]:
    """The pages' pieces (``split_page``), read a page or two ahead in a thread."""
    from baton.sinks.replay_source import split_page

    done = 0
    for page in replay_pool.prefetched(pages.pages):
        done += yield from split_page(page, rows, pages.rows - done, done, share)


#: the help's last line: how this install's replay core runs (processors/compiled.py)
replay_cmd.help = (
    f"{inspect.cleandoc(replay_cmd.help or '')}\n\nThis install's replay core: {core_build()}."
)


def register(cli: click.Group) -> None:
    cli.add_command(replay_cmd)
