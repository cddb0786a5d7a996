"""The audit sink: gov.decisions from Kafka into ``governance.decisions`` in batches, at least once.

Guarantees (with ``FINAL`` or the views, the audit is exact):
- nothing read is lost: offsets are committed only after the batch holding them is in
  ClickHouse; a crash (even ``kill -9``) re-reads from the last commit;
- nothing is reordered: per partition, records go in offset order, and a failed insert is
  retried - same rows, same ``insert_deduplication_token`` - before anything newer;
- copies fold: a retried insert that ClickHouse had in fact stored is dropped by its token,
  and every other duplicate (Kafka redelivery, a re-read after a crash) by the
  ReplacingMergeTree on ``decision_id`` at merge time or ``FINAL`` at query time;
- no record can stop it: one that cannot be a row - not a Decision, a number or time its
  column cannot hold, a ``decided_at`` outside the audit's window, a row ClickHouse itself
  refuses (found by splitting the insert in halves until it is alone) - goes to
  ``governance.rejected`` with its bytes, error and ``error_kind``, and the batch goes on.
  Only ClickHouse failing as a server (unreachable, timeouts, a missing table) holds the
  sink, which then retries;
- the same rows whoever parses: records are parsed and encoded in ``sink_parse_processes``
  helper processes (chDB opens a directory in one process only: this one reads, writes and
  commits), with the in-process code; a helper that dies, a block ClickHouse refuses or a
  revoke makes the sink parse that batch itself.

Not guaranteed: plain ``count()`` without ``FINAL`` may count a duplicate until a merge; the
token does not catch a re-read after a crash (the batch boundaries differ then); ``close()``
does not run on ``kill -9`` (nothing is lost, the tail is read again); a server error the
sink does not know as a data error is retried, so a row that triggers one would hold the
sink (every known data error code is in ``audit_insert.ROW_DATA_CODES``).
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from typing import Any

from baton.schemas.settings import Settings
from baton.sinks.audit_batch import DECISIONS_TABLE, REJECTED_TABLE, AuditBatch, write_batch
from baton.sinks.audit_insert import load_insert_imports
from baton.sinks.clickhouse import parse_dsn
from baton.sinks.sink_loop import AuditSink
from baton.sinks.sink_start import (
    StoppedWaiting,
    decisions_topic,
    ensure_catalog_topics,
    open_audit,
    stops_topic,
)
from baton.sinks.sink_stats import SinkStats
from baton.streams.kafka import output_isolation

__all__ = [
    "DECISIONS_TABLE",
    "REJECTED_TABLE",
    "AuditBatch",
    "AuditSink",
    "SinkStats",
    "StoppedWaiting",
    "audit_mac_keys",
    "decisions_topic",
    "ensure_catalog_topics",
    "open_audit",
    "run_sink",
    "stops_topic",
    "write_batch",
]

log = logging.getLogger(__name__)


def audit_mac_keys(settings: Settings) -> tuple[bytes, ...]:
    """The keys the workers put the audit MAC on their decisions with (schemas/record_mac.py):
    BATON_AUDIT_CHAIN_KEY and the workers' data dir's seal.key, those there are; said in the
    log, for a record without the MAC is then rejected (``forged``)."""
    from baton.processors.control_seal import seal_keys

    keys = tuple(seal_keys(settings, settings.worker_data_dir))
    if keys:
        log.info(
            "audit sink: a record without the workers' audit MAC (their seal.key in %s or "
            "BATON_AUDIT_CHAIN_KEY) is rejected as forged",
            settings.worker_data_dir,
        )
    else:
        log.warning(
            "audit sink: no workers' key (no BATON_AUDIT_CHAIN_KEY, no seal.key in %s): any "
            "writer of the decisions topic can put rows in the audit",
            settings.worker_data_dir,
        )
    return keys


def run_sink(
    settings: Settings,
    stop_event: threading.Event,
    *,
    sql_host: str = "127.0.0.1",
    sql_port: int | None = 8123,
    topic: str | None = None,
    group_id: str | None = None,
    consumer_overrides: dict[str, Any] | None = None,
    on_ready: Callable[[AuditSink, Any], None] | None = None,
    on_report: Callable[[SinkStats], None] | None = None,
    report_every_s: float = 10.0,
    drain_event: threading.Event | None = None,
) -> SinkStats:
    """Run the audit sink until ``stop_event`` is set, or ``drain_event`` is and the topic is
    read to its end (``sinks.sink_end``); returns its stats.

    Connects to ``settings.clickhouse_dsn`` (retrying while a server is down), migrates the
    schema, and with a chDB DSN serves SQL on ``sql_host:sql_port`` (None: do not serve; 0:
    any free port) for the processes that cannot open the directory. ``on_ready(sink,
    sql_server_or_None)`` is called once everything is up (``baton up`` prints the URL);
    ``on_report(stats)`` every ``report_every_s`` (default: an INFO log line with the lag).
    """
    label = parse_dsn(settings.clickhouse_dsn).label
    # a batch is thousands of young containers (parsed records, rows, clickhouse-connect's
    # columns): at CPython's default gen-0 threshold (700) the collector ran ~50 times per
    # 10,000 rows, ~5 us a row, an eighth of the sink's time (measured: bench/RESULTS.md)
    gc.set_threshold(50_000, 20, 100)
    mac_keys = audit_mac_keys(settings)  # (a key file that does not read: ConfigError, now)
    try:
        if topic is None:
            ensure_catalog_topics(settings, stop_event)
        client = open_audit(
            settings.clickhouse_dsn,
            settings.audit_ttl_days,
            stop_event,
            ca_cert=settings.clickhouse_ca,
            verify=settings.clickhouse_verify,
            timeout_s=settings.clickhouse_timeout_s,
        )
    except StoppedWaiting as stopped:  # nothing read yet: a stop like any other
        log.warning("audit sink: %s; nothing was read", stopped)
        return SinkStats()
    load_insert_imports()
    server = None
    try:
        if parse_dsn(settings.clickhouse_dsn).kind == "chdb" and sql_port is not None:
            from baton.sinks.sqlserver import serve_sql

            server = serve_sql(client, sql_host, sql_port)
        overrides: dict[str, Any] = {
            "isolation.level": output_isolation(getattr(settings, "processing_guarantee", None))
        }
        session_timeout_s = getattr(settings, "session_timeout_s", None)
        if session_timeout_s:
            overrides["session.timeout.ms"] = int(session_timeout_s * 1000)
        overrides.update(consumer_overrides or {})
        sink = AuditSink(
            settings.kafka_config(),
            client,
            topic or decisions_topic(settings),
            group_id=group_id or f"{settings.app_id}-audit",
            batch_size=settings.sink_batch_size,
            batch_timeout_s=settings.sink_batch_timeout_s,
            consumer_overrides=overrides,
            label=label,
            report_every_s=report_every_s,
            on_report=on_report,
            ttl_days=settings.audit_ttl_days,
            parse_processes=settings.sink_parse_processes,
            max_receive_bytes=settings.sink_max_receive_bytes,
            mac_keys=mac_keys,
        )
        if on_ready is not None:
            on_ready(sink, server)
        sink.run(stop_event, drain_event)
        return sink.stats
    finally:
        if server is not None:
            server.close()
        client.close()
