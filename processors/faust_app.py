"""The Faust app of one worker, configured from the settings: broker, source topic, ``runs`` table.

The worker (``processors/app.py``) adds its agent and timers; everything Faust is told
here is a setting Baton relies on (no web server, memory store, our own transport).
"""

from __future__ import annotations

import logging
from typing import Any

from faust.tables import TableManager

from baton.processors import faust_adapter, faust_fetch_codec, faust_restore
from baton.processors.control_seal import seal_keys
from baton.processors.credentials import faust_credentials
from baton.processors.faust_adapter import GovernedApp, WorkerRuntime
from baton.processors.state_gate import StateGate
from baton.schemas.settings import Settings
from baton.streams.topics import TopicCatalog, changelog_topic

__all__ = ["build_app", "runs_table", "source_topic"]

log = logging.getLogger("baton.processors.app")


class _PromptTableManager(TableManager):  # type: ignore[misc]
    """Faust's table manager without the one-second pause its start gives tables still
    being defined: the worker's only table (``runs``) is defined before the app starts
    (processors/app.py), so the pause only delayed every start and every restart."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


def build_app(s: Settings, runtime: WorkerRuntime) -> GovernedApp:
    """A Faust app on the ``baton-kafka://`` transport, carrying ``runtime``."""
    faust_adapter.register()
    faust_restore.register()
    faust_fetch_codec.install()  # the consumer thread's fetches, written and read with struct
    servers = ";".join(f"{faust_adapter.SCHEME}://{h.strip()}" for h in s.bootstrap.split(","))
    app = GovernedApp(
        runtime,
        s.app_id,
        broker=servers,
        # memory, its newly assigned changelog partitions read by librdkafka before Faust's
        # recovery (processors/faust_restore.py; BATON_FAST_RESTORE=0: Faust's alone), every
        # record through the state gate when the workers have a key (state_gate.py)
        store=f"{faust_restore.SCHEME}://",
        autodiscover=False,
        datadir=str(s.worker_data_dir),
        web_port=s.web_port,
        web_enabled=False,
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        topic_disable_leader=True,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=max(s.session_timeout_s / 6, 0.5),
        broker_rebalance_timeout=max(s.session_timeout_s * 2, 10),
        stream_recovery_delay=0.0,
        processing_guarantee="at_least_once",
        # acknowledged offsets are committed this often (Faust's default 2.8 s): what a
        # successor reads again after a kill -9 (under exactly-once each batch's
        # transaction commits its own, processors/faust_adapter.py)
        broker_commit_interval=s.commit_interval_s,
        broker_credentials=faust_credentials(s),
        # a batch is one fetch (WorkerRuntime.on_batch): this bounds it
        broker_max_poll_records=s.batch_size,
        TableManager=_PromptTableManager,
    )
    app.restore_config = s.kafka_config() if s.fast_restore else None
    keys = seal_keys(s, s.worker_data_dir)
    topic = changelog_topic(s.app_id)
    app.state_gate = StateGate(keys, topic, s.partitions, s.tombstone_retention_s) if keys else None
    if not keys:
        log.warning(
            "no seal key (BATON_AUDIT_CHAIN_KEY[_FILE], or seal.key in %s): run states are restored "
            "from the changelog unchecked (anyone who can write it can reset a run)",
            s.worker_data_dir,
        )
    return app


def source_topic(app: GovernedApp, catalog: TopicCatalog, partitions: int) -> Any:
    """The requests and approvals topics, as raw bytes (the batch step parses them)."""
    return app.topic(
        catalog.requests,
        catalog.approvals,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )


def runs_table(app: GovernedApp, partitions: int) -> Any:
    """The ``runs`` table: run_id -> the run state's bytes."""
    return app.Table(
        "runs",
        default=None,
        partitions=partitions,
        # raw bytes both ways: the changelog holds RunState.to_bytes(), which we write
        # ourselves; recovery leaves bytes in the store and RunStore decodes them lazily
        key_type=bytes,
        value_type=bytes,
        # safe: every event is decided on its key's murmur2 partition (others are forwarded)
        use_partitioner=True,
        help="run_id -> RunState (owners, agents, counters, spend, approvals, dedup marks)",
    )
