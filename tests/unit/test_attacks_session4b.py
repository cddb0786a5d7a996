"""Attacks of the fourth review's second half: held runs, the SDK's close, names, the batch."""

from __future__ import annotations

import logging
import os
import threading
import time
import tracemalloc
import unicodedata
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.engine import decide, evict
from baton.processors.recorded import policy_document
from baton.processors.replay import Recorded, replay_runs, runs_of
from baton.processors.state import RunState
from baton.processors.state_held import _header, record_of
from baton.processors.sweep import HOLD_IDLE_S
from baton.schemas import names
from baton.schemas.decision import Decision, Outcome, Reason
from baton.schemas.events import EventError, parse_event
from baton.schemas.policy import Policy
from baton.sinks.replay_source import ReplayScope, page_rows, read_pages
from baton.streams.sdk.channel import RequestChannel
from baton.streams.sdk.options import ClientOptions
from tests.chdb_audit import chdb_audit
from tests.helpers import handoff
from tests.unit.test_engine_support import at, seed_policy
from tests.unit.test_engine_support import completed as unit_completed
from tests.unit.test_engine_support import handoff as unit_handoff
from tests.unit.test_state_idle import NOW, _record, _store, _Worker

pytestmark = pytest.mark.unit

REPLAY_KEY = b"chain-key"


# ------------------------------------------------------------------ (a) held runs
def test_a_held_record_stating_no_length_is_refused_without_inflating_it() -> None:
    """``decompress(data, 0)`` means no limit: a held record stating 0 bytes inflated all of
    a bomb (194 KB -> 200 MB, 450 MB peak) before it was refused."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -12)
    bomb = _header(0) + packer.compress(b"\x00" * 20_000_000) + packer.flush()
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="held run state"):
            record_of(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, f"inflated {peak} bytes of a record stating 0"


def test_a_planted_record_that_looks_held_counts_its_own_bytes_in_the_state_budget() -> None:
    """A changelog record starting with byte 0 (not held by this process: refused when read)
    was counted at the length its bytes 5-7 state: 8 bytes planted counted 16,777,215, so 256
    such records fill the default 4 GiB max_state_bytes and every new run is refused."""
    w = _Worker(_store())
    planted = b"\x00" + os.urandom(4) + b"\xff\xff\xff"
    w.states._data[b"run_x"] = planted  # restored from the changelog by Faust's recovery
    assert w.states.encoded_size(b"run_x") <= len(planted)


def test_a_held_run_read_without_a_change_is_held_again_once_idle() -> None:
    """A client retry answered from the state (or any refusal that changes nothing) decoded
    a held run and left it decoded until its next change: the sweep forgot it."""
    w = _Worker(_store())
    event = handoff("run_a", 1, "research", tenant="default")
    w.decide([_record("run_a", 1, event)], NOW)
    w.sweep(NOW + timedelta(seconds=HOLD_IDLE_S + 1))
    assert type(w.states._data[b"run_a"]) is bytes
    at = NOW + timedelta(seconds=HOLD_IDLE_S + 2)
    assert w.decide([_record("run_a", 7, event)], at)  # the retry: answered from the state
    w.sweep(at + timedelta(seconds=2 * HOLD_IDLE_S))
    assert type(w.states._data[b"run_a"]) is bytes


# ------------------------------------------------------------------ (b) the SDK's close
class _SlowConsumer:
    """A consumer whose end-offset read blocks until released (a frozen broker)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.in_call = 0
        self.closed = False
        self.closed_during_call = False

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        self._enter()
        try:
            self.release.wait(10)
            return 0, 0
        finally:
            self.in_call -= 1

    def incremental_assign(self, partitions: Any) -> None:
        self._enter()
        self.in_call -= 1

    def consume(self, n: int, timeout: float) -> list[Any]:
        self._enter()
        try:
            time.sleep(0.01)
            return []
        finally:
            self.in_call -= 1

    def close(self) -> None:
        self.closed_during_call = self.closed_during_call or self.in_call > 0
        self.closed = True

    def _enter(self) -> None:
        if self.closed:
            raise RuntimeError("Consumer closed")
        self.in_call += 1


class _Producer:
    def __init__(self) -> None:
        self.produced: list[bytes] = []
        self.flushed: list[bytes] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any = None) -> None:
        self.produced.append(value)

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.flushed = list(self.produced)
        return 0


