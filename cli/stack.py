"""``baton worker``, ``baton up`` and ``baton kill``: run the governance processor and steer it."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from baton.cli.options import build_settings, setting_options
from baton.schemas.errors import BatonError
from baton.schemas.policy import load_policy
from baton.schemas.settings import Settings

__all__ = ["register"]

log = logging.getLogger("baton.up")


def _ensure_topics(settings: Settings) -> Any:
    from baton.streams.topics import TopicCatalog, ensure_topics

    catalog = TopicCatalog(
        prefix=settings.topic_prefix,
        partitions=settings.partitions,
        replication=settings.replication_factor,
    )
    ensure_topics(settings.kafka_config(), catalog, timeout=settings.connect_timeout_s)
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
    "batch_size",
    "fetch_max_wait_ms",
    "processing_guarantee",
    "transactional_id",
    "transaction_timeout_ms",
    "worker_data_dir",
)
def worker_cmd(**opts: Any) -> None:
    """Run one governance worker against an existing Kafka cluster (run several to scale out).

    Workers with the same --app-id share the partitions of the run-keyed topics; a worker
    that dies hands its partitions, and their state from the changelog, to the others.
    """
    settings = build_settings(**opts)
    if settings.web_port == 0:  # Faust binds its web port even when disabled: give it a free one
        from baton.streams.net import free_port

        settings = settings.model_copy(update={"web_port": free_port()})
    policy = load_policy(settings.policy)
    _ensure_topics(settings)
    from faust import Worker

    from baton.processors.app import GovernanceWorker

    gw = GovernanceWorker(settings, policy)
    # The runs table keeps thousands of long-lived objects; with CPython's default GC
    # thresholds, collections scanning them cost ~35 us per event (measured). Freeze what
    # start-up allocated and collect young objects less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    click.echo(
        f"baton worker {gw.worker_id}: Kafka {settings.bootstrap}, policy {policy.version}, "
        f"{settings.partitions} partitions",
        err=True,
    )
    level = logging.getLogger().getEffectiveLevel()
    Worker(
        gw.app,
        loglevel=logging.getLevelName(min(level, logging.WARNING)).lower(),
        quiet=True,
        redirect_stdouts=False,
    ).execute_from_commandline()


# ---------------------------------------------------------------------------- up
def _spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    from baton.streams.embedded import kill_when_parent_dies

    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")  # noqa: SIM115 - lives as long as the child
    return subprocess.Popen(
        [sys.executable, "-m", "baton.cli", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        preexec_fn=kill_when_parent_dies,
    )


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@click.command("up")
@click.option("--port", type=int, default=None, help="broker port [default: a free port]")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path(".baton"),
    show_default=True,
    envvar="BATON_DATA_DIR",
    help="logs, worker state and the embedded ClickHouse (chDB) live here",
)
@click.option(
    "--sql-port",
    type=int,
    default=8123,
    show_default=True,
    envvar="BATON_SQL_PORT",
    help="ClickHouse-compatible HTTP port for `baton sql` while up runs",
)
@click.option("--no-audit", is_flag=True, help="do not start the audit sink and the alerter")
@setting_options("policy", "partitions", "session_timeout_s")
def up_cmd(port: int | None, data_dir: Path, sql_port: int, no_audit: bool, **opts: Any) -> None:
    """Start everything on this machine: embedded Kafka broker, topics, one worker, the
    ClickHouse audit sink (chDB) and the stop alerter. Prints a line with `ready` and the
    bootstrap address once it decides, and stops it all on Ctrl-C or SIGTERM."""
    from baton.streams.embedded import EmbeddedBroker

    data_dir = data_dir.resolve()
    settings = build_settings(**opts)
    policy = load_policy(settings.policy)  # fail before starting anything on a bad policy
    logs = data_dir / "logs"
    broker = EmbeddedBroker(port=port, log_dir=logs)
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False
    starting = True

    class _Interrupted(Exception):
        pass

    def _stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if starting:  # abort a start-up that may wait a minute for the worker or the sink
            raise _Interrupted

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        click.echo(f"baton up: starting the embedded Kafka broker (logs in {logs})", err=True)
        broker.start()
        settings = build_settings(**{**opts, "bootstrap": broker.bootstrap})
        catalog = _ensure_topics(settings)
        env = {
            **os.environ,
            "BATON_BOOTSTRAP": broker.bootstrap,
            "BATON_PARTITIONS": str(settings.partitions),
            "BATON_SESSION_TIMEOUT_S": str(settings.session_timeout_s),
            "BATON_WORKER_DATA_DIR": str(data_dir / "worker"),
            "BATON_CLICKHOUSE_DSN": f"chdb://{data_dir / 'chdb'}",
        }
        if settings.policy:
            env["BATON_POLICY"] = str(Path(settings.policy).resolve())
        from baton.streams.net import free_port

        children["worker"] = _spawn(
            ["worker", "--web-port", str(free_port())], env, logs / "worker.log"
        )
        if not no_audit:
            for name, args in _audit_children(sql_port):
                children[name] = _spawn(args, env, logs / f"{name}.log")
        from baton.processors.probe import wait_until_deciding

        click.echo(f"baton up: waiting for the worker (policy {policy.version})", err=True)
        took = wait_until_deciding(
            settings.kafka_config(),
            catalog.requests,
            catalog.decisions,
            settings.partitions,
            timeout_s=90,
        )
        if not no_audit:
            _wait_for_sql(sql_port, children, logs)
        extra = "" if no_audit else f" sql=http://127.0.0.1:{sql_port}"
        click.echo(
            f"baton up: ready bootstrap={broker.bootstrap}{extra} "
            f"(worker answered in {took:.1f} s; Ctrl-C stops)",
            err=False,
        )
        sys.stdout.flush()
        starting = False
        while not stopping:
            for name, child in children.items():
                code = child.poll()
                if code is not None:
                    raise BatonError(
                        f"the {name} exited with code {code}; last log lines:\n"
                        f"{_tail(logs / f'{name}.log')}"
                    )
            time.sleep(0.2)
        click.echo("baton up: stopping", err=True)
    except _Interrupted:
        click.echo("baton up: interrupted during start-up; stopping", err=True)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        broker.stop()


def _wait_for_sql(
    port: int, children: dict[str, subprocess.Popen[bytes]], logs: Path, timeout_s: float = 60.0
) -> None:
    """The sink opens chDB and migrates before it serves SQL: wait for its /ping."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sink = children.get("sink")
        if sink is not None and sink.poll() is not None:
            raise BatonError(
                f"the audit sink exited with code {sink.returncode}; last log "
                f"lines:\n{_tail(logs / 'sink.log')}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise BatonError(
        f"the audit sink did not serve SQL on 127.0.0.1:{port} within "
        f"{timeout_s:g} s; see {logs / 'sink.log'}"
    )


