"""``baton worker``, ``baton up`` and ``baton kill``: run the governance processor and steer it."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from baton.cli.options import PortOrOff, build_settings, read_policy, setting_options
from baton.cli.signer import (
    CommandRefused,
    current_user,
    describe,
    load_key,
    shown,
    signer_options,
)
from baton.cli.stack_record import (
    StackRecord,
    data_dir_option,
    mark_stopped,
    refuse_running_stack,
    stack_settings,
    update_record,
    write_record,
)
from baton.cli.supervisor import (
    ChildSpec,
    RestartPolicy,
    Supervisor,
    copy_lines,
    describe_exit,
    tail,
)
from baton.schemas.decision import Reason
from baton.schemas.errors import AuditUnavailable, BatonError, BrokerUnavailable, ConfigError
from baton.schemas.events import MAX_TEXT
from baton.schemas.settings import Settings

__all__ = ["register"]

#: the longest wait before `baton up` restarts a child (unless --restart-backoff-s is longer)
_MAX_BACKOFF_S = 30.0


def _ensure_topics(settings: Settings) -> Any:
    from baton.streams.kafka import admin_config
    from baton.streams.topics import TopicCatalog, ensure_topics

    catalog = TopicCatalog(
        prefix=settings.topic_prefix,
        partitions=settings.partitions,
        replication=settings.replication_factor,
    )
    # admin_config routes librdkafka's own log lines to Python logging: without it, an
    # unreachable broker printed a "Connection refused" line to stderr every 50 ms
    ensure_topics(
        admin_config(settings.kafka_config()), catalog, timeout=settings.connect_timeout_s
    )
    return catalog


# ---------------------------------------------------------------------------- worker
@click.command("worker")
@setting_options(
    "bootstrap",
    "policy",
    "web_port",
    "partitions",
    "topic_prefix",
    "app_id",
    "session_timeout_s",
    "run_retention_s",
    "tombstone_retention_s",
    "run_state_max_bytes",
    "max_runs",
    "max_state_bytes",
    "control_max_staleness_s",
    "batch_size",
    "fetch_max_wait_ms",
    "processing_guarantee",
    "transactional_id",
    "transaction_timeout_ms",
    "worker_data_dir",
    "batch_timeout_s",
    "replication_factor",
    "audit_chain_key",
    "metrics_port",
    "metrics_host",
    "log_format",
)
def worker_cmd(**opts: Any) -> None:
    """Run one governance worker against an existing Kafka cluster (run several to scale out).

    Workers with the same --app-id share the partitions of the run-keyed topics; a worker
    that dies hands its partitions, and their state from the changelog, to the others.
    """
    settings = build_settings(**opts)
    from baton.cli.log_format import LogOutput, logging_config

    output = LogOutput(settings.log_format, "worker")  # from here on, errors in this format too
    output.install()
    if settings.web_port == 0:  # Faust binds its web port even when disabled: give it a free one
        from baton.streams.net import free_port

        settings = settings.model_copy(update={"web_port": free_port()})
    policy = read_policy(settings.policy)
    _make_data_dir(settings.worker_data_dir)
    from baton.streams.net import check_reachable

    check_reachable(settings.bootstrap, settings.connect_timeout_s)
    # the worker holds every run's state (thousands of objects each) and allocates a few per
    # event: at CPython's default gen-0 threshold (700) the collector walked the live runs so
    # often that it took a third of the batch step (bench/RESULTS.md, 2026-11-29)
    gc.set_threshold(100_000, 50, 100)
    _ensure_topics(settings)
    from faust import Worker

    from baton.processors.app import GovernanceWorker

    gw = GovernanceWorker(settings, policy)
    from baton.processors.metrics import serve_from_settings

    metrics = serve_from_settings(settings, gw.metrics)
    # The runs table keeps thousands of long-lived objects; with CPython's default GC
    # thresholds, collections scanning them cost ~35 us per event (measured). Freeze what
    # start-up allocated and collect young objects less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    output.say(
        f"baton worker {gw.worker_id}: Kafka {settings.bootstrap}, policy {policy.version}, "
        f"{settings.partitions} partitions" + (f", metrics on {metrics.url}" if metrics else "")
    )
    level = logging.getLogger().getEffectiveLevel()
    loglevel = logging.getLevelName(min(level, logging.WARNING))
    worker = Worker(
        gw.app,
        loglevel=loglevel.lower(),
        quiet=True,
        redirect_stdouts=False,
        logging_config=logging_config(settings.log_format, "worker", loglevel),
    )
    if not worker.stdout.isatty():  # its spinner writes cursor escapes into log files
        worker.spinner = None
    worker.execute_from_commandline()


def _make_data_dir(path: Path) -> None:
    """Faust creates only the last level of its datadir: a fresh directory has no .baton/."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(
            f"worker_data_dir (BATON_WORKER_DATA_DIR): {path} exists and is not a directory, "
            "expected a directory (or a path where one can be created)"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"worker_data_dir (BATON_WORKER_DATA_DIR): cannot create {path}: "
            f"{exc.strerror or exc}; expected a writable directory"
        ) from None


