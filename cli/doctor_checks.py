"""The checks of ``baton doctor`` outside Kafka (policy, audit, SQL endpoint, webhook), and
the finding every check returns.

They read and never write: the policy file, the audit's migrations table, the SQL endpoint
with its token, and a TCP connection to the webhook's host (never a POST: that would alert).
The Kafka checks are in ``cli/doctor_kafka.py``.

Not guaranteed: a check that passes says what the deployment looked like at that moment.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from baton.cli.sql_probe import sql_endpoint_answers
from baton.schemas.errors import BatonError
from baton.schemas.settings import Settings

__all__ = [
    "Check",
    "Status",
    "audit_checks",
    "fail",
    "gist",
    "ok",
    "policy_checks",
    "sink_health_checks",
    "sql_endpoint_check",
    "webhook_check",
]


class Status(StrEnum):
    OK = "ok"
    FAIL = "fail"
    #: nothing to check (e.g. no webhook configured): shown, never a failure
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, what was found, and how to fix it."""

    name: str
    status: Status
    detail: str
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "check": self.name,
            "status": str(self.status),
            "detail": self.detail,
            "hint": self.hint,
        }


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, detail)


def fail(name: str, detail: str, hint: str) -> Check:
    return Check(name, Status.FAIL, detail, hint)


# ------------------------------------------------------------------------------ policy
def policy_checks(
    settings: Settings, fold: Callable[..., tuple[Any, str]] | None, timeout: float
) -> list[Check]:
    """The policy file is valid; with ``fold`` (the broker answers), which policy the workers
    use after the control topic's updates."""
    from baton.cli.options import read_policy

    source = str(settings.policy) if settings.policy else "the seed policy (no BATON_POLICY)"
    try:
        policy = read_policy(settings.policy)
    except BatonError as exc:
        return [fail("policy file", str(exc), "`baton policy check FILE` names every bad key")]
    checks = [ok("policy file", f"{source} is valid (version {policy.version})")]
    if fold is None:
        return checks
    notes: list[str] = []
    try:
        current, origin = fold(settings, policy, source, timeout, notes.append)
    except BatonError as exc:
        return [
            *checks,
            fail("policy in force", str(exc), "is a worker running? (it creates gov.control)"),
        ]
    refused = sum(1 for line in notes if line.startswith("refused"))
    detail = f"version {current.version}, from {origin}"
    if refused:
        detail += f" ({refused} update(s) refused: `baton policy current` lists them)"
    if current.version != policy.version:
        # a published policy wins over the file: an operator who reads two green lines takes
        # the file for what decides (session 29: a looser publication decided, unnamed)
        detail += (
            f"; NOT the policy file's {policy.version}: a published policy decides, the file "
            "does not (publish the file with `baton policy publish FILE` to enforce it)"
        )
    return [*checks, ok("policy in force", detail)]


# ------------------------------------------------------------------------------ audit
def audit_checks(settings: Settings) -> Iterator[Check]:
    """ClickHouse answers at BATON_CLICKHOUSE_DSN and holds every migration, unchanged."""
    from baton.sinks.clickhouse import connect, parse_dsn
    from baton.sinks.schema import MIGRATIONS_TABLE, applied_migrations, load_migrations

    label = parse_dsn(settings.clickhouse_dsn).label
    try:
        client = connect(
            settings.clickhouse_dsn,
            ca_cert=settings.clickhouse_ca,
            verify=settings.clickhouse_verify,
        )
    except BatonError as exc:
        yield fail(
            "clickhouse",
            str(exc),
            "check BATON_CLICKHOUSE_DSN; `baton sink` creates and migrates the audit",
        )
        return
    try:
        yield ok("clickhouse", f"{label} answers")
        try:
            applied = applied_migrations(client)
        except Exception as exc:
            yield fail(
                "audit schema",
                f"no {MIGRATIONS_TABLE} in {label} ({gist(exc)[:120]}): never migrated",
                "start `baton sink` once against it: it applies the migrations at start",
            )
            return
        shipped = load_migrations()
        missing = [m for m in shipped if m.version not in applied]
        changed = [m for m in shipped if m.version in applied and applied[m.version] != m.checksum]
        if changed:
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in changed)
            yield fail(
                "audit schema",
                f"{names} applied with another checksum than this release's",
                "this Baton release and the audit disagree on a released migration: run the "
                "release that migrated it, or restore the audit from a backup",
            )
        elif missing:
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
            yield fail(
                "audit schema",
                f"{len(applied)} of {len(shipped)} migrations applied; missing {names}",
                "start `baton sink` (this release) once: it applies the missing migrations",
            )
        else:
            latest = shipped[-1]
            yield ok(
                "audit schema",
                f"all {len(shipped)} migrations applied, last {latest.version:04d}_{latest.name}",
            )
    finally:
        client.close()


