"""The control follower's bookkeeping: caught up by position, fresh within a bound, gives up."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from baton.processors import control_apply
from baton.processors.control import ControlFollower
from baton.processors.control_progress import NO_POSITION, ControlProgress
from baton.schemas.errors import ConfigError
from baton.schemas.events import KillSwitch
from baton.schemas.policy import DEFAULT_POLICY_YAML, parse_policy

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------- ControlProgress (pure)
def test_a_commit_marker_at_the_end_is_passed_by_position_not_by_a_delivered_record() -> None:
    # records at 0 and 1, the commit marker at 2: no record at offset 2 is ever delivered
    p = ControlProgress(started_at=0.0)
    p.probed(1.0, {0: (0, 3)})
    assert not p.advanced(1.1, {0: 2})  # last record delivered, marker not yet passed
    assert not p.caught_up
    assert p.advanced(1.2, {0: 3})  # librdkafka's position moves past the marker
    assert p.complete_as_of == 1.0


@pytest.mark.parametrize("low_high", [(0, 0), (7, 7)], ids=["empty", "emptied_by_retention"])
def test_a_partition_without_records_is_complete_without_any_position(
    low_high: tuple[int, int],
) -> None:
    p = ControlProgress(started_at=0.0)
    p.probed(1.0, {0: low_high})
    assert p.advanced(1.1, {0: NO_POSITION})


def test_no_position_on_a_partition_with_records_is_not_complete() -> None:
    p = ControlProgress(started_at=0.0)
    p.probed(1.0, {0: (0, 1)})
    assert not p.advanced(1.1, {0: NO_POSITION})


def test_every_partition_must_be_read_and_a_missing_one_is_not() -> None:
    p = ControlProgress(started_at=0.0)
    p.probed(1.0, {0: (0, 3), 1: (0, 5)})
    assert not p.advanced(1.1, {0: 3, 1: 4})
    assert not p.advanced(1.2, {0: 3})  # partition 1 not assigned (yet)
    assert p.advanced(1.3, {0: 3, 1: 5})


def test_the_newest_reached_probe_sets_the_time_and_answers_the_older_ones() -> None:
    p = ControlProgress(started_at=0.0)
    p.probed(1.0, {0: (0, 3)})
    p.probed(2.0, {0: (0, 5)})
    p.probed(3.0, {0: (0, 9)})  # a kill switch arrived after 2.0 and is not read yet
    assert p.advanced(3.5, {0: 5})
    assert p.complete_as_of == 2.0
    assert not p.advanced(3.6, {0: 5})  # 1.0 and 2.0 answered; 3.0 still waits
    assert p.advanced(3.7, {0: 9})
    assert p.complete_as_of == 3.0


def test_a_probe_stamped_earlier_than_completeness_does_not_move_it_back() -> None:
    p = ControlProgress(started_at=0.0)
    p.probed(5.0, {0: (0, 3)})
    assert p.advanced(5.1, {0: 3})
    p.probed(4.0, {0: (0, 3)})
    assert not p.advanced(5.2, {0: 3})
    assert p.complete_as_of == 5.0


def test_fresh_within_the_bound_stale_beyond_it_and_never_fresh_before_caught_up() -> None:
    p = ControlProgress(started_at=0.0)
    assert not p.is_fresh(0.1, 15.0)
    p.probed(1.0, {0: (0, 0)})
    p.advanced(1.1, {0: NO_POSITION})
    assert p.is_fresh(16.0, 15.0)
    assert not p.is_fresh(16.01, 15.0)
    assert p.age(20.0) == pytest.approx(19.0)


def test_failed_probes_are_no_contact_and_the_kill_switches_age() -> None:
    p = ControlProgress(started_at=0.0)
    p.probed(1.0, {0: (0, 2)})
    p.advanced(1.1, {0: 2})
    for t in range(2, 20):
        p.failed(float(t), "probe: KafkaError{code=_TIMED_OUT}")
        p.advanced(t + 0.1, {0: 2})
    assert p.complete_as_of == 1.0
    assert p.last_contact == 1.0
    assert not p.is_fresh(19.5, 15.0)


def test_why_stale_names_topic_broker_positions_and_the_last_error() -> None:
    p = ControlProgress(started_at=0.0)
    p.probed(1.0, {0: (0, 9)})
    p.advanced(1.1, {0: 4})
    p.failed(2.0, "Failed to get metadata: Local: Timed out")
    p.failed(1.5, "SASL authentication error: Authentication failed", "client")
    text = p.describe(30.0, "prod.gov.control", "kafka-1:9092")
    assert "control topic prod.gov.control at kafka-1:9092" in text
    assert "not read to its end since the follower started 30.0 s ago" in text
    assert "[0] 4/9" in text
    assert "last answer from the broker 29.0 s ago" in text
    assert text.endswith(
        "last probe error (28.0 s ago): Failed to get metadata: Local: Timed out; "
        "last client error (28.5 s ago): SASL authentication error: Authentication failed"
    )


def test_a_probe_without_answer_is_named_while_it_waits() -> None:
    p = ControlProgress(started_at=0.0)
    p.sent(1.0)
    assert "no answer to a probe" not in p.describe(1.2, "t", "b")  # a normal round trip
    assert "no answer to a probe sent 2.5 s ago" in p.describe(3.5, "t", "b")
    p.failed(4.0, "Timed out")
    assert "no answer to a probe" not in p.describe(4.5, "t", "b")
    p.sent(5.0)
    p.probed(5.01, {0: (0, 0)})
    assert "no answer to a probe" not in p.describe(9.0, "t", "b")


def test_errors_overcome_by_a_complete_read_are_not_shown() -> None:
    p = ControlProgress(started_at=0.0)
    p.failed(0.5, "Connection refused")
    p.probed(1.0, {0: (0, 0)})
    p.advanced(1.1, {0: NO_POSITION})
    assert "Connection refused" not in p.describe(2.0, "t", "b")
    p.failed(3.0, "Timed out")
    assert p.describe(4.0, "t", "b").endswith("last probe error (1.0 s ago): Timed out")


def test_an_error_message_is_kept_short() -> None:
    p = ControlProgress(started_at=0.0)
    p.failed(1.0, "x" * 60_000)
    assert p.last_error is not None and len(p.last_error) == 500


def test_a_probe_without_partitions_is_a_failure_not_an_empty_success() -> None:
    p = ControlProgress(started_at=0.0)
    p.probed(1.0, {})
    assert p.last_contact is None
    assert not p.advanced(1.1, {})
    assert p.last_error == "the topic has no partitions"


def test_gives_up_only_without_completeness_and_without_progress() -> None:
    p = ControlProgress(started_at=0.0)
    p.probed(1.0, {0: (0, 1_000_000)})
    p.advanced(100.0, {0: 10})  # reading a long topic: progress, not complete
    assert not p.given_up(150.0, 150.0)
    assert p.given_up(250.1, 150.0)
    q = ControlProgress(started_at=0.0)
    q.probed(1.0, {0: (0, 0)})
    q.advanced(1.0, {0: NO_POSITION})
    assert not q.given_up(150.0, 150.0)
    assert q.given_up(151.5, 150.0)


def test_unanswered_probes_are_bounded_and_the_newest_still_counts() -> None:
    p = ControlProgress(started_at=0.0, max_pending=3)
    for t in range(1, 11):
        p.probed(float(t), {0: (0, t)})
    assert len(p._pending) == 3
    assert p.advanced(11.0, {0: 10})
    assert p.complete_as_of == 10.0


# ---------------------------------------------------------------- settings
def _follower(**kw: Any) -> ControlFollower:
    return ControlFollower(
        kw.pop("conf", {"bootstrap.servers": "kafka-1:9092"}),
        "prod.gov.control",
        parse_policy(DEFAULT_POLICY_YAML, "seed"),
        worker="w1",
        on_decision=kw.pop("on_decision", lambda d: None),
        on_dead_letter=kw.pop("on_dead_letter", lambda d: None),
        **kw,
    )


@pytest.mark.parametrize("bound", [0.0, -1.0, 0.5, math.nan, math.inf, 1e308, 3601.0])
def test_an_unsafe_staleness_bound_is_refused_naming_the_setting(bound: float) -> None:
    with pytest.raises(ConfigError, match="BATON_CONTROL_MAX_STALENESS_S: must be between"):
        _follower(max_staleness_s=bound)


@pytest.mark.parametrize("give_up", [10.0, 5.0, math.nan, 1e9])
def test_giving_up_must_come_after_the_bound(give_up: float) -> None:
    with pytest.raises(ConfigError, match="give_up_after_s: must be above the staleness bound"):
        _follower(max_staleness_s=10.0, give_up_after_s=give_up)


def test_defaults_fifteen_seconds_and_ten_times_that_to_give_up() -> None:
    f = _follower()
    assert (f.max_staleness_s, f.give_up_after_s) == (15.0, 150.0)


def test_reads_every_record_whatever_the_client_config_says() -> None:
    """read_uncommitted: under read_committed one open transaction on the topic held every
    kill switch after it back while the follower called itself fresh (session 10)."""
    f = _follower(conf={"bootstrap.servers": "b:1", "isolation.level": "read_committed"})
    assert f._conf["isolation.level"] == "read_uncommitted"


# ---------------------------------------------------------------- the loop, on a fake consumer
@dataclass
class _Msg:
    _offset: int
    _value: bytes

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value

    def key(self) -> None:
        return None

    def topic(self) -> str:
        return "prod.gov.control"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class _FakeConsumer:
    """One partition of ``records`` (None = a transaction marker), consumed in ``batches``.

    Like librdkafka, the position passes the markers it reads.
    """

    def __init__(self, records: list[bytes | None], batches: list[int]) -> None:
        self.records = records
        self.batches = batches  # how many records each consume() call may return
        self.next = 0
        self.position_at = NO_POSITION
        self.caught_up_seen: list[bool] = []
        self.follower: ControlFollower | None = None

    def assign(self, tps: list[TopicPartition]) -> None:
        pass

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.position_at) for tp in tps]

    def consume(self, n: int, timeout: float) -> list[_Msg]:
        assert self.follower is not None
        self.caught_up_seen.append(self.follower.caught_up.is_set())
        if not self.batches:
            self.follower._stop.set()
            return []
        take = min(n, self.batches.pop(0))
        out = []
        while self.next < len(self.records) and len(out) < take:
            value = self.records[self.next]
            if value is not None:
                out.append(_Msg(self.next, value))
            self.position_at = self.next + 1  # a marker moves the position, never delivered
            self.next += 1
        return out


def _done(value: Any = None, error: Exception | None = None) -> Future[Any]:
    f: Future[Any] = Future()
    if error is not None:
        f.set_exception(error)
    else:
        f.set_result(value)
    return f


class _FakeAdmin:
    """Answers probes at once: one partition with watermarks (0, ``high``), or a timeout.

    ``high`` is what ListOffsets says (on Tansu: the first offset of the last batch + 1).
    """

    def __init__(self, high: int, fail: bool = False) -> None:
        self.high = high
        self.fail = fail

    def describe_topics(self, topics: Any, request_timeout: float) -> dict[str, Future[Any]]:
        if self.fail:
            err = KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed while waiting"))
            return {t: _done(error=err) for t in topics.topic_names}
        description = SimpleNamespace(partitions=[SimpleNamespace(id=0)])
        return {t: _done(description) for t in topics.topic_names}

    def list_offsets(self, specs: dict[TopicPartition, Any], **kw: Any) -> dict[Any, Future[Any]]:
        latest = "Latest" in type(next(iter(specs.values()))).__name__
        return {tp: _done(SimpleNamespace(offset=self.high if latest else 0)) for tp in specs}


def _kill(run_id: str) -> bytes:
    return KillSwitch(
        scope="run", run_id=run_id, operator="op", event_time=datetime.now(UTC)
    ).to_json()


def _run(f: ControlFollower, consumer: _FakeConsumer, admin: _FakeAdmin) -> None:
    consumer.follower = f
    f._follow(consumer, admin)  # type: ignore[arg-type]


def test_a_topic_ending_in_a_commit_marker_is_caught_up_with_its_kill_switch_applied() -> None:
    decisions: list[Any] = []
    f = _follower(on_decision=decisions.append)
    consumer = _FakeConsumer([_kill("r1"), _kill("r2"), None], batches=[500] * 5)
    _run(f, consumer, _FakeAdmin(high=3))
    assert f.caught_up.is_set()
    assert f.kills.runs == frozenset({"r1", "r2"})
    assert len(decisions) == 2
    assert f.is_fresh()


def test_positions_are_judged_only_once_the_queue_is_drained() -> None:
    # Tansu's ListOffsets answers the first offset of the last record batch + 1: a high
    # watermark inside a batch that is still being handed out must not count as caught up
    records: list[bytes | None] = [_kill(f"r{i}") for i in range(1000)]
    f = _follower()
    consumer = _FakeConsumer(records, batches=[0, 500, 500, 500])
    _run(f, consumer, _FakeAdmin(high=501))
    # consume() calls: 1st and 2nd while the probe is answered, 3rd hands out 500 records
    # (full: not judged), 4th 500 more (full: not judged), 5th none: judged, caught up
    assert consumer.caught_up_seen == [False, False, False, False, True]
    assert len(f.kills.runs) == 1000


def test_a_broker_that_never_answers_makes_it_give_up_naming_why() -> None:
    reasons: list[str] = []
    f = _follower(max_staleness_s=1.0, give_up_after_s=2.0, on_give_up=reasons.append)
    f.progress = ControlProgress(started_at=time.monotonic() - 1.9)  # gives up in 0.1 s
    consumer = _FakeConsumer([], batches=[1] * 1_000_000)
    _run(f, consumer, _FakeAdmin(high=0, fail=True))
    assert not f.caught_up.is_set()
    assert len(reasons) == 1
    reason = reasons[0]
    assert reason.startswith("control follower gives up after 2 s: control topic prod.gov.control")
    assert "at kafka-1:9092" in reason
    assert "last probe error" in reason and "topic description: Failed while waiting" in reason
    assert consumer.batches  # the loop ended by giving up, not for want of input


# ---------------------------------------------------------------- one record never stops it
def _policy_update(policy_yaml: str) -> bytes:
    event = {"type": "policy_updated", "policy_yaml": policy_yaml, "operator": "op"}
    return json.dumps({**event, "event_time": datetime.now(UTC).isoformat()}).encode()


#: policy texts that made the follower raise (and so the worker exit, and its restart read
#: the same record again: a crash loop); parse_policy now refuses each as a policy problem
#: naming it, so each is one `policy` dead letter. The path of a record that raises anyway
#: is the next test's (any exception while applying it).
HOSTILE_POLICIES = {
    "nested 5,000 deep": ("[" * 5000 + "]" * 5000, "nested deeper than 64 levels"),
    "an integer of 5,000 digits": (
        "multi_agent:\n  max_handoffs: " + "9" * 5000,
        "a value YAML cannot read",
    ),
}


@pytest.mark.parametrize(
    ("policy_yaml", "says"), HOSTILE_POLICIES.values(), ids=HOSTILE_POLICIES.keys()
)
def test_a_policy_no_parser_should_take_is_one_dead_letter_and_the_follower_goes_on(
    policy_yaml: str, says: str
) -> None:
    decisions: list[Any] = []
    letters: list[Any] = []
    f = _follower(on_decision=decisions.append, on_dead_letter=letters.append)
    before, record = f.policy, _policy_update(policy_yaml)
    consumer = _FakeConsumer([record, _kill("r1")], batches=[500] * 5)
    _run(f, consumer, _FakeAdmin(high=2))
    assert len(letters) == 1, "the refused record is one dead letter"
    envelope = json.loads(letters[0].value)
    assert envelope["error_kind"] == "policy", envelope["error"]
    assert says in envelope["error"]
    assert envelope["original"] == record.decode()
    assert f.policy is before
    assert f.kills.runs == frozenset({"r1"}), "the record after it is applied"
    assert [d.reason for d in decisions] == ["kill_switch"]
    assert f.caught_up.is_set()


def test_any_exception_while_applying_a_kill_switch_is_a_dead_letter_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug in apply_control")

    monkeypatch.setattr(control_apply, "apply_control", broken)
    letters: list[Any] = []
    f = _follower(on_dead_letter=letters.append)
    _run(f, _FakeConsumer([_kill("r1")], batches=[500] * 3), _FakeAdmin(high=1))
    (letter,) = letters
    error = json.loads(letter.value)["error"]
    assert "prod.gov.control[0]@0" in error and "RuntimeError: a bug in apply_control" in error
    assert not f.kills and f.caught_up.is_set()
