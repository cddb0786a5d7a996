"""``baton doctor``: check a deployment end to end and say, per check, what to fix."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from baton.cli.doctor_checks import (
    Check,
    Status,
    audit_checks,
    fail,
    ok,
    policy_checks,
    sink_health_checks,
    sql_endpoint_check,
    webhook_check,
)
from baton.cli.doctor_held import held_check
from baton.cli.doctor_kafka import KafkaView, group_checks, topic_checks
from baton.cli.doctor_lag import audit_lag_check
from baton.cli.doctor_seal import chain_key_check, decision_signing_check, seal_key_check
from baton.cli.options import FiniteFloatRange, build_settings, setting_help, setting_options
from baton.cli.signer import shown
from baton.cli.stack_record import data_dir_option, stack_settings
from baton.cli.up_audit import audit_kept_checks
from baton.cli.up_memory import broker_memory_checks
from baton.processors.compiled import compiled_modules
from baton.schemas.errors import BatonError
from baton.schemas.settings import Settings

__all__ = ["register"]

_MARKS = {Status.OK: "✔", Status.FAIL: "✘", Status.SKIP: "–"}
_KAFKA_LOG = logging.getLogger("baton.kafka")
#: the largest --max-lag: more events than any topic of a deployment holds
MAX_LAG = 10**12


@click.command("doctor")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: one line per check; json: {ok, checks: [{check, status, detail, hint}]}",
)
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0.5, max=60),
    default=5.0,
    show_default=True,
    help="seconds each broker or ClickHouse question may take",
)
@click.option(
    "--max-lag",
    # bounded as every numeric option is (session 10): a lag past 10^12 events is no lag a
    # topic holds; 1e20 passed and made the check unable to fail
    type=click.IntRange(min=0, max=MAX_LAG),
    default=10_000,
    show_default=True,
    help="events the workers may be behind before the lag check fails",
)
@data_dir_option
@setting_options(
    "bootstrap",
    "security_protocol",
    "connect_timeout_s",
    "topic_prefix",
    "partitions",
    "replication_factor",
    "app_id",
    "policy",
    "clickhouse_dsn",
    "webhook_url",
)
# --dsn as well, the name the other audit commands and doctor's own hints use (applied
# before setting_options, which then adds no second --clickhouse-dsn)
@click.option(
    "--dsn",
    "--clickhouse-dsn",
    "clickhouse_dsn",
    default=None,
    help=setting_help("clickhouse_dsn"),
)
def doctor_cmd(fmt: str, timeout: float, max_lag: int, data_dir: Path | None, **opts: Any) -> None:
    """Check a deployment: the broker, every topic (partitions, cleanup, retention), the
    workers' consumer group and its lag, ClickHouse and its migrations, the policy (valid,
    and which one the workers use), the SQL endpoint, the key the workers seal operators'
    command records with, and the alert webhook.

    One line per check, ✔ or ✘ with how to fix it (– for what is not configured); exit 0
    when nothing failed, 1 otherwise. It creates, commits and changes nothing; where the
    broker lists no group members (Tansu), it sends one readiness probe, as `baton up`
    does (a run_finished of a __probe_ run, tenant __baton__), to see a worker answer.
    """
    checks = list(run_checks(opts, data_dir, timeout, max_lag))
    failed = [c for c in checks if c.status == Status.FAIL]
    if fmt == "json":
        click.echo(
            json.dumps({"ok": not failed, "checks": [c.as_dict() for c in checks]}, indent=2)
        )
    else:
        for check in checks:
            click.echo(_line(check))
        click.echo(
            f"{len(checks) - len(failed)} of {len(checks)} checks passed"
            if failed
            else "all checks passed"
        )
    if failed:
        raise SystemExit(1)


def _line(check: Check) -> str:
    """One line for a terminal: what the broker reports (member client ids and hosts, error
    texts) is written by others, so control characters are shown escaped."""
    hint = f" — fix: {check.hint}" if check.hint and check.status == Status.FAIL else ""
    hint = hint or (f" ({check.hint})" if check.hint else "")
    return f"{_MARKS[check.status]} {shown(check.name)}: {shown(check.detail)}{shown(hint)}"


def run_checks(
    opts: dict[str, Any], data_dir: Path | None, timeout: float, max_lag: int
) -> Iterator[Check]:
    """Every check in report order; Kafka's are one line when the broker does not answer."""
    settings, kafka_problem, audit_problem = _settings(opts, data_dir)
    yield from _guarded("broker", lambda: _kafka_checks(settings, kafka_problem, timeout, max_lag))
    if audit_problem is not None:
        yield fail("clickhouse", str(audit_problem), "pass --dsn or BATON_CLICKHOUSE_DSN")
    else:
        # a server that takes the connection and never answers held doctor for the client's
        # 300 s read timeout: the section gets a deadline of its own
        deadline = 3 * timeout
        audit = _within("clickhouse", lambda: audit_checks(settings), deadline)
        yield from audit
        # a ClickHouse server that did not answer serves no SQL either: the line said ✔
        reached = bool(audit) and audit[0].status == Status.OK
        yield from _within(
            "sql endpoint", lambda: [sql_endpoint_check(settings, reached=reached)], deadline
        )
    yield from _guarded("audit sink", lambda: sink_health_checks(data_dir, timeout))
    yield from _guarded("embedded broker memory", lambda: broker_memory_checks(data_dir))
    yield from _guarded("audit of the stack", lambda: audit_kept_checks(data_dir))
    yield from _guarded("seal key", lambda: [seal_key_check(settings, data_dir)])
    yield from _guarded("chain key", lambda: [chain_key_check(settings, data_dir)])
    yield from _guarded("decision signing", lambda: [decision_signing_check(settings, data_dir)])
    yield from _guarded("alert webhook", lambda: [webhook_check(settings, timeout)])
    yield _core_check()


