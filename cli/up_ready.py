"""When the stack ``baton up`` starts is ready: the worker decides and the SQL endpoint answers."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from baton.schemas.errors import AuditUnavailable, BrokerUnavailable
from baton.schemas.settings import Settings

__all__ = ["PROGRESS_EVERY_S", "READY_TIMEOUT_S", "Readiness", "announce_new_sql_token"]

#: how long `baton up` waits for the worker to answer a probe, and then for the SQL endpoint
READY_TIMEOUT_S = 90.0
#: a line says what `baton up` still waits for this often (a start took 12-26 s, silent)
PROGRESS_EVERY_S = 5.0


class Readiness(threading.Thread):
    """Waits, off the supervision loop, until the worker decides and the sink serves SQL."""

    def __init__(
        self,
        settings: Settings,
        catalog: Any,
        sql_port: int | None,
        chdb_dir: Path,
        decision_keys: str = "",
    ) -> None:
        super().__init__(name="baton-up-readiness", daemon=True)
        self.settings, self.catalog, self.sql_port = settings, catalog, sql_port
        #: the stack's public key: only an answer its workers signed says they decide
        self.decision_keys = decision_keys
        self.chdb_dir = chdb_dir
        self.sql_dsn: str | None = None  # with the sink's token, for the ready line
        self.took: float | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        #: what is waited for now: "worker", then "sql" (the audit sink's endpoint)
        self.stage = "worker"

    def run(self) -> None:
        from baton.processors.probe import wait_until_deciding
        from baton.schemas.decision_signing import decision_keys

        logs = self.chdb_dir.parent / "logs"
        try:
            try:
                took = wait_until_deciding(
                    self.settings.kafka_config(),
                    self.catalog.requests,
                    self.catalog.decisions,
                    self.settings.partitions,
                    timeout_s=READY_TIMEOUT_S,
                    keys=decision_keys(self.decision_keys, unset=""),
                )
            except BrokerUnavailable as exc:
                raise BrokerUnavailable(
                    f"the worker did not come up: {exc}; see its log, {logs / 'worker.log'}"
                ) from None
            if self.sql_port is not None:  # 0: the port the sink picked
                self.stage = "sql"
                self.sql_dsn = _wait_for_sql(self.sql_port or None, self.chdb_dir)
            self.took = took
        except BaseException as exc:  # handed to the supervision loop, which raises it
            self.error = exc

    def progress(self) -> str:
        """What `baton up` still waits for, and for how long already (a progress line)."""
        waited = time.monotonic() - self.started
        if self.stage == "worker":
            what = "the worker to answer a probe (it starts, joins its group, takes its partitions)"
        else:
            what = "the audit sink's SQL endpoint (it opens chDB and applies migrations)"
        return f"still waiting for {what}: {waited:.0f} s of {READY_TIMEOUT_S:.0f}"


def _wait_for_sql(port: int | None, chdb_dir: Path, timeout_s: float = READY_TIMEOUT_S) -> str:
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
    from urllib.parse import urlsplit

    from baton.cli.sql_probe import sql_endpoint_answers
    from baton.sinks.clickhouse import read_endpoint

    dsn = read_endpoint(chdb_dir)
    if dsn is None or dsn == known or (port is not None and not dsn.endswith(f":{port}")):
        return None
    parts = urlsplit(dsn)
    if parts.hostname != "127.0.0.1" or parts.port is None:
        return None  # our sink serves on the loopback only; never send a token elsewhere
    return dsn if sql_endpoint_answers(dsn, timeout_s=2) else None


def announce_new_sql_token(readiness: Readiness, chdb_dir: Path, port: int | None) -> None:
    """A restarted sink serves SQL with a new token: print its DSN, as the ready line did
    (with --sql-port 0, on the new port it picked)."""
    dsn = _answering_sql_dsn(port or None, chdb_dir, known=readiness.sql_dsn)
    if dsn is not None:
        readiness.sql_dsn = dsn
        with contextlib.suppress(BrokenPipeError, ValueError):  # stdout's reader gone: go on
            click.echo(f"baton up: the SQL endpoint restarted with a new token: sql={dsn}")
            sys.stdout.flush()
