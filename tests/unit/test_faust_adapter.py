"""The Faust adapter: the upstream code it forks or relies on is pinned; its runtime fails loudly.

An upgrade of faust-streaming or aiokafka that changes any function below fails here, naming
the function and what in processors/faust_adapter.py to re-check against it; once checked
(and the fork or override brought up to date), put the new hash in ``PINNED``.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import fields
from typing import Any

import aiokafka.consumer.consumer as aiokafka_consumer
import aiokafka.consumer.group_coordinator as aiokafka_group
import aiokafka.consumer.subscription_state as aiokafka_subscription
import faust
import pytest
from faust.stores import memory
from faust.tables import base, manager, recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode import threads

from baton.processors.faust_adapter import (
    GovernedApp,
    RunStore,
    WorkerRuntime,
    register,
    runtime_of,
)
from baton.processors.faust_app import build_app, runs_table
from baton.processors.state import RunState
from baton.schemas.settings import Settings
from baton.streams.partitioner import partition_for

pytestmark = pytest.mark.unit

_CONSUMER = faust_aiokafka.Consumer
_THREAD = faust_aiokafka.AIOKafkaConsumerThread

#: (what we reach, the upstream function, its defining qualname, sha256[:16] of its source,
#:  what to re-check in processors/faust_adapter.py when it changes)
PINNED: list[tuple[str, Any, str, str, str]] = [
    # forked or overridden
    ("Consumer._drain_messages", _CONSUMER._drain_messages, "Consumer._drain_messages",
     "44a2500309e83c63", "our fork _Consumer._drain_messages: port the upstream change"),
    ("Consumer._getmany", _CONSUMER._getmany, "ThreadDelegateConsumer._getmany",
     "f9d47aa9010b5ff2", "_Consumer._getmany (copies the active partitions)"),
    ("Consumer.perform_seek", _CONSUMER.perform_seek, "Consumer.perform_seek",
     "0e8c130ff4b0afd8", "_Consumer.perform_seek (seek epoch)"),
    ("Consumer.seek", _CONSUMER.seek, "Consumer.seek",
     "b86a9fe05f956b30", "_Consumer.seek (seek epoch)"),
    ("Consumer._new_consumer_thread", _CONSUMER._new_consumer_thread,
     "Consumer._new_consumer_thread", "0870ec53dea75083", "_Consumer._new_consumer_thread"),
    ("Consumer._commit", _CONSUMER._commit, "ThreadDelegateConsumer._commit",
     "a20eec84e4b2ed50", "_Consumer._commit (commits nothing under exactly-once)"),
    ("AIOKafkaConsumerThread._create_worker_consumer", _THREAD._create_worker_consumer,
     "AIOKafkaConsumerThread._create_worker_consumer", "c2701bfc3e6f6cad",
     "_ConsumerThread._create_worker_consumer (fetch wait, read_committed)"),
    ("AIOKafkaConsumerThread._highwaters", _THREAD._highwaters,
     "AIOKafkaConsumerThread._highwaters", "a7f4f97d9f32aca2",
     "_ConsumerThread._highwaters (committed ends of the changelogs)"),
    # relied on: private attributes and behaviour the fork and the adapter depend on
    ("Consumer.ack", _CONSUMER.ack, "Consumer.ack", "5fcf41cf45153475",
     "ack_fetched and the fork's acknowledgement of batches"),
    ("Consumer._add_gap", _CONSUMER._add_gap, "Consumer._add_gap", "4df2573ded7c1c2c",
     "the fork's gap registration"),
    ("Consumer.track_message", _CONSUMER.track_message, "Consumer.track_message",
     "217d7f1399a4cd8e", "the fork's track() of batched messages"),
    ("AIOKafkaConsumerThread._ensure_consumer", _THREAD._ensure_consumer,
     "AIOKafkaConsumerThread._ensure_consumer", "ff4a4c693b7ec63f", "membership()"),
    ("AIOKafkaConsumerThread.verify_event_path", _THREAD.verify_event_path,
     "AIOKafkaConsumerThread.verify_event_path", "b983e7735f647cb3",
     "ack_fetched (stream_inbound_time for the stall detector)"),
    ("memory.Store.__post_init__", memory.Store.__post_init__, "Store.__post_init__",
     "e59c82f3785458b2", "RunStore (data and _key_partition)"),
    ("memory.Store._create_batch_iterator", memory.Store._create_batch_iterator,
     "Store._create_batch_iterator", "b082c8bcc0403823", "RunStore (_key_partition)"),
    ("memory.Store.apply_changelog_batch", memory.Store.apply_changelog_batch,
     "Store.apply_changelog_batch", "71863e3cd727aac2", "RunStore (restored values)"),
    ("memory.Store.on_recovery_completed", memory.Store.on_recovery_completed,
     "Store.on_recovery_completed", "a00bef343e139602",
     "RunStore (revoked partitions' keys dropped by _key_partition)"),
    # processors/faust_restore.py: the store answers persisted_offset after reading the
    # changelog in the tables' on_rebalance, which the manager awaits before recovery's
    ("Recovery._add", recovery.Recovery._add, "Recovery._add", "1584a197b11bf835",
     "faust_restore: a persisted offset is where recovery starts (last applied)"),
    ("Recovery._seek_offsets", recovery.Recovery._seek_offsets, "Recovery._seek_offsets",
     "19598ca63d94d250", "faust_restore: seeks to the last applied offset, skips it"),
    ("Recovery._build_offsets", recovery.Recovery._build_offsets, "Recovery._build_offsets",
     "27eec86be06cb51f", "faust_restore: max(persisted, earliest - 1)"),
    ("TableManager.on_rebalance", manager.TableManager.on_rebalance,
     "TableManager.on_rebalance", "2d2c23a07bf54328",
     "faust_restore: the tables' on_rebalance before recovery's"),
    ("Collection.on_rebalance", base.Collection.on_rebalance, "Collection.on_rebalance",
     "0812ad692171a8fd", "faust_restore: the table hands on_rebalance to its store"),
    ("memory.Store.persisted_offset", memory.Store.persisted_offset,
     "Store.persisted_offset", "fbba5c6544979388", "faust_restore.RestoringStore overrides it"),
    ("Recovery._set_recovery_started", recovery.Recovery._set_recovery_started,
     "Recovery._set_recovery_started", "bcfebf81ae13fc75", "in_recovery()"),
    ("Recovery._set_recovery_ended", recovery.Recovery._set_recovery_ended,
     "Recovery._set_recovery_ended", "84badf3f2cfe0d02", "in_recovery()"),
    ("TableManager.recovery", manager.TableManager.recovery.fget, "TableManager.recovery",
     "f0bf5de78b4c3d23", "in_recovery()"),
    ("TableManager.on_start", manager.TableManager.on_start, "TableManager.on_start",
     "365dd25fbc0e0684", "processors/faust_app.py _PromptTableManager.on_start: the same "
     "without the 1 s pause"),
    ("aiokafka AIOKafkaConsumer.__init__", aiokafka_consumer.AIOKafkaConsumer.__init__,
     "AIOKafkaConsumer.__init__", "01506f316191f7c9",
     "_fetch_max_wait_ms, _isolation_level, _subscription, _coordinator"),
    ("aiokafka AIOKafkaConsumer.start", aiokafka_consumer.AIOKafkaConsumer.start,
     "AIOKafkaConsumer.start", "2f1ba70443327538",
     "_create_worker_consumer's attributes are read here to build the Fetcher"),
    ("aiokafka Assignment.state_value", aiokafka_subscription.Assignment.state_value,
     "Assignment.state_value", "183fea82ef48f3e6", "_ConsumerThread.source_positions"),
    ("aiokafka TopicPartitionState.has_valid_position",
     aiokafka_subscription.TopicPartitionState.has_valid_position.fget,
     "TopicPartitionState.has_valid_position", "ebe7c39d949a1f18",
     "_ConsumerThread.source_positions"),
    ("aiokafka TopicPartitionState.position",
     aiokafka_subscription.TopicPartitionState.position.fget,
     "TopicPartitionState.position", "816b6b289bd14f5c", "_ConsumerThread.source_positions"),
    ("aiokafka GroupCoordinator.__init__", aiokafka_group.GroupCoordinator.__init__,
     "GroupCoordinator.__init__", "9e729f077efc4f3a",
     "membership() (group_id, generation, member_id)"),
    # BATON_CONSUMER_LOOP=inline (processors/faust_inline.py): mode's thread service run
    # as a task on the parent loop
    ("mode ServiceThread.__init__", threads.ServiceThread.__init__, "ServiceThread.__init__",
     "82979878990cdff5", "faust_inline: thread_loop and Worker are taken as given"),
    ("mode ServiceThread.start", threads.ServiceThread.start, "ServiceThread.start",
     "f11841038a033a05", "faust_inline.InlineWorker (start(), then _thread_running awaited)"),
    ("mode ServiceThread.stop", threads.ServiceThread.stop, "ServiceThread.stop",
     "32d026539c3665b2", "_InlineConsumerThread.stop and InlineWorker.stop (no join)"),
    ("mode ServiceThread._serve", threads.ServiceThread._serve, "ServiceThread._serve",
     "67809eae09573ac7", "InlineWorker's task; _gather_remaining_tasks skipped"),
    ("mode ServiceThread._gather_remaining_tasks",
     threads.ServiceThread._gather_remaining_tasks,
     "ServiceThread._gather_remaining_tasks", "6f65b92dd1012485",
     "_InlineConsumerThread._gather_remaining_tasks (would cancel the worker's tasks)"),
    ("mode WorkerThread.run", threads.WorkerThread.run, "WorkerThread.run",
     "1b649242a70c4df3", "InlineWorker stands in for WorkerThread"),
    ("mode ServiceThread._keepalive2", threads.ServiceThread._keepalive2,
     "ServiceThread._keepalive2", "3bc84ca2133f05b0",
     "_InlineConsumerThread._keepalive2 (nothing: no thread to check)"),
    ("AIOKafkaConsumerThread.getmany", _THREAD.getmany, "AIOKafkaConsumerThread.getmany",
     "26fc5fc9f3b667e1", "_InlineConsumerThread.getmany does what it enqueues"),
    ("AIOKafkaConsumerThread._fetch_records", _THREAD._fetch_records,
     "AIOKafkaConsumerThread._fetch_records", "39a2c6c79fc1455a",
     "_InlineConsumerThread.getmany calls it directly"),
]  # fmt: skip


@pytest.mark.parametrize("pin", PINNED, ids=[p[0] for p in PINNED])
def test_upstream_code_the_adapter_forks_or_relies_on_is_unchanged(pin: Any) -> None:
    name, function, qualname, pinned, recheck = pin
    source = inspect.getsource(function)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    where = f"{function.__module__}.{function.__qualname__} ({inspect.getsourcefile(function)})"
    assert (function.__qualname__, digest) == (qualname, pinned), (
        f"{name} changed upstream: {where}, source hash {digest}, pinned {pinned} "
        f"(defined as {qualname}). Re-check processors/faust_adapter.py: {recheck}; "
        "then update PINNED in tests/unit/test_faust_adapter.py"
    )


def _runtime(**changes: Any) -> WorkerRuntime:
    async def on_batch(messages: list[Any], current: Any) -> None:
        return None

    values: dict[str, Any] = {
        "source_topics": frozenset({"gov.handoff.requests", "gov.approvals"}),
        "on_batch": on_batch,
        "decided": {},
        "fetch_max_wait_ms": 50,
        "committed_ends": dict,
        "offsets_in_transactions": False,
        "inline_consumer": False,
    }
    return WorkerRuntime(**{**values, **changes})


def test_a_runtime_without_every_piece_is_refused_when_built() -> None:
    for field in fields(WorkerRuntime):
        values = {f.name: getattr(_runtime(), f.name) for f in fields(WorkerRuntime)}
        del values[field.name]
        with pytest.raises(TypeError, match=field.name):
            WorkerRuntime(**values)
    with pytest.raises(ValueError, match="source_topics"):
        _runtime(source_topics=frozenset())
    with pytest.raises(TypeError, match="on_batch"):
        _runtime(on_batch=None)
    with pytest.raises(TypeError, match="committed_ends"):
        _runtime(committed_ends={})


def test_the_transport_refuses_an_app_without_a_runtime() -> None:
    with pytest.raises(
        TypeError, match=r"needs a GovernedApp carrying a WorkerRuntime .*, got App"
    ):
        runtime_of(faust.App("plain", autodiscover=False))
    runtime = _runtime()
    assert runtime_of(GovernedApp(runtime, "governed", autodiscover=False)) is runtime


def test_the_consumer_of_a_plain_app_on_the_baton_transport_fails_at_start(tmp_path) -> None:
    register()
    app = faust.App("plain", broker="baton-kafka://127.0.0.1:1", datadir=str(tmp_path))
    with pytest.raises(TypeError, match="needs a GovernedApp"):
        app.consumer  # noqa: B018 - building the consumer is the start-up step under test


def test_batch_size_bounds_the_records_one_fetch_hands_the_worker(tmp_path) -> None:
    # a batch is one fetch (WorkerRuntime.on_batch): BATON_BATCH_SIZE must reach aiokafka
    settings = Settings(bootstrap="127.0.0.1:1", worker_data_dir=tmp_path, batch_size=250)
    assert build_app(settings, _runtime()).conf.broker_max_poll_records == 250


def _store(tmp_path: Any, partitions: int = 8) -> tuple[RunStore, Any]:
    settings = Settings(bootstrap="127.0.0.1:1", worker_data_dir=tmp_path, partitions=partitions)
    app = build_app(settings, _runtime())
    table = runs_table(app, partitions)
    return RunStore(table, partitions), table.data


def test_run_store_writes_record_the_partition_faust_drops_revoked_keys_by(tmp_path) -> None:
    store, faust_store = _store(tmp_path)
    key = b"run-7"
    store[key] = RunState.new("run-7", "acme", 1.0e9)
    assert faust_store._key_partition[key] == partition_for(key, 8)
    assert faust_store.data[key] is store[key]
    del store[key]
    assert key not in faust_store._key_partition and key not in faust_store.data
    assert store.get(key) is None and len(store) == 0


def test_run_store_decodes_a_restored_state_on_first_read_and_sizes_it_without(tmp_path) -> None:
    store, faust_store = _store(tmp_path)
    raw = RunState.new("run-7", "acme", 1.0e9).to_bytes()
    faust_store.data[b"run-7"] = raw  # as Faust's changelog recovery leaves it
    assert store.encoded_size(b"run-7") == len(raw)
    assert isinstance(faust_store.data[b"run-7"], bytes)  # not decoded to be measured
    assert store[b"run-7"].tenant == "acme"
    assert isinstance(faust_store.data[b"run-7"], RunState)
    assert store.encoded_size(b"missing") == 0
    with pytest.raises(KeyError):
        store[b"missing"]