def _core_check() -> Check:
    """How this install's replay core runs: compiled or pure Python (never a failure)."""
    modules = compiled_modules()
    if modules:
        return ok("replay core", f"compiled (mypyc: {len(modules)} modules)")
    return Check(
        "replay core",
        Status.SKIP,
        "interpreted (pure Python)",
        "`pip install .` compiles it where gcc is found, an editable install never: docs/replay.md",
    )


def _guarded(name: str, checks: Callable[[], Iterable[Check]]) -> Iterator[Check]:
    """The checks of one section; one that raises is a failed line, never a traceback that
    hides the report."""
    try:
        yield from checks()
    except BatonError as exc:  # a setting that is wrong: say which, not "report a bug"
        yield fail(name, str(exc), "fix the setting it names")
    except Exception as exc:
        yield fail(
            name,
            f"the check itself failed: {type(exc).__name__}: {str(exc)[:300]}",
            "run `baton -vv doctor` and report it with its output",
        )


def _within(name: str, checks: Callable[[], Iterable[Check]], seconds: float) -> list[Check]:
    """The checks of one section, run in a thread and given ``seconds`` in all; past that
    the section is one failed line (the thread is left to end with the process)."""
    found: list[Check] = []
    worker = threading.Thread(target=lambda: found.extend(_guarded(name, checks)), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        return [
            fail(
                name,
                f"no answer within {seconds:g} s (the connection was taken, then nothing)",
                "is it a ClickHouse HTTP port (8123/8443)? raise --timeout for a slow server",
            )
        ]
    return found


def _settings(
    opts: dict[str, Any], data_dir: Path | None
) -> tuple[Settings, BatonError | None, BatonError | None]:
    """Settings for the checks, each connection found as client commands find theirs
    (flag, --data-dir, variable, BATON_DATA_DIR, ./.baton); a connection that cannot be
    found is returned as its error, to be reported as a failed check."""
    kafka = audit = None
    kafka_error = audit_error = None
    quiet = {"say": lambda _line: None}
    try:
        kafka = stack_settings(opts, data_dir, kafka=True, audit=False, **quiet)
    except BatonError as exc:
        kafka_error = exc
    try:
        audit = stack_settings(opts, data_dir, kafka=False, audit=True, **quiet)
    except BatonError as exc:
        audit_error = exc
    if kafka is not None and audit is not None:
        return kafka.model_copy(update={"clickhouse_dsn": audit.clickhouse_dsn}), None, None
    return kafka or audit or build_settings(**opts), kafka_error, audit_error


def _kafka_checks(
    settings: Settings, problem: BatonError | None, timeout: float, max_lag: int
) -> Iterator[Check]:
    from baton.streams.net import check_reachable

    if problem is not None:
        yield fail("broker", str(problem), "pass --bootstrap or BATON_BOOTSTRAP")
        yield from policy_checks(settings, None, timeout)
        return
    try:  # a refused port answers at once; librdkafka would retry it for the whole timeout
        check_reachable(settings.bootstrap, min(timeout, settings.connect_timeout_s))
    except BatonError as exc:
        yield fail(
            "broker",
            str(exc),
            "start the broker, or point at it with --bootstrap / BATON_BOOTSTRAP; topics, "
            "workers and the policy in force are checked once it answers",
        )
        yield from policy_checks(settings, None, timeout)
        return
    yield from _with_broker(settings, timeout, max_lag)


def _with_broker(settings: Settings, timeout: float, max_lag: int) -> Iterator[Check]:
    from confluent_kafka import Consumer
    from confluent_kafka.admin import AdminClient

    from baton.cli.policy_cmds import policy_in_force
    from baton.streams.kafka import admin_config, consumer_config, kafka_said
    from baton.streams.topics import TopicCatalog, changelog_topic

    admin = AdminClient(admin_config(settings.kafka_config()))
    catalog = TopicCatalog.from_settings(settings)
    names = [spec.name for spec in catalog.specs()] + [changelog_topic(settings.app_id)]
    try:
        view = KafkaView.read(admin, names, timeout)
    except Exception as exc:
        said = kafka_said(exc)
        yield fail(
            "broker",
            f"{settings.bootstrap} accepts connections but no Kafka answer within {timeout:g} s "
            f"({said[:200]})",
            "is it a Kafka broker, with this security protocol (BATON_SECURITY_PROTOCOL)?",
        )
        yield from policy_checks(settings, None, timeout)
        return
    yield ok("broker", f"Kafka at {settings.bootstrap} answers ({len(view.partitions)} topics)")
    yield from topic_checks(view, settings)
    consumer = Consumer(
        consumer_config(settings.kafka_config(), "baton-doctor", {"logger": _KAFKA_LOG})
    )
    try:
        yield from group_checks(admin, consumer, settings, view, max_lag, timeout)
        yield audit_lag_check(admin, consumer, settings, view, max_lag, timeout)
    finally:
        consumer.close()
    present = {name: view.partitions[name] for name in names if name in view.partitions}
    yield held_check(settings, present, timeout)
    fold = policy_in_force if catalog.control in view.partitions else None
    checks = policy_checks(settings, fold, timeout)
    if fold is None and checks[0].status == Status.OK:
        checks.append(fail("policy in force", f"no {catalog.control} topic", "see its topic line"))
    yield from checks


def register(cli: click.Group) -> None:
    cli.add_command(doctor_cmd)
