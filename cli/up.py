"""``baton up``: the whole stack on this machine, supervised until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from baton.cli.audit_mark import carried_over, stop_mark
from baton.cli.options import (
    FiniteFloatRange,
    PortOrOff,
    build_settings,
    read_policy,
    read_policy_text,
    setting_options,
)
from baton.cli.stack_file import (
    StackRecord,
    mark_stopped,
    record_path,
    refuse_running_stack,
    update_record,
    write_stack_record,
)
from baton.cli.supervisor import RestartPolicy, Supervisor
from baton.cli.up_audit import has_tables, keep_audit_id, refuse_a_lost_audit
from baton.cli.up_children import (
    UP_DEFAULTS,
    WORKER_DATA_DIR,
    audit_children,
    frozen_keys,
    metrics_url_of,
    spawner,
    start_children,
    with_metrics_ports,
    without_overrides,
)
from baton.cli.up_memory import MemoryMax, check_broker, machine_memory, memory_limit, watch_memory
from baton.cli.up_ports import refuse_busy_ports
from baton.cli.up_ready import PROGRESS_EVERY_S, Readiness, announce_new_sql_token
from baton.cli.up_restart import (
    earlier_policy,
    keep_policy_copy,
    name_a_lost_policy,
    prune_broker_logs,
    say_what_a_restart_keeps,
    workers_chain_key_id,
)
from baton.cli.up_stop import stop_children
from baton.cli.worker_cmd import create_topics
from baton.processors.control_seal import seal_keys
from baton.schemas import env_names
from baton.schemas.decision_signing import ensure_decision_key, signing_key_of
from baton.schemas.errors import BatonError, ConfigError, Interrupted
from baton.schemas.policy import parse_policy

__all__ = ["register", "up_cmd"]


#: the longest wait before `baton up` restarts a child (unless --restart-backoff-s is longer)
_MAX_BACKOFF_S = 30.0


@click.command("up")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),  # 99999 reached the broker binary: exit 4, "InvalidPort"
    default=None,
    help="broker port [default: a free port]",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path(".baton"),
    show_default=True,
    envvar=env_names.DATA_DIR,
    help="logs, worker state, the embedded ClickHouse (chDB) and stack.json (the record "
    "client commands find the stack by) live here",
)
@click.option(
    "--sql-port",
    type=PortOrOff(),
    default="8123",
    show_default=True,
    envvar=env_names.SQL_PORT,
    help="port of the read-only, token-protected SQL endpoint on 127.0.0.1 (ClickHouse HTTP) "
    "while up runs; the ready line and DATA_DIR/stack.json name it (the token stays in "
    "DATA_DIR/chdb, mode 0600). 0: a free port; off: no endpoint (the audit is still "
    "written; query it after up stops)",
)
@click.option("--no-audit", is_flag=True, help="do not start the audit sink and the alerter")
@click.option(
    "--allow-unsigned",
    is_flag=True,
    help="start although the policy in force before (recorded in the audit) lists operators "
    "and this start's lists none: kill switches, releases and policy updates then count "
    "unsigned. Without it such a restart refuses (exit 2)",
)
@click.option(
    "--forget-audit",
    is_flag=True,
    help="start although the audit the earlier stack of this data dir wrote is not in "
    "DATA_DIR/chdb (moved, deleted, another one, or fewer decisions than at its last clean "
    "stop: an older copy): its runs' state, kill switches and "
    "published policy are forgotten. Without it such a start refuses (exit 2). No variable: "
    "a one-off choice",
)
@click.option(
    "--restart-limit",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    envvar=env_names.RESTART_LIMIT,
    help="a child (worker, sink, alerter) that exits this often within --restart-window-s "
    "stops baton up, with its error and exit code",
)
@click.option(
    "--restart-window-s",
    # a day at most, like the other durations (1e308 was taken: every exit ever counted)
    type=FiniteFloatRange(min=1, max=86400),  # (1e-300: restarts spun a core)
    default=120.0,
    show_default=True,
    envvar=env_names.RESTART_WINDOW_S,
    help="seconds in which exits of a child are counted",
)
@click.option(
    "--restart-backoff-s",
    type=FiniteFloatRange(min=0.1, max=3600),  # (1e-300: restarts spun a core)
    default=1.0,
    show_default=True,
    envvar=env_names.RESTART_BACKOFF_S,
    help="wait before restarting a child that exited; doubles with each recent exit, "
    f"up to {_MAX_BACKOFF_S:g} s",
)
@click.option(
    "--broker-memory-max",
    type=MemoryMax(),
    default="75%",
    show_default=True,
    envvar=env_names.BROKER_MEMORY_MAX,
    help="the embedded broker keeps every record in memory (no retention): past this much "
    "(a size such as 4G, a share of this machine's memory, or off) baton up stops "
    "everything (exit 4) before the machine runs out; it says so at 25 % and 50 % of it, "
    "with the rate it grows at",
)
@click.option(
    "--metrics-port",
    default="0",
    show_default=True,
    envvar="BATON_METRICS_PORT",
    help="the worker's Prometheus /metrics port on 127.0.0.1, printed on the ready line "
    "(0: a free one); the sink and the alerter serve theirs on free ports; off = none",
)
@setting_options(
    "policy",
    "partitions",
    "session_timeout_s",
    "topic_prefix",
    "app_id",
    "replication_factor",
    "log_format",
    "decision_signing_key",
    defaults=UP_DEFAULTS,
)
def up_cmd(
    port: int | None,
    data_dir: Path,
    sql_port: int | None,
    no_audit: bool,
    allow_unsigned: bool,
    forget_audit: bool,
    restart_limit: int,
    restart_window_s: float,
    restart_backoff_s: float,
    metrics_port: str,
    broker_memory_max: str,
    **opts: Any,
) -> None:
    """Start everything on this machine: embedded Kafka broker, topics, one worker, the
    ClickHouse audit sink (chDB) and the stop alerter. Prints a line with `ready` and the
    bootstrap address once it decides, and stops it all on Ctrl-C or SIGTERM.

    A worker, sink or alerter that exits is restarted (after 1 s, 2 s, 4 s ... by default)
    with one line on stderr; baton up ends when the broker does (exit 4) or when a child
    keeps failing (with that child's error and exit code).

    The embedded broker keeps everything in memory. A start with the data dir of an earlier
    one rebuilds the runs' state (spend, handoff counts, owners, stops) from its audit
    (DATA_DIR/chdb) before the worker decides, and says how many runs it restored; it issues
    the recorded kill switches, and signed releases and policy updates, again (it names each
    kill switch and a published policy it cannot: re-issue them). A stop ends the worker, then
    the sink once it stored what the worker published, then the broker: requests not decided
    by then are gone. With --no-audit a restart forgets everything. A Kafka
    cluster (docker-compose.yml) keeps all of it. A start whose earlier stack's audit is gone
    or older, or whose policy drops the operators in force, refuses (exit 2; --forget-audit,
    --allow-unsigned). The --policy file is copied into DATA_DIR/policy-<hash>.yaml: the stack uses
    that copy until it stops. `baton down` stops it from another terminal.

    While it runs, DATA_DIR/stack.json records the stack (Kafka, SQL endpoint, policy, logs,
    pids): `baton kill`, `sql`, `trace`, `alerts`, `approvals` ... run where ./.baton is
    that dir (the default), or given --data-dir DATA_DIR / BATON_DATA_DIR, use it without
    flags. Stop alerts are printed here and
    kept in DATA_DIR/logs/alerts.log. The worker, sink and alerter read every BATON_*
    setting of `baton worker`, `baton sink` and `baton alerts` (see their --help)."""
    from baton.streams.embedded import EmbeddedBroker

    # what it and its children write (the audit, logs, up.out's SQL token, the lock) is its
    # user's alone: a world-readable data dir let any local user read the audit (H2, s. 27)
    os.umask(0o077)
    data_dir = data_dir.resolve()
    opts["metrics_port"] = metrics_port
    settings = build_settings(**opts)
    from baton.cli.log_format import LogOutput

    output = LogOutput(settings.log_format, "up")  # from here on, errors in this format too
    output.install()

    def say(line: str) -> None:
        output.say(f"baton up: {line}")

    # a bad setting or policy fails before anything is made (a typo left a stack.lock behind)
    text = read_policy_text(settings.policy) if settings.policy else None
    policy = (
        read_policy(None) if text is None else parse_policy(text, str(settings.policy), file=True)
    )
    earlier = refuse_running_stack(data_dir)
    forgotten = refuse_a_lost_audit(data_dir, earlier, no_audit, forget_audit, say)
    before = earlier_policy(data_dir, earlier, allow_unsigned or no_audit)
    if text is not None:  # the workers load what was read here, whatever the file becomes
        source = Path(settings.policy)
        opts["policy"] = str(keep_policy_copy(data_dir, text, source, say, earlier))
        settings = build_settings(**opts)
    refuse_busy_ports(port, None if no_audit else sql_port, settings.metrics_port_number)
    worker_dir = data_dir / WORKER_DATA_DIR  # its decision.key signs (none given), seal.key seals
    signing = signing_key_of(settings.decision_signing_key or ensure_decision_key(worker_dir))
    if earlier is not None and earlier.decision_keys not in (None, signing[1]):
        say(
            f"WARNING: the workers sign decisions with another key than before ({signing[1]}, "
            f"was {earlier.decision_keys}): clients given the old one take none of their "
            "decisions; give them the new one (stack.json's decision_keys)"
        )
    chain_id = workers_chain_key_id(settings, data_dir, earlier, forgotten, say)
    machine = machine_memory()
    memory_max = memory_limit(broker_memory_max, machine)
    try:
        restart = RestartPolicy(
            backoff_s=restart_backoff_s,
            max_backoff_s=max(_MAX_BACKOFF_S, restart_backoff_s),
            limit=restart_limit,
            window_s=restart_window_s,
        )
    except ValueError as exc:  # what click's ranges let through, e.g. nan
        raise ConfigError(f"baton up: {exc}") from None
    logs = data_dir / "logs"
    prune_broker_logs(logs, say)
    broker = EmbeddedBroker(port=port, log_dir=logs, outlive=record_path(data_dir))
    supervisor: Supervisor | None = None
    record: StackRecord | None = None
    stopping = 0  # the signal that stops the stack
    interruptible = True
    interrupted = False

    class _Interrupted(Exception):
        pass

    def _stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = signum  # truthy: which one, said if it ends the start (exit 130)
        if interruptible:  # abort a broker start or topic creation that may take a while
            raise _Interrupted

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _stop)  # a closed terminal: stopped as by SIGTERM, recorded
    announced = False
    try:
        say(f"starting the embedded Kafka broker (logs in {logs})")
        broker.start()
        memory = watch_memory(broker, memory_max, machine, broker_memory_max, say)
        settings = build_settings(**{**opts, "bootstrap": broker.bootstrap})
        catalog = create_topics(settings)
        say_what_a_restart_keeps(data_dir, earlier, no_audit, settings, catalog, say)
        republished = None
        if not no_audit:
            republished = name_a_lost_policy(
                data_dir / "chdb",
                policy.version,
                say,
                bool(policy.operators),
                allow_unsigned,
                before,
                policy,
                seal_keys(settings, worker_dir),
            )
        audit_id = keep_audit_id(data_dir, earlier, no_audit, renew=forgotten)
        record = write_stack_record(
            data_dir,
            settings,
            broker,
            no_audit,
            logs,
            memory_max if memory else None,
            audit_id,
            signing[1],
            chain_id,
        )
        record = update_record(record, **carried_over(earlier, audit_id))
        say(
            f"stack recorded in {data_dir / 'stack.json'}: `baton kill`, `sql`, `trace`, "
            f"`alerts` ... run in {data_dir.parent} (or with --data-dir {data_dir}) use it"
            if data_dir.name == ".baton"
            else f"stack recorded in {data_dir / 'stack.json'}: `baton kill`, `sql`, "
            f"`trace`, `alerts` ... with --data-dir {data_dir} (or BATON_DATA_DIR) use it"
        )
        given = {
            "BATON_BOOTSTRAP": broker.bootstrap,
            "BATON_PARTITIONS": str(settings.partitions),
            "BATON_SESSION_TIMEOUT_S": str(settings.session_timeout_s),
            "BATON_TOPIC_PREFIX": settings.topic_prefix,
            "BATON_APP_ID": settings.app_id,
            "BATON_REPLICATION_FACTOR": str(settings.replication_factor),
            "BATON_WORKER_DATA_DIR": str(worker_dir),
            "BATON_DECISION_SIGNING_KEY": str(signing[0]),
            "BATON_DECISION_KEYS": signing[1],  # its alerter announces only what they signed
            "BATON_CLICKHOUSE_DSN": f"chdb://{data_dir / 'chdb'}",
        }
        if settings.policy:
            given["BATON_POLICY"] = str(Path(settings.policy).resolve())
        from baton.streams.net import free_port

        # a restarted worker keeps this web port: the old process is gone by then
        children = [("worker", ("worker", "--web-port", str(free_port())))]
        if not no_audit:
            children += audit_children(sql_port, settings.app_id, data_dir.resolve() / "alerts")
        given["BATON_LOG_FORMAT"] = settings.log_format
        env = frozen_keys(without_overrides(given, children, say), settings)
        children, metrics_url = with_metrics_ports(children, settings.metrics_port_number)
        if record is not None and metrics_url:  # `baton top` reads it from there
            record = update_record(
                record, metrics_url=metrics_url, sink_metrics_url=metrics_url_of(children, "sink")
            )
        supervisor = Supervisor(restart, spawner(env, say), say)
        # from here on, signals only set `stopping`: one raised out of a spawn after its
        # fork left a child no record names (session 39: a sink that outlived the stack)
        interruptible = False
        start_children(supervisor, children, logs)  # the alerts echoed, the rest's warnings

        say(
            f"waiting for the worker (policy {policy.version}"
            + (f"; the re-issued published policy {republished} replaces it" if republished else "")
            + ")"
        )
        chdb = data_dir / "chdb"
        readiness = Readiness(settings, catalog, None if no_audit else sql_port, chdb, signing[1])
        readiness.start()
        next_progress = time.monotonic() + PROGRESS_EVERY_S
        while not stopping:
            check_broker(broker, memory)
            if memory is not None:
                memory.tick()
            supervisor.tick()
            if not announced and readiness.is_alive() and time.monotonic() >= next_progress:
                say(readiness.progress())  # a start was silent for ~25 s
                next_progress += PROGRESS_EVERY_S
            if not announced and not readiness.is_alive():
                if readiness.error is not None:
                    raise readiness.error
                extra = f" sql={readiness.sql_dsn}" if readiness.sql_dsn else ""
                extra += f" metrics={metrics_url}" if metrics_url else ""
                click.echo(
                    f"baton up: ready bootstrap={broker.bootstrap}{extra} "
                    f"(worker answered in {readiness.took:.1f} s; Ctrl-C stops)"
                )
                sys.stdout.flush()
                announced = True
            elif announced and readiness.sql_dsn:
                announce_new_sql_token(readiness, data_dir / "chdb", sql_port)
            record = _keep_record(record, broker, supervisor, readiness, announced)
            time.sleep(0.2)
        say("stopping")
        interrupted = not announced  # stopped before ready (H2, session 27: it ended 0)
    except _Interrupted:
        say("interrupted during start-up; stopping")
        interrupted = True
    except BatonError:
        if not stopping:
            say("stopping everything; the reason follows")  # the children may take a while
            raise
        # Ctrl-C reaches the broker and the children too: their exits are the stop
        say("stopping")
        interrupted = not announced
    finally:
        interruptible = False
        if supervisor is not None:
            # without a broker a worker's graceful stop only waits for it: a short grace
            stop_children(supervisor, broker.running, settings, say, record, broker.pid or 0)
        broker.stop()
        if record is not None:
            mark_stopped(record, **stop_mark(record, say))  # the sink is gone: count
    if interrupted:  # never ready: exit 130 (Ctrl-C before done), not 0 as a stop of a stack
        raise Interrupted("Ctrl-C" if stopping == signal.SIGINT else signal.Signals(stopping).name)


def _keep_record(
    record: StackRecord | None,
    broker: Any,
    supervisor: Supervisor,
    readiness: Readiness,
    announced: bool,
) -> StackRecord | None:
    """The record with the current pids, SQL URL and state (written when one changed)."""
    if record is None:
        return None
    pids = {"broker": broker.pid or 0} | {
        name: proc.pid for name, proc in supervisor.processes().items()
    }
    sql_url = None
    if readiness.sql_dsn:
        from urllib.parse import urlsplit

        sql_url = f"http://127.0.0.1:{urlsplit(readiness.sql_dsn).port}"
    state = "running" if announced else "starting"
    # the sink made the audit's tables: a later start needs them (one stopped before, not)
    made = record.audit_made or (
        record.clickhouse_dsn is not None and has_tables(record.data_dir / "chdb")
    )
    return update_record(record, pids=pids, sql_url=sql_url, state=state, audit_made=made)


def register(cli: click.Group) -> None:
    cli.add_command(up_cmd)