# ---------------------------------------------------------------------------- up
def _spawn(env: dict[str, str]) -> Callable[[ChildSpec], subprocess.Popen[bytes]]:
    from baton.streams.embedded import kill_when_parent_dies

    def spawn(spec: ChildSpec) -> subprocess.Popen[bytes]:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log_path, "ab") as out:  # the child holds its own copy of the fd
            proc = subprocess.Popen(
                [sys.executable, "-m", "baton.cli", *spec.args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if spec.echo else out,
                stderr=out if spec.echo else subprocess.STDOUT,
                preexec_fn=kill_when_parent_dies,
            )
        if spec.echo:  # its stdout (the alert lines) goes to the log and to our stdout
            assert proc.stdout is not None
            threading.Thread(
                target=copy_lines,
                args=(proc.stdout, spec.log_path, _echo_stdout),
                name=f"baton-up-{spec.name}-output",
                daemon=True,
            ).start()
        return proc

    return spawn


def _echo_stdout(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


class _Readiness(threading.Thread):
    """Waits, off the supervision loop, until the worker decides and the sink serves SQL."""

    def __init__(
        self, settings: Settings, catalog: Any, sql_port: int | None, chdb_dir: Path
    ) -> None:
        super().__init__(name="baton-up-readiness", daemon=True)
        self.settings, self.catalog, self.sql_port = settings, catalog, sql_port
        self.chdb_dir = chdb_dir
        self.sql_dsn: str | None = None  # with the sink's token, for the ready line
        self.took: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from baton.processors.probe import wait_until_deciding

        try:
            took = wait_until_deciding(
                self.settings.kafka_config(),
                self.catalog.requests,
                self.catalog.decisions,
                self.settings.partitions,
                timeout_s=90,
            )
            if self.sql_port is not None:  # 0: the port the sink picked
                self.sql_dsn = _wait_for_sql(self.sql_port or None, self.chdb_dir)
            self.took = took
        except BaseException as exc:  # handed to the supervision loop, which raises it
            self.error = exc


@click.command("up")
@click.option("--port", type=int, default=None, help="broker port [default: a free port]")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path(".baton"),
    show_default=True,
    envvar="BATON_DATA_DIR",
    help="logs, worker state, the embedded ClickHouse (chDB) and stack.json (the record "
    "client commands find the stack by) live here",
)
@click.option(
    "--sql-port",
    type=PortOrOff(),
    default="8123",
    show_default=True,
    envvar="BATON_SQL_PORT",
    help="port of the read-only, token-protected SQL endpoint on 127.0.0.1 (ClickHouse HTTP) "
    "while up runs; the ready line and DATA_DIR/stack.json name it (the token stays in "
    "DATA_DIR/chdb, mode 0600). 0: a free port; off: no endpoint (the audit is still "
    "written; query it after up stops)",
)
@click.option("--no-audit", is_flag=True, help="do not start the audit sink and the alerter")
@click.option(
    "--restart-limit",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    envvar="BATON_RESTART_LIMIT",
    help="a child (worker, sink, alerter) that exits this often within --restart-window-s "
    "stops baton up, with its error and exit code",
)
@click.option(
    "--restart-window-s",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    envvar="BATON_RESTART_WINDOW_S",
    help="seconds in which exits of a child are counted",
)
@click.option(
    "--restart-backoff-s",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    default=1.0,
    show_default=True,
    envvar="BATON_RESTART_BACKOFF_S",
    help="wait before restarting a child that exited; doubles with each recent exit, "
    f"up to {_MAX_BACKOFF_S:g} s",
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
)
def up_cmd(
    port: int | None,
    data_dir: Path,
    sql_port: int | None,
    no_audit: bool,
    restart_limit: int,
    restart_window_s: float,
    restart_backoff_s: float,
    metrics_port: str,
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
    kill switch and a published policy it cannot: re-issue them), but not decisions the sink
    had not stored when up stopped. With --no-audit a restart forgets everything. A Kafka
    cluster (docker-compose.yml) keeps all of it.

    While it runs, DATA_DIR/stack.json records the stack (Kafka, SQL endpoint, policy, logs,
    pids): `baton kill`, `sql`, `trace`, `alerts`, `approvals` ... run where ./.baton is
    that dir (the default), or given --data-dir DATA_DIR / BATON_DATA_DIR, use it without
    flags. Stop alerts are printed here and
    kept in DATA_DIR/logs/alerts.log. The worker, sink and alerter read every BATON_*
    setting of `baton worker`, `baton sink` and `baton alerts` (see their --help)."""
    from baton.streams.embedded import EmbeddedBroker

    data_dir = data_dir.resolve()
    earlier = refuse_running_stack(data_dir)
    opts["metrics_port"] = metrics_port
    settings = build_settings(**opts)
    from baton.cli.log_format import LogOutput

    output = LogOutput(settings.log_format, "up")  # from here on, errors in this format too
    output.install()
    policy = read_policy(settings.policy)  # fail before starting anything on a bad policy
    if not no_audit:
        _refuse_busy_sql_port(sql_port)
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
    broker = EmbeddedBroker(port=port, log_dir=logs)
    supervisor: Supervisor | None = None
    record: StackRecord | None = None
    stopping = False
    interruptible = True

    class _Interrupted(Exception):
        pass

    def _stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if interruptible:  # abort a broker start or topic creation that may take a while
            raise _Interrupted

    def say(line: str) -> None:
        output.say(f"baton up: {line}")

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        say(f"starting the embedded Kafka broker (logs in {logs})")
        broker.start()
        settings = build_settings(**{**opts, "bootstrap": broker.bootstrap})
        catalog = _ensure_topics(settings)
        _say_what_a_restart_keeps(data_dir, earlier, no_audit, settings, catalog, say)
        if not no_audit:
            _name_a_lost_policy(data_dir / "chdb", policy.version, say)
        record = write_stack_record(data_dir, settings, broker, no_audit, logs)
        say(
            f"stack recorded in {data_dir / 'stack.json'}: `baton kill`, `sql`, `trace`, "
            f"`alerts` ... run in {data_dir.parent} (or with --data-dir {data_dir}) use it"
            if data_dir.name == ".baton"
            else f"stack recorded in {data_dir / 'stack.json'}: `baton kill`, `sql`, "
            f"`trace`, `alerts` ... with --data-dir {data_dir} (or BATON_DATA_DIR) use it"
        )
        env = {
            **os.environ,
            "BATON_BOOTSTRAP": broker.bootstrap,
            "BATON_PARTITIONS": str(settings.partitions),
            "BATON_SESSION_TIMEOUT_S": str(settings.session_timeout_s),
            "BATON_TOPIC_PREFIX": settings.topic_prefix,
            "BATON_APP_ID": settings.app_id,
            "BATON_REPLICATION_FACTOR": str(settings.replication_factor),
            "BATON_WORKER_DATA_DIR": str(data_dir / "worker"),
            "BATON_CLICKHOUSE_DSN": f"chdb://{data_dir / 'chdb'}",
        }
        if settings.policy:
            env["BATON_POLICY"] = str(Path(settings.policy).resolve())
        from baton.streams.net import free_port

        # a restarted worker keeps this web port: the old process is gone by then
        children = [("worker", ("worker", "--web-port", str(free_port())))]
        if not no_audit:
            children += _audit_children(sql_port, settings.app_id)
        env["BATON_LOG_FORMAT"] = settings.log_format
        children, metrics_url = _with_metrics_ports(children, settings.metrics_port_number)
        if record is not None and metrics_url:  # `baton top` reads it from there
            record = update_record(record, metrics_url=metrics_url)
        supervisor = Supervisor(restart, _spawn(env), say)
        for name, args in children:
            supervisor.start(ChildSpec(name, args, logs / f"{name}.log", echo=name == "alerts"))
        interruptible = False  # from here on, signals only set `stopping`

        say(f"waiting for the worker (policy {policy.version})")
        readiness = _Readiness(settings, catalog, None if no_audit else sql_port, data_dir / "chdb")
        readiness.start()
        announced = False
        while not stopping:
            _check_broker(broker)
            supervisor.tick()
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
                _announce_new_sql_token(readiness, data_dir / "chdb", sql_port)
            record = _keep_record(record, broker, supervisor, readiness, announced)
            time.sleep(0.2)
        say("stopping")
    except _Interrupted:
        say("interrupted during start-up; stopping")
    except BatonError:
        if stopping:  # Ctrl-C reaches the broker and the children too: their exits are the stop
            say("stopping")
            return
        say("stopping everything; the reason follows")  # the children may take a while
        raise
    finally:
        interruptible = False
        if supervisor is not None:
            # without a broker a worker's graceful stop only waits for it: a short grace
            supervisor.stop(grace_s=15.0 if broker.running else 3.0)
        broker.stop()
        if record is not None:
            mark_stopped(record)


def _check_broker(broker: Any) -> None:
    """The stack ends with its broker: its topics were in memory, nothing can resume."""
    code = broker.returncode
    if code is None:
        return
    output = tail(broker.log_path) if broker.log_path else ""
    raise BrokerUnavailable(
        f"the embedded Kafka broker on {broker.bootstrap} exited with {describe_exit(code)}; "
        "its topics were in memory and are gone, so baton up stops everything. "
        f"Its last output ({broker.log_path}):\n{output or '(none)'}"
    )


def _wait_for_sql(port: int | None, chdb_dir: Path, timeout_s: float = 90.0) -> str:
    """The sink opens chDB and migrates before it serves SQL: wait until the DSN in its
    endpoint file answers a query (the supervision loop restarts a sink that dies meanwhile);
    returns the DSN. ``port`` None: whichever port the sink picked."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dsn = _answering_sql_dsn(port, chdb_dir)
        if dsn is not None:
            return dsn
        time.sleep(0.1)
    raise AuditUnavailable(
        f"the audit sink did not serve SQL on 127.0.0.1:{port or '(a free port)'} within "
        f"{timeout_s:g} s; "
        "see its log (logs/sink.log in the data directory)"
    )


def _answering_sql_dsn(port: int | None, chdb_dir: Path, known: str | None = None) -> str | None:
    """The DSN registered in ``chdb_dir`` when it is not ``known`` and its token opens the
    endpoint on ``port`` (None: any port; a file left by an earlier start names a token
    nobody serves)."""
    import base64
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    from baton.sinks.clickhouse import read_endpoint

    dsn = read_endpoint(chdb_dir)
    if dsn is None or dsn == known or (port is not None and not dsn.endswith(f":{port}")):
        return None
    parts = urlsplit(dsn)
    if parts.hostname != "127.0.0.1" or parts.port is None:
        return None  # our sink serves on the loopback only; never send a token elsewhere
    basic = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{parts.port}/?query=SELECT+1",
        headers={"Authorization": f"Basic {basic}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            return dsn if resp.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


def _announce_new_sql_token(readiness: _Readiness, chdb_dir: Path, port: int | None) -> None:
    """A restarted sink serves SQL with a new token: print its DSN, as the ready line did
    (with --sql-port 0, on the new port it picked)."""
    dsn = _answering_sql_dsn(port or None, chdb_dir, known=readiness.sql_dsn)
    if dsn is not None:
        readiness.sql_dsn = dsn
        click.echo(f"baton up: the SQL endpoint restarted with a new token: sql={dsn}")
        sys.stdout.flush()


def _with_metrics_ports(
    children: list[tuple[str, tuple[str, ...]]], worker_port: int | None
) -> tuple[list[tuple[str, tuple[str, ...]]], str | None]:
    """Each child with its own /metrics port (the worker's ``worker_port``, 0 = a free one;
    the others free ones), and the worker's URL; None: no metrics anywhere. A restarted
    child keeps its port: the old process is gone by then."""
    from baton.streams.net import free_port

    if worker_port is None:
        return [(name, (*args, "--metrics-port", "off")) for name, args in children], None
    given: list[tuple[str, tuple[str, ...]]] = []
    url = None
    for name, args in children:
        port = worker_port if name == "worker" and worker_port else free_port()
        if name == "worker":
            url = f"http://127.0.0.1:{port}/metrics"
        given.append((name, (*args, "--metrics-port", str(port))))
    return given, url


def _refuse_busy_sql_port(port: int | None) -> None:
    """Fail at once when the SQL endpoint's port is taken, instead of after the sink's
    restarts (a second `baton up`, or a ClickHouse server, on 8123 is the usual case)."""
    import socket

    if not port:  # off, or 0: any free port
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the endpoint binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigError(
                f"cannot serve SQL on 127.0.0.1:{port}: {exc.strerror or exc} "
                "(another baton up, or a ClickHouse server?); pass --sql-port 0 (any free "
                "port) or --sql-port off (env BATON_SQL_PORT)"
            ) from None


def _audit_children(sql_port: int | None, app_id: str) -> list[tuple[str, tuple[str, ...]]]:
    """The sink (which also serves SQL over chDB, unless ``sql_port`` is None) and the
    alerter, in a consumer group of its own: a `baton alerts` started next to it (group
    APP_ID-alerts) sees every stop too."""
    port = "off" if sql_port is None else str(sql_port)
    alerts = ("alerts", "--group", f"{app_id}-up-alerts")
    return [("sink", ("sink", "--sql-port", port)), ("alerts", alerts)]


def _rebuild_runs_from_audit(
    settings: Settings, catalog: Any, data_dir: Path, say: Callable[[str], None]
) -> int | None:
    """HOOK (issue 13, replay): give the fresh broker the run states of an earlier start,
    rebuilt from the audit in ``data_dir``/chdb, before the worker decides anything.

    Called with the broker up and the topics created, before any child starts (so chDB is
    not held yet). Returns how many runs were restored, or None when nothing is rebuilt
    (then `baton up` warns that the runs start from zero)."""
    from baton.cli.restore_runs import restore_runs

    return restore_runs(settings, data_dir, say)


def _say_what_a_restart_keeps(
    data_dir: Path,
    earlier: StackRecord | None,
    no_audit: bool,
    settings: Settings,
    catalog: Any,
    say: Callable[[str], None],
) -> None:
    """The embedded broker forgets everything when it stops: say so at every start, what the
    audit gives back, and loudly when it gives nothing back."""
    audit = data_dir / "chdb"
    if no_audit:
        say(
            "the embedded Kafka broker keeps everything in memory and --no-audit keeps no "
            "audit: when baton up stops, every run's state (spend, handoff counts, owners, "
            "stops), pending approvals, kill switches and policy updates are gone"
        )
    else:
        say(
            "the embedded Kafka broker keeps everything in memory: when baton up stops, its "
            "topics are gone; a start with this data dir rebuilds the runs' state from the "
            f"audit in {audit} and issues its kill switches (and signed releases and policy "
            "updates) again, but not decisions the sink had not stored yet"
        )
    if not audit.is_dir():
        return
    restored = None if no_audit else _rebuild_runs_from_audit(settings, catalog, data_dir, say)
    if not no_audit:
        _name_lost_kill_switches(audit, say)
    if restored is not None:
        say(f"restored {restored} runs' state from the audit in {audit}")
        return
    since = f" (last start {earlier.started_at:%Y-%m-%d %H:%M:%S} UTC)" if earlier else ""
    say(
        f"WARNING: {audit} holds the audit of an earlier start{since}, but its runs' state "
        "is NOT restored: every run starts again from zero (a stopped or over-budget run can "
        "be allowed again, kill switches are lifted). Use a Kafka cluster to keep governance "
        "across restarts"
    )


def _name_a_lost_policy(audit: Path, version: str, say: Callable[[str], None]) -> None:
    """A policy published before this restart is gone with the old broker's control topic:
    when the workers used another policy than this start's, say so (its approver keys and
    operators may be gone with it), never fall back in silence."""
    from baton.cli.restart_notice import policy_in_force

    if not audit.is_dir():
        return
    try:
        before = policy_in_force(audit)
    except BatonError as exc:
        say(f"WARNING: could not read the policy in force of the audit in {audit}: {exc}")
        return
    if before is None or before.version == version or before.reissued:
        return  # the same policy, or a signed publication the restore re-issues
    published = f", published by {shown(before.published_by)}" if before.published_by else ""
    say(
        f"WARNING: the policy in force before this restart (version {before.version}"
        f"{published}, last recorded {before.at[:19]} UTC) is NOT in force now: this start uses "
        f"policy {version} (--policy / BATON_POLICY, else the seed policy). Re-publish it "
        "with `baton policy publish FILE`, or start with --policy FILE"
    )


def _name_lost_kill_switches(audit: Path, say: Callable[[str], None]) -> None:
    """The kill switches in force before this restart are gone with the old broker: name
    each (the operator re-issues them), never lift them in silence."""
    from baton.cli.restart_notice import kill_switches_in_force

    try:
        lost = kill_switches_in_force(audit)
    except BatonError as exc:
        say(f"WARNING: could not read the kill switches of the audit in {audit}: {exc}")
        return
    if lost:
        names = ", ".join(lost[:10]) + (f" and {len(lost) - 10} more" if len(lost) > 10 else "")
        say(
            f"WARNING: {len(lost)} kill switch(es) in force before this restart are NOT in "
            f"force now (the embedded broker forgot them): {names}; re-issue each with "
            "`baton kill --run RUN | --tenant T | --global`"
        )


def write_stack_record(
    data_dir: Path, settings: Settings, broker: Any, no_audit: bool, logs: Path
) -> StackRecord:
    """Record the starting stack in ``data_dir``/stack.json (client commands find it there)."""
    from datetime import UTC, datetime

    names = ("worker",) if no_audit else ("worker", "sink", "alerts")
    record = StackRecord(
        state="starting",
        pid=os.getpid(),
        started_at=datetime.now(UTC),
        data_dir=data_dir,
        app_id=settings.app_id,
        bootstrap=broker.bootstrap,
        topic_prefix=settings.topic_prefix,
        partitions=settings.partitions,
        policy=Path(settings.policy).resolve() if settings.policy else None,
        clickhouse_dsn=None if no_audit else f"chdb://{data_dir / 'chdb'}",
        logs={
            "broker": broker.log_path or logs,
            **{name: logs / f"{name}.log" for name in names},
        },
        pids={"broker": broker.pid or 0},
    )
    write_record(record)
    return record


def _keep_record(
    record: StackRecord | None,
    broker: Any,
    supervisor: Supervisor,
    readiness: _Readiness,
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
    return update_record(record, pids=pids, sql_url=sql_url, state=state)


# ---------------------------------------------------------------------------- kill
@click.command("kill")
@click.option("--run", "run_id", help="stop every handoff of this run")
@click.option("--tenant", help="stop every handoff of this tenant")
@click.option("--global", "everything", is_flag=True, help="stop every handoff of every run")
@click.option("--release", is_flag=True, help="lift the kill switch instead")
@click.option("--reason", default="", help="why (recorded in the audit)")
@signer_options("operator", key_required=False, as_default=current_user)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="wait until a worker has applied it (its control record is on gov.decisions)",
)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="seconds to wait")
@setting_options("bootstrap", "topic_prefix", "partitions")
@data_dir_option
def kill_cmd(
    run_id: str | None,
    tenant: str | None,
    everything: bool,
    release: bool,
    reason: str,
    signer: str,
    key_file: Path | None,
    wait: bool,
    timeout: float,
    data_dir: Path | None,
    **opts: Any,
) -> None:
    """Publish a kill switch (or its release) for a run, a tenant, or everything, signed as
    operator NAME with --key FILE (required when the policy lists operators).

    By default it returns once a worker has applied the switch, so every handoff decided
    afterwards is decided under it; exit 4 when Kafka or no worker answers in time, 6 when
    the worker refused it (unsigned, forged, replayed: the reason is printed).
    """
    if len([x for x in (run_id, tenant, everything or None) if x]) != 1:
        raise click.UsageError("give exactly one of --run RUN_ID, --tenant T, --global")
    if len(reason) > MAX_TEXT:
        raise click.BadParameter(
            f"at most {MAX_TEXT} characters, got {len(reason)}", param_hint="--reason"
        )
    key = load_key(key_file)
    settings = stack_settings(opts, data_dir)
    from baton.streams.net import check_reachable
    from baton.streams.sdk import OperatorClient

    check_reachable(settings.bootstrap, settings.connect_timeout_s)

    client = OperatorClient(
        settings=settings, key=key, timeout=timeout, connect_timeout=settings.connect_timeout_s
    )
    try:
        switch = client.release if release else client.kill
        record = switch(
            run_id=run_id,
            tenant=tenant,
            everything=everything,
            operator=signer,
            reason=reason,
            wait=wait,
        )
    finally:
        client.close()
    scope = "run" if run_id else "tenant" if tenant else "global"
    target = run_id or tenant or "*"
    what = "released" if release else "engaged"
    if record is not None and record.reason not in (
        Reason.KILL_SWITCH,
        Reason.KILL_SWITCH_RELEASED,
    ):
        click.echo(f"kill switch NOT {what}: scope={scope} target={target}: {describe(record)}")
        raise CommandRefused(
            f"the worker refused this {'release' if release else 'kill'} ({record.reason}): "
            f"{record.detail}"
        )
    confirmed = f" (applied by worker {record.worker})" if record is not None else ""
    click.echo(f"kill switch {what}: scope={scope} target={target}{confirmed}")


def register(cli: click.Group) -> None:
    cli.add_command(worker_cmd)
    cli.add_command(up_cmd)
    cli.add_command(kill_cmd)