def _audit_children(sql_port: int) -> list[tuple[str, list[str]]]:
    """The sink (which also serves SQL over chDB) and the alerter, once they exist."""
    try:
        from baton.cli import audit_cmds  # noqa: F401
    except ImportError:
        return []
    return [("sink", ["sink", "--sql-port", str(sql_port)]), ("alerts", ["alerts"])]


# ---------------------------------------------------------------------------- kill
@click.command("kill")
@click.option("--run", "run_id", help="stop every handoff of this run")
@click.option("--tenant", help="stop every handoff of this tenant")
@click.option("--global", "everything", is_flag=True, help="stop every handoff of every run")
@click.option("--release", is_flag=True, help="lift the kill switch instead")
@click.option("--reason", default="", help="why (recorded in the audit)")
@click.option(
    "--operator",
    default=lambda: os.environ.get("USER", "operator"),
    help="who (recorded in the audit) [default: $USER]",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="wait until a worker has applied it (its control record is on gov.decisions)",
)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="seconds to wait")
@setting_options("bootstrap", "topic_prefix", "partitions")
def kill_cmd(
    run_id: str | None,
    tenant: str | None,
    everything: bool,
    release: bool,
    reason: str,
    operator: str,
    wait: bool,
    timeout: float,
    **opts: Any,
) -> None:
    """Publish a kill switch (or its release) for a run, a tenant, or everything.

    By default it returns once a worker has applied the switch, so every handoff decided
    afterwards is decided under it; exit 4 when Kafka or no worker answers in time.
    """
    if len([x for x in (run_id, tenant, everything or None) if x]) != 1:
        raise click.UsageError("give exactly one of --run RUN_ID, --tenant T, --global")
    settings = build_settings(**opts)
    from baton.streams.client import OperatorClient

    client = OperatorClient(
        settings=settings, timeout=timeout, connect_timeout=settings.connect_timeout_s
    )
    try:
        switch = client.release if release else client.kill
        record = switch(
            run_id=run_id,
            tenant=tenant,
            everything=everything,
            operator=operator,
            reason=reason,
            wait=wait,
        )
    finally:
        client.close()
    scope = "run" if run_id else "tenant" if tenant else "global"
    target = run_id or tenant or "*"
    what = "released" if release else "engaged"
    confirmed = f" (applied by worker {record.worker})" if record is not None else ""
    click.echo(f"kill switch {what}: scope={scope} target={target}{confirmed}")


def register(cli: click.Group) -> None:
    cli.add_command(worker_cmd)
    cli.add_command(up_cmd)
    cli.add_command(kill_cmd)
