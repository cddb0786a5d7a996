"""``baton worker``: run one governance worker process against a Kafka cluster."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any, NoReturn

import click

from baton.cli.options import build_settings, read_policy, setting_options
from baton.schemas.errors import ConfigError
from baton.schemas.settings import Settings

__all__ = ["create_topics", "register", "spill_replies", "worker_cmd"]


def create_topics(settings: Settings) -> Any:
    from baton.streams.kafka import admin_config
    from baton.streams.topics import TopicCatalog, ensure_topics

    catalog = TopicCatalog.from_settings(settings)
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
    "hold_idle_s",
    "fast_restore",
    "spill_replies",
    "spill_max_bytes",
    "run_state_max_bytes",
    "max_runs",
    "max_state_bytes",
    "control_max_staleness_s",
    "batch_size",
    "fetch_max_wait_ms",
    "commit_interval_s",
    "max_decompressed_batch_bytes",
    "processing_guarantee",
    "worker_producer",
    "consumer_loop",
    "transactional_id",
    "transaction_timeout_ms",
    "worker_data_dir",
    "replication_factor",  # (audit_chain_key: BATON_AUDIT_CHAIN_KEY only, never in `ps`)
    "decision_signing_key",  # (a file's path: the key stays in the file)
    "metrics_port",
    "metrics_host",
    "log_format",
)
def worker_cmd(**opts: Any) -> None:
    """Run one governance worker against an existing Kafka cluster (run several to scale out).

    Workers with the same --app-id share the partitions of the run-keyed topics; a worker
    that dies hands its partitions, and their state from the changelog, to the others.

    The audit's chain key is BATON_AUDIT_CHAIN_KEY, or the file BATON_AUDIT_CHAIN_KEY_FILE
    names (mode 600, `baton keys chain FILE`), from the environment only (a flag's value is
    in every local user's `ps`); the same on every worker, the sink and `baton audit verify`.
    """
    settings = build_settings(**opts)
    from baton.cli.log_format import LogOutput, logging_config

    output = LogOutput(settings.log_format, "worker")  # from here on, errors in this format too
    output.install()
    if settings.web_port == 0:  # Faust binds its web port even when disabled: give it a free one
        from baton.streams.net import free_port

        settings = settings.model_copy(update={"web_port": free_port()})
    policy = read_policy(settings.policy)
    from baton.processors.self_check import check_batch_step
    from baton.streams.topics import TopicCatalog

    # probe events through the batch step as Faust hands them over: a build that cannot
    # decide them ends here (exit 1, the error), never a worker that stops every event
    check_batch_step(policy, TopicCatalog.from_settings(settings))
    _make_data_dir(settings.worker_data_dir)
    from baton.streams.net import check_reachable

    check_reachable(settings.bootstrap, settings.connect_timeout_s)
    # the worker holds every run's state (thousands of objects each) and allocates a few per
    # event: at CPython's default gen-0 threshold (700) the collector walked the live runs so
    # often that it took a third of the batch step (bench/RESULTS.md, 2026-11-29)
    gc.set_threshold(100_000, 50, 100)
    # glibc kept ~280 B a run of freed heap between the runs table's blocks (allocator.py)
    from baton.processors.allocator import keep_heap_compact

    keep_heap_compact()
    spill_replies(settings)
    create_topics(settings)
    from baton.processors.app import GovernanceWorker

    gw = GovernanceWorker(settings, policy)
    from baton.processors.metrics_serve import serve_from_settings

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
    worker = _worker_class()(
        gw.app,
        loglevel=loglevel.lower(),
        quiet=True,
        redirect_stdouts=False,
        logging_config=logging_config(settings.log_format, "worker", loglevel),
    )
    if not worker.stdout.isatty():  # its spinner writes cursor escapes into log files
        worker.spinner = None
    worker.execute_from_commandline()


def _worker_class() -> type[Any]:
    """Faust's ``Worker`` without the two seconds its stop sleeps for nothing.

    mode's ``Worker._shutdown_loop`` waits up to 1 s for the tasks left once every service has
    stopped to end on their own, cancels them, then sleeps 1 s more (``_sentinel_task``). The
    tasks left are the idle loops of the aiokafka producer's client (its sender, connection
    reader, metadata refresh: measured, session 37), which never end on their own: every stop
    of a worker took 2 s longer than its work. Here they are cancelled at once and awaited
    (for at most 1 s). Nothing a guarantee rests on is in them: the consumer has stopped and
    committed, and a record they had not sent is one a kill -9 would not have sent either.
    """
    import asyncio

    from faust import Worker

    class _Worker(Worker):  # type: ignore[misc]
        def _gather_all(self) -> None:
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))

        async def _sentinel_task(self) -> None:
            await asyncio.sleep(0)

    return _Worker


def spill_replies(settings: Settings) -> None:
    """Decoded runs' kept replies in a spill file under the data directory
    (processors/state_spill.py), unless ``BATON_SPILL_REPLIES`` is false."""
    if settings.spill_replies:
        from baton.processors.state_spill import configure

        configure(
            settings.worker_data_dir / "spill", max_bytes=settings.spill_max_bytes, lost=_spill_lost
        )


def _spill_lost(why: str) -> NoReturn:
    """A kept reply cannot be read back from the spill: end the worker committing nothing;
    the restart restores its runs, replies and all, from the changelog."""
    from baton.processors.exits import EXIT_SPILL_LOST, exit_without_commit

    exit_without_commit(
        EXIT_SPILL_LOST, "a kept reply cannot be read back from the spill file (%s)", why
    )


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


def register(cli: click.Group) -> None:
    cli.add_command(worker_cmd)