def sql_endpoint_check(settings: Settings, *, reached: bool = True) -> Check:
    """Somebody serves SQL on the audit: a ClickHouse server does (when it answered the
    ``clickhouse`` check: ``reached``); with chDB, the sink must."""
    from baton.sinks.clickhouse import parse_dsn, read_endpoint

    target = parse_dsn(settings.clickhouse_dsn)
    name = "sql endpoint"
    if target.kind == "http" and not reached:
        return fail(
            name, f"the ClickHouse server {target.label} did not answer", "see the clickhouse line"
        )
    if target.kind == "http":
        return ok(name, f"the ClickHouse server {target.label} serves SQL (`baton sql --dsn ...`)")
    if target.chdb_path is None:
        return fail(
            name, "an in-memory chDB audit serves nobody", "use chdb:///abs/dir or a server"
        )
    endpoint = read_endpoint(target.chdb_path)
    if endpoint is None:
        return fail(
            name,
            f"no process serves SQL for {target.label}",
            "`baton sink --sql-port 8123` serves it (baton up does, unless --sql-port off)",
        )
    url = parse_dsn(endpoint).label
    if not sql_endpoint_answers(endpoint, timeout_s=3):
        return fail(
            name, f"{url} is registered but does not answer", "restart `baton sink`; see its log"
        )
    return ok(name, f"{url} answers (token in {target.chdb_path}/baton-sql-endpoint.json)")


# ------------------------------------------------------------------------------ alerts
def webhook_check(settings: Settings, timeout: float) -> Check:
    """The alerter's webhook: a URL whose host answers (never called: that would post)."""
    name = "alert webhook"
    secret = settings.webhook_url.get_secret_value() if settings.webhook_url else ""
    if not secret:
        return Check(
            name,
            Status.SKIP,
            "none set: `baton alerts` prints stops on its console only",
            "set BATON_WEBHOOK_URL to a Slack incoming webhook to post them",
        )
    from baton.schemas.errors import ConfigError
    from baton.sinks.alert_post import check_webhook_url

    example = "BATON_WEBHOOK_URL=https://hooks.slack.com/services/…"
    try:  # a port past 65535 or a broken IPv6 bracket raised ValueError: "report a bug"
        check_webhook_url(secret)
    except ConfigError as exc:
        return fail(name, str(exc), example)
    parts = urlsplit(secret)
    # the path of a Slack webhook is its secret: only scheme and host are ever shown
    shown = f"{parts.scheme}://{parts.hostname or '?'}/…"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except UnicodeError as exc:  # a host name IDNA cannot encode (a label past 63 characters)
        return fail(name, f"{shown[:100]}: not a host name ({gist(exc)})", example)
    except OSError as exc:
        return fail(
            name,
            f"{shown} port {port}: {gist(exc)}",
            "is the host reachable from here (proxy, DNS)?",
        )
    plain = (
        " (plain http: the URL's secret crosses the network readable)"
        if parts.scheme == "http"
        else ""
    )
    return ok(name, f"{shown} reachable{plain}")


def gist(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


# ------------------------------------------------------------------------------ audit sink
def sink_health_checks(data_dir: Path | None, timeout: float) -> list[Check]:
    """Whether the `baton up` audit sink's inserts fail (its ``baton_audit_failing`` on the
    /metrics its stack record names); no line for a stack without one (a sink of your own:
    watch that metric). A sink that retried a full disk for minutes passed every check: its
    lag read 11 while 30 decisions waited, ClickHouse answered reads (session 29, H3). A
    sink serving no such sample has not connected: not ok (it read 0, session 30, H3)."""
    from baton.cli.stack_record import find_stack
    from baton.cli.top_metrics import check_metrics_url, scrape

    found = find_stack(data_dir)
    record = found.record
    if record is None or not record.live(found.data_dir) or not record.sink_metrics_url:
        return []
    view = scrape(check_metrics_url(record.sink_metrics_url), timeout_s=timeout)
    log = record.logs.get("sink", "the sink's log")
    if view.error is not None:
        return [fail("audit sink", f"its /metrics did not answer: {view.error}", f"see {log}")]
    failing = [value for _labels, value in view.samples.get("baton_audit_failing", [])]
    if not failing:  # served before the sink's consumer and ClickHouse are up: no sample
        return [
            fail(
                "audit sink",
                "it has not connected to Kafka and ClickHouse yet (no baton_audit_failing on "
                "its /metrics): nothing is audited until it does",
                f"wait a few seconds and run doctor again; if it stays, {log} says why",
            )
        ]
    if any(failing):
        return [
            fail(
                "audit sink",
                "its inserts into ClickHouse fail (baton_audit_failing 1): decisions wait in "
                "Kafka, unaudited, until they succeed",
                f"{log} says why (a full disk, ClickHouse refusing); it retries on its own",
            )
        ]
    return [ok("audit sink", "inserting (baton_audit_failing 0)")]