def test_close_delivers_records_queued_behind_a_pending_read_and_never_closes_it_under_the_reader(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """close() flushed librdkafka before the records queued behind a stuck end-offset read
    were handed to it (a finish() or report() left undelivered, with no warning), then closed
    the consumer under the reader's call (close(timeout=1) took the read's full 20 s on a
    frozen Tansu, and the reader crashed with 'Consumer closed' on the host's stderr)."""
    options = ClientOptions.resolve("127.0.0.1:9", partitions=4, timeout=0.2)
    channel = RequestChannel(options)
    consumer, producer = _SlowConsumer(), _Producer()
    channel._consumer, channel._producer = consumer, producer  # type: ignore[assignment]
    channel._thread = threading.Thread(target=channel._run, daemon=True)
    channel._thread.start()
    try:
        channel.submit("req", b"run-1", b"check", decisions_partition=1, wait_key=None)
        channel.submit("req", b"run-1", b"finish", decisions_partition=1, needs_reply=False)
        deadline = time.monotonic() + 5
        while consumer.in_call == 0 or not channel._gates:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with caplog.at_level(logging.WARNING, logger="baton.client"):
            started = time.monotonic()
            channel.close(timeout=0.3)
            took = time.monotonic() - started
            assert producer.flushed == [b"check", b"finish"]  # handed over before the flush
            assert took < 2.0
            assert not consumer.closed_during_call
            consumer.release.set()
            channel._thread.join(5)
        assert not channel._thread.is_alive()
        assert consumer.closed  # by the reader once its call returned
        assert producer.produced == [b"check", b"finish"]  # and never handed twice
        assert "crashed" not in caplog.text
    finally:
        consumer.release.set()


# ------------------------------------------------------------------ (d) names
def _completion(tools: list[str]) -> bytes:
    return orjson.dumps(
        {
            "type": "handoff_completed", "request_id": "r1", "run_id": "run-1", "task_id": "t1",
            "agent": "researcher", "cost_usd": 0.1, "tool_calls": 1, "status": "ok",
            "event_time": "2026-11-29T12:00:00Z", "tools": tools,
        }
    )  # fmt: skip


@pytest.mark.parametrize("char", ["\ufdfa", "\u332b"], ids=["U+FDFA", "U+332B"])
def test_a_name_that_expands_past_its_length_is_refused_before_it_is_folded_whole(
    char: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFKC writes up to 18 characters for one (U+FDFA; U+332B SQUARE PAASENTO 5), at ~0.05
    us each: 256 of them in one tool (within the 1,024-character budget) were folded whole,
    4,608 characters, before the name was refused as too long (~4x the 64-ASCII-tools
    completion, 7x after three costly names)."""
    written: list[int] = []
    real = unicodedata.normalize

    def normalize(form: str, text: str) -> str:
        out = real(form, text)
        written.append(len(out))
        return out

    # (on the unicodedata module itself: a compiled names.py holds its import in a C static,
    # where replacing names.unicodedata went unseen; it looks normalize up on the module)
    monkeypatch.setattr(unicodedata, "normalize", normalize)
    names._RECENT.clear()
    with pytest.raises(EventError) as refused:
        parse_event(_completion([char * 256]))
    assert refused.value.kind == "out_of_range" and "tools.0" in str(refused.value)
    assert sum(written) <= 4 * names.MAX_NAME, written


def test_a_long_name_whose_fold_is_shorter_than_its_nfkc_form_is_still_a_name() -> None:
    """U+0132 LATIN CAPITAL LIGATURE IJ + U+030C: NFKC "IJ" + caron (3), folded "i" + U+01F0
    (2): 256 characters whose NFKC form is 384 fold to 256, a name (no false refusal)."""
    name = "\u0132\u030c" * 128
    names._RECENT.clear()
    event = parse_event(_completion([name]))
    assert event.tools == ["i\u01f0" * 128]


# ------------------------------------------------------------------ (e) replay faithfulness
#: the sweep's tombstone retention in these histories (a day): replay is told it, as
#: `baton replay` is told the workers' BATON_TOMBSTONE_RETENTION_S
SWEEP_TOMBSTONE_S = 86400.0


def _recorded_with_sweeps(
    timed: list[tuple[Any, datetime, tuple[float, ...]]], policy: Policy | None = None
) -> tuple[Policy, list[Recorded]]:
    """What the audit holds after the worker's batch step decided ``timed`` under ``policy``
    (the seed's by default); the third item: the times (seconds) the worker's sweep ran
    before the event (``evict``: run retention 1 h, tombstones kept 1 day)."""
    policy = policy or seed_policy()
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(policy, 1, states, worker="w", chain_key=REPLAY_KEY)
    published: list[Decision] = []
    for offset, (event, now, sweeps) in enumerate(timed):
        for sweep_at in sweeps:
            for key, state in list(states.items()):
                kept = evict(state, at(sweep_at), 3600.0, SWEEP_TOMBSTONE_S)
                if kept is None:
                    del states[key]
                else:
                    states[key] = kept
        rec = InputRecord("requests", 0, offset, event.run_id.encode(), event.to_json())
        published += [d for _, d in proc.process([rec], now).decisions]
    rows = [Recorded.of(d) for d in published if not d.reemitted]
    return policy, rows


def _replayed(policy: Policy, rows: list[Recorded]) -> list[tuple[int, str, str]]:
    policies = {policy.version: Policy.model_validate_json(policy_document(policy))}
    report = replay_runs(runs_of(rows), policy, policies, REPLAY_KEY, tombstone_s=SWEEP_TOMBSTONE_S)
    assert report.partial == {}
    return [u for run in report.runs for u in run.unfaithful]


def test_a_late_handoff_to_a_run_the_sweep_evicted_replays_as_recorded() -> None:
    """The sweep turns a run idle past BATON_RUN_RETENTION_S (1 h) into a tombstone and
    records nothing; its next handoff is stopped run_expired. Replay under the recorded
    policy decided that handoff on the live run (allow): 'not exact', exit 7, for any
    audit holding a run touched after an hour idle."""
    policy, rows = _recorded_with_sweeps(
        [
            (unit_handoff("h1", "t1", "planner", "researcher", t=0), at(0), ()),
            (unit_handoff("h2", "t2", "planner", "researcher", t=3700), at(3700), (3650.0,)),
        ]
    )
    assert [r.reason for r in rows] == ["ok", "run_expired"]
    assert _replayed(policy, rows) == []


def test_a_late_cost_report_to_a_run_the_sweep_evicted_replays_as_recorded() -> None:
    """A tombstone still counts a late cost ("a later cost still counts"), decided on what
    eviction kept (no task tree, no reservation): replay decided the report on the live run
    (same outcome, other fields: its chain did not match), 'not reproduced', exit 7; replay
    tombstones the run only at a step recorded stop run_expired, and a report is none."""
    policy, rows = _recorded_with_sweeps(
        [
            (unit_handoff("h1", "t1", "planner", "researcher", t=0), at(0), ()),
            (unit_completed("h1", "t1", "researcher", 0.5, t=3700), at(3700), (3650.0,)),
        ]
    )
    assert [r.reason for r in rows] == ["ok", "within_budget"]
    assert _replayed(policy, rows) == []


def test_a_run_id_new_again_after_its_tombstone_was_forgotten_replays_as_recorded() -> None:
    """A tombstone is forgotten after BATON_TOMBSTONE_RETENTION_S and "its run id is then new
    again": the worker decided the id's next handoff as a new run's; replay (and `baton up`'s
    restore, which then restores the live run STOPPED audit_unverified) decided it on the
    old run's state (request_id_reused)."""
    policy, rows = _recorded_with_sweeps(
        [
            (unit_handoff("h1", "t1", "planner", "researcher", t=0), at(0), ()),
            (
                unit_handoff("h1", "t1", "planner", "coder", t=200_000),
                at(200_000),
                (100_000.0, 190_000.0),
            ),
        ]
    )
    assert [r.reason for r in rows] == ["ok", "ok"]
    assert _replayed(policy, rows) == []


# ------------------------------------------------------------------ (b) retry after failing closed
def test_a_check_retried_under_its_request_id_after_it_expired_is_answered_from_memory() -> None:
    """The SDK hands a check queued behind a failed assignment to Kafka after answering its
    caller governance_unavailable; read after its decide_by it is stopped request_expired.
    A later call with the same request id (a new decide_by) gets that stop again from the
    run's record, counts nothing, and a new request id is decided afresh (docs/client.md)."""
    policy = seed_policy()
    state, _ = decide(None, unit_handoff("h0", "t0", "planner", "researcher"), policy, at(0))
    late = unit_handoff("h1", "t1", "planner", "researcher", decide_by=at(5))
    state, expired = decide(state, late, policy, at(20))
    assert [d.reason for d in expired] == [Reason.REQUEST_EXPIRED]
    retried = late.model_copy(update={"decide_by": at(60)})
    again, answer = decide(state, retried, policy, at(21))
    assert again is state and [d.decision_id for d in answer] == [expired[0].decision_id]
    assert state.handoff_count == 1 and state.task("t1") is None
    fresh = unit_handoff("h2", "t1", "planner", "researcher", decide_by=at(60))
    assert [d.outcome for d in decide(state, fresh, policy, at(22))[1]] == [Outcome.ALLOW]


def test_a_run_decided_across_a_worker_clock_step_back_is_read_in_its_order(
    tmp_path: Path,
) -> None:
    """The audit gives replay (and `baton up`'s restore) a run's rows by ``decided_at``
    first: a worker whose clock stepped back a second (NTP, a resumed VM) between two
    batches of one run had them read in the wrong order, and the run was reported partial,
    "its history does not start in what was read (trimmed by retention or --since)", never
    replayed (restore: restored STOPPED audit_unverified), though every row is there and
    its chain says its order."""
    policy = seed_policy()
    proc = BatchProcessor(policy, 1, {}, worker="w", chain_key=REPLAY_KEY)
    base = datetime.now(UTC) - timedelta(hours=1)
    published: list[Decision] = []
    for offset, (to_agent, now) in enumerate(
        [("researcher", base + timedelta(seconds=10)), ("coder", base + timedelta(seconds=9))]
    ):
        event = unit_handoff(f"h{offset}", "t1", "planner", to_agent, run_id="r")
        raw = event.model_copy(update={"event_time": now}).to_json()
        published += [
            d for _, d in proc.process([InputRecord("req", 0, offset, b"r", raw)], now).decisions
        ]
    assert [d.reason for d in published] == [Reason.OK, Reason.OWNERSHIP_CONFLICT]
    client = chdb_audit(tmp_path / "chdb", published)
    rows = [r for page in read_pages(client, ReplayScope()).pages for r in page_rows(page)]
    assert _replayed(policy, rows) == []
