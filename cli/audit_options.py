"""What the audit commands share: the --dsn option, its settings and client, a stop on signals."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from clickhouse_connect.driver.client import Client

from baton.cli.stack_record import audit_settings, data_dir_option
from baton.schemas.settings import Settings

__all__ = ["audit_client", "dsn_option", "query_settings", "stop_on_signals"]

F = TypeVar("F", bound=Callable[..., Any])


def dsn_option(fn: F) -> F:
    fn = data_dir_option(fn)
    return click.option(
        "--dsn",
        "--clickhouse-dsn",
        "clickhouse_dsn",
        default=None,
        help="ClickHouse: http(s)://user:pass@host:8123/db, chdb:///abs/dir (a directory "
        "another baton process holds is queried through its SQL endpoint), or the endpoint "
        "itself with its token, http://baton:TOKEN@127.0.0.1:8123 (the sql= DSN of `baton "
        "up`'s ready line); wins over --data-dir [env BATON_CLICKHOUSE_DSN; for https:// "
        "also BATON_CLICKHOUSE_CA, the CA that signed the server's certificate, and "
        "BATON_CLICKHOUSE_VERIFY=false for a throwaway test server only; "
        "BATON_CLICKHOUSE_TIMEOUT_S (30) bounds the wait for a server's answer]",
    )(fn)


def query_settings(clickhouse_dsn: str | None, data_dir: Path | None) -> Settings:
    """Settings whose DSN the query commands use: --dsn, else the audit of --data-dir (whose
    SQL endpoint ``connect`` follows with the token registered there), else
    BATON_CLICKHOUSE_DSN, else the stack of BATON_DATA_DIR or ``./.baton``
    (``baton.cli.stack_record``)."""
    from baton.sinks.clickhouse import parse_dsn

    settings = audit_settings(clickhouse_dsn, data_dir)
    target = parse_dsn(settings.clickhouse_dsn)
    if target.chdb_path is not None:
        _check_endpoint_readable(target.chdb_path)
    return settings


def _check_endpoint_readable(chdb_dir: Path) -> None:
    """An endpoint file we may not read (another user's `baton up`: mode 0600) would read as
    "no endpoint registered"; say what it is instead."""
    from baton.schemas.errors import AuditUnavailable
    from baton.sinks.clickhouse import ENDPOINT_FILE

    endpoint = chdb_dir / ENDPOINT_FILE
    try:
        with endpoint.open("rb"):
            pass
    except FileNotFoundError:
        return
    except OSError as exc:
        raise AuditUnavailable(
            f"cannot read the SQL endpoint's token in {endpoint}: {exc.strerror or exc}; it is "
            "readable by the user who runs `baton up` only (mode 0600): run as that user, or "
            "pass --dsn http://baton:TOKEN@127.0.0.1:PORT (the sql= DSN of its ready line)"
        ) from None


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM, so loops stop cleanly (flush, commit, close)."""
    stop = threading.Event()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handle(signum: int, _frame: Any) -> None:
        stop.set()

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def audit_client(settings: Settings) -> Iterator[Client]:
    from baton.sinks.clickhouse import connect

    client = connect(
        settings.clickhouse_dsn,
        ca_cert=settings.clickhouse_ca,
        verify=settings.clickhouse_verify,
        timeout_s=settings.clickhouse_timeout_s,
    )
    try:
        yield client
    finally:
        client.close()
