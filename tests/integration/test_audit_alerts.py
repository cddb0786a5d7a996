"""Stop alerts on the real broker: the seed's line once per decision, storms folded, Slack JSON
posted to a local webhook (also one that hangs), hostile records skipped, `baton alerts` as a
process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from baton.schemas.decision import Decision, Outcome, Phase
from baton.schemas.settings import Settings
from baton.sinks.alerts import AlertStats, run_alerts
from tests.audit_support import create_topic, produce_decisions
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

SEED_LINE = (
    "🛑 Multi-Agent run run_742 stopped: ownership_conflict, "
    "handoff=planner -> researcher, task=refund_check"
)


def _stop(i: int, run_id: str | None = None, reason: str = "ownership_conflict") -> Decision:
    now = datetime.now(UTC)
    return Decision(
        decision_id=f"stop-{i}",
        request_id=f"req-{i}",
        run_id=run_id or f"run_{i}",
        tenant="acme",
        phase=Phase.PRE_HANDOFF,
        outcome=Outcome.STOP,
        reason=reason,
        from_agent="planner",
        to_agent="researcher",
        task_id="refund_check",
        event_time=now,
        decided_at=now,
    )


class Webhook:
    """A local Slack-compatible webhook: records every JSON body posted to it. The first
    ``hang_first`` requests, and every request while ``hanging`` is set, hang for ``hang_s``
    seconds and are not recorded (their client gave up long before), as a stuck Slack edge
    would."""

    SECRET = "XXXXSECRETXXXX"

    def __init__(self, hang_first: int = 0, hang_s: float = 0.0) -> None:
        self.posts: list[dict[str, Any]] = []
        self.hung = 0
        self.first_ok_at: float | None = None
        self.hanging = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = self.rfile.read(length)
                with lock:
                    hang = hook.hung < hang_first or hook.hanging.is_set()
                    hook.hung += hang
                if hang:
                    time.sleep(hang_s)
                    self.send_response(504)
                    self.end_headers()
                    return
                with lock:
                    hook.posts.append(
                        {"content_type": self.headers["Content-Type"], "body": json.loads(body)}
                    )
                    if hook.first_ok_at is None:
                        hook.first_ok_at = time.monotonic()
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True  # a hanging handler never holds up close()
        port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/services/T000/B000/{self.SECRET}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def raw_lines(self) -> list[str]:
        """Every alert line posted (several queued alerts share one post), as sent."""
        return [line for post in self.posts for line in post["body"]["text"].split("\n")]

    def lines(self) -> list[str]:
        """Every alert line as Slack shows it (its three entities decoded, ``&amp;`` last)."""
        return [
            line.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
            for line in self.raw_lines()
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.close()


@pytest.fixture
def stops_topic(broker: Any, topic_prefix: str) -> str:
    topic = f"{topic_prefix}gov.stops"
    create_topic(broker.bootstrap, topic, partitions=2)
    return topic


class Alerter:
    """``run_alerts`` in a thread: its console lines (with the time each was printed) and,
    once stopped, what it returns."""

    def __init__(self, broker: Any, topic: str, keys: str = "", **kwargs: Any) -> None:
        self.printed: list[tuple[float, str]] = []
        self.stats: AlertStats | None = None
        self.stop_event = threading.Event()
        settings = Settings(bootstrap=broker.bootstrap, decision_keys=keys)

        def run() -> None:
            self.stats = run_alerts(
                settings,
                self.stop_event,
                topic=topic,
                group_id=f"{topic}-alerts",
                emit=lambda text: self.printed.append((time.monotonic(), text)),
                consumer_overrides={"session.timeout.ms": 6000},
                **kwargs,
            )

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    @property
    def lines(self) -> list[str]:
        return [text for _, text in self.printed]

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "run_alerts did not return within 30 s"


def produce_storm(bootstrap: str, topic: str) -> None:
    """60 stops at once, all shared_budget_exceeded."""
    produce_decisions(
        bootstrap, topic, [_stop(i, reason="shared_budget_exceeded") for i in range(60)]
    )


def test_each_stop_is_announced_once_in_the_seeds_format_and_posted_to_the_webhook(
    broker: Any, stops_topic: str, webhook: Webhook
) -> None:
    stops = [_stop(742, "run_742")] + [_stop(i) for i in range(1, 4)]
    alerter = Alerter(broker, stops_topic, webhook_url=webhook.url, storm_threshold=0)
    try:
        produce_decisions(broker.bootstrap, stops_topic, stops + stops[:2])  # 2 redelivered
        wait_for(lambda: len(webhook.lines()) >= 4, timeout=30, message="4 lines posted")
    finally:
        alerter.stop()
    lines = alerter.lines
    assert sorted(lines) == sorted(
        [SEED_LINE] + [SEED_LINE.replace("run_742", f"run_{i}") for i in range(1, 4)]
    )
    assert sorted(webhook.lines()) == sorted(lines)  # the two copies were not announced again
    assert {post["content_type"] for post in webhook.posts} == {"application/json"}
    assert SEED_LINE in webhook.lines()


def test_a_transaction_left_open_on_the_stops_topic_holds_no_alert_back(
    broker: Any, stops_topic: str
) -> None:
    """A writer's transaction left open on gov.stops (Tansu never aborts it) held the
    read_committed alerter at its first record: no later stop of the partition was announced
    (session 30 H1). Under at_least_once (the default) it reads the stops read_uncommitted."""
    from tests.stack import open_transaction

    attackers = [open_transaction(broker.bootstrap, stops_topic, p) for p in range(2)]
    alerter = Alerter(broker, stops_topic, storm_threshold=0)
    try:
        produce_decisions(broker.bootstrap, stops_topic, [_stop(i) for i in range(1, 5)])
        wait_for(lambda: len(alerter.lines) >= 4, timeout=30, message="4 stops announced")
    finally:
        alerter.stop()
        del attackers
    assert sorted(alerter.lines) == sorted(
        SEED_LINE.replace("run_742", f"run_{i}") for i in range(1, 5)
    )


def test_a_storm_of_stops_folds_into_one_summary(broker: Any, stops_topic: str) -> None:
    alerter = Alerter(broker, stops_topic, storm_threshold=5, storm_window_s=1.0)
    try:
        produce_storm(broker.bootstrap, stops_topic)
        wait_for(
            lambda: any(line.startswith("🛑 Stop storm") for line in alerter.lines),
            timeout=30,
            message=lambda: f"a storm summary; lines so far: {alerter.lines}",
        )
    finally:
        alerter.stop()
    lines = alerter.lines
    singles = [line for line in lines if line.startswith("🛑 Multi-Agent run")]
    storms = [line for line in lines if line.startswith("🛑 Stop storm")]
    assert len(singles) == 4  # the ones before the threshold
    assert len(storms) <= 2  # 56 folded stops, one summary per window at most
    folded = sum(int(line.split()[3]) for line in storms)
    assert folded == 56 and "shared_budget_exceeded ×" in storms[0]


def test_a_hanging_webhook_never_stalls_reading_or_folding_and_alerts_arrive_once_it_recovers(
    broker: Any, stops_topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="baton")
    # the first 3 posts hang 8 s; the alerter gives each 1 s, so its 4th attempt (after
    # 1 + 0.5 + 1 + 1 + 1 + 2 s) is the first to get through
    hook = Webhook(hang_first=3, hang_s=8.0)
    alerter = Alerter(
        broker,
        stops_topic,
        webhook_url=hook.url,
        storm_threshold=5,
        storm_window_s=1.0,
        webhook_timeout_s=1.0,
        webhook_attempts=4,
    )
    try:
        produce_storm(broker.bootstrap, stops_topic)
        wait_for(
            lambda: any(line.startswith("🛑 Stop storm") for line in alerter.lines),
            timeout=30,
            message=lambda: f"a storm summary while the webhook hangs; printed: {alerter.lines}",
        )
        # still reading while the webhook hangs: a stop produced now is announced now
        produce_decisions(broker.bootstrap, stops_topic, [_stop(1000, "run_late")])
        wait_for(
            lambda: any("run_late" in line for line in alerter.lines),
            timeout=30,
            message=lambda: f"run_late announced; printed: {alerter.lines}",
        )
        late_at = next(t for t, line in alerter.printed if "run_late" in line)
        assert hook.first_ok_at is None or late_at < hook.first_ok_at, "read only after recovery"
        assert hook.hung >= 1 and not hook.posts  # the webhook was hanging all along
        wait_for(
            lambda: sorted(hook.lines()) == sorted(alerter.lines),
            timeout=30,
            message=lambda: f"every line posted; posted {hook.lines()}, printed {alerter.lines}",
        )
    finally:
        alerter.stop()
        hook.close()
    storm_at = next(t for t, line in alerter.printed if line.startswith("🛑 Stop storm"))
    assert hook.first_ok_at is not None and storm_at < hook.first_ok_at
    assert hook.hung == 3
    singles = [line for line in alerter.lines if line.startswith("🛑 Multi-Agent run")]
    folded = sum(int(line.split()[3]) for line in alerter.lines if line.startswith("🛑 Stop storm"))
    assert len(singles) + folded == 61  # every stop announced once, most of them folded
    assert alerter.stats is not None and alerter.stats.not_posted_at_shutdown == 0
    assert alerter.stats.posted == len(alerter.lines) and alerter.stats.post_dropped == 0
    logged = [r.getMessage() for r in caplog.records]
    masked = hook.url.split("/T000")[0] + "/***"
    assert any(f"alerts: webhook {masked} failed (attempt 1 of 4)" in m for m in logged)
    assert not any(Webhook.SECRET in m or "T000/B000" in m for m in logged), logged


@pytest.mark.parametrize("state", [False, True], ids=["memory", "state-dir"])
def test_stops_the_webhook_never_got_are_read_again_after_a_restart(
    broker: Any, topic_prefix: str, tmp_path: Any, state: bool
) -> None:
    """Also with a state dir: a stop printed but never posted is not remembered as announced
    (its entry is written once its alert is out), so the restart posts it."""
    topic = f"{topic_prefix}gov.stops"
    create_topic(broker.bootstrap, topic, partitions=1)  # one partition: read in this order
    a, b, c = (_stop(i, f"run_{i}") for i in (1, 2, 3))
    hook = Webhook(hang_s=30.0)
    kept = {"state_dir": tmp_path / "alerts"} if state else {}
    first = Alerter(
        broker,
        topic,
        webhook_url=hook.url,
        storm_threshold=0,
        webhook_timeout_s=5,
        drain_s=0.5,
        **kept,
    )
    try:
        produce_decisions(broker.bootstrap, topic, [a])
        wait_for(lambda: stop_line_of(a) in hook.lines(), timeout=30, message="a posted")
        hook.hanging.set()  # from now on the webhook hangs
        produce_decisions(broker.bootstrap, topic, [b, c])
        wait_for(lambda: len(first.lines) == 3, timeout=30, message="b and c printed")
    finally:
        first.stop()  # b and c cannot be posted within its 0.5 s to drain
        hook.close()
    assert first.stats is not None and first.stats.not_posted_at_shutdown == 2
    assert stop_line_of(b) not in hook.lines()
    healthy = Webhook()
    second = Alerter(broker, topic, webhook_url=healthy.url, storm_threshold=0, **kept)
    try:
        wait_for(lambda: len(healthy.lines()) >= 2, timeout=30, message="b and c posted")
    finally:
        second.stop()
        healthy.close()
    # a was committed once posted; b and c were not, so they come again (at least once)
    assert second.lines == [stop_line_of(b), stop_line_of(c)]
    assert sorted(healthy.lines()) == sorted(second.lines)


def stop_line_of(decision: Decision) -> str:
    return SEED_LINE.replace("run_742", decision.run_id)


def _produce_raw(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]
) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 2_000_000})
    for key, value in records:
        producer.produce(topic, value, key=key)
        producer.poll(0)
    assert producer.flush(30) == 0


def test_records_that_are_not_decisions_are_skipped_and_hostile_names_are_defused(
    broker: Any, topic_prefix: str, webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="baton")
    topic = f"{topic_prefix}gov.stops"
    create_topic(broker.bootstrap, topic, partitions=1)  # one partition: read in this order
    hostile = replace(
        _stop(
            1, run_id="<!channel> run_1\n🛑 Multi-Agent run run_9 stopped: killed" + "x" * 60_000
        ),
        from_agent="<@U123>",
        to_agent="<http://evil|click>",
        task_id="refunds & <!here>",
    )
    wrong_type = {**_stop(2).to_dict(), "depth": "deep"}
    wrong_type["decided_at"] = wrong_type["event_time"] = None
    records: list[tuple[bytes | None, bytes | None]] = [
        (None, None),  # no key, no value
        (b"k", b"\xff\xfe not json"),
        (b"k", b"{" * 50_000),
        (b"k", b"z" * 500_000),
        (b"k", b"[1, 2]"),
        (b"k", orjson.dumps(wrong_type)),
        (hostile.run_id.encode(), hostile.to_json()),
        (b"run_742", _stop(742, "run_742").to_json()),
    ]
    alerter = Alerter(broker, topic, webhook_url=webhook.url, storm_threshold=0)
    try:
        _produce_raw(broker.bootstrap, topic, records)
        wait_for(
            lambda: SEED_LINE in webhook.lines(),
            timeout=30,
            message=lambda: f"the good stop after the bad records; printed {alerter.lines}",
        )
    finally:
        alerter.stop()
    first, second = alerter.lines  # the hostile stop, then the good one: nothing else
    assert second == SEED_LINE
    assert first.isprintable() and len(first) < 400  # one line, capped
    assert first.startswith(
        "🛑 Multi-Agent run <!channel> run_1\\x0a🛑 Multi-Agent run run_9 stopped: killedxxx"
    )
    [posted, _] = webhook.raw_lines()
    assert webhook.lines()[0] == first  # Slack shows exactly the console's line
    assert "&lt;!channel&gt; run_1" in posted and "handoff=&lt;@U123&gt; -&gt; " in posted
    assert "&lt;http://evil|click&gt;, task=refunds &amp; &lt;!here&gt;" in posted
    assert "<" not in posted
    assert alerter.stats is not None
    assert alerter.stats.skipped == {"empty": 1, "not_json": 3, "not_a_decision": 2}
    skipped_lines = [r.getMessage() for r in caplog.records if "skipped (" in r.getMessage()]
    assert [line.split("skipped (")[1].split(")")[0] for line in skipped_lines] == [
        "empty",
        "not_json",
        "not_a_decision",
    ]  # one line per kind, not one per record
    assert not any("zzzz" in line or "deep" in line for line in skipped_lines)


def test_old_stops_are_not_replayed_as_alerts(broker: Any, stops_topic: str) -> None:
    old = replace(_stop(1), decided_at=datetime(2020, 1, 1, tzinfo=UTC))
    alerter = Alerter(broker, stops_topic, max_age_s=3600)
    try:
        produce_decisions(broker.bootstrap, stops_topic, [old, _stop(2)])
        wait_for(lambda: alerter.lines, timeout=30, message="the recent stop's line")
    finally:
        alerter.stop()
    assert alerter.lines == [SEED_LINE.replace("run_742", "run_2")]


def test_a_signed_stop_written_again_after_a_restart_is_not_paged_again(
    broker: Any, topic_prefix: str, tmp_path: Any
) -> None:
    """h44b F1: a copy of a genuine signed stop written to gov.stops after the alerter's
    restart was paged anew (the dedup was the process's memory). Restarted over the same
    state dir it is a duplicate, counted; a copy of an old one an alerter never announced
    (a stop decided past --max-age) is folded into one late summary, not paged alone."""
    from baton.schemas.decision_signing import DecisionSigner
    from baton.schemas.signing import new_private_key, public_key_text

    topic = f"{topic_prefix}gov.stops"
    create_topic(broker.bootstrap, topic, partitions=1)  # one partition: read in this order
    key = new_private_key()
    keys, signed = public_key_text(key), DecisionSigner(key).signed

    def alerter(state_dir: Any) -> Alerter:  # (one group: the restart reads past its offset)
        return Alerter(broker, topic, keys, storm_threshold=0, state_dir=state_dir,
                       late_window_s=0.5)  # fmt: skip

    real, fresh = _stop(1, "run_real"), _stop(2, "run_fresh")
    old = replace(_stop(3, "run_old"), decided_at=datetime.now(UTC) - timedelta(hours=3))
    _produce_raw(broker.bootstrap, topic, [(b"run_real", signed(real.to_json()))])
    first = alerter(tmp_path / "alerts")
    try:
        wait_for(lambda: first.lines, timeout=30, message="the real stop's line")
    finally:
        first.stop()
    assert first.lines == [stop_line_of(real)]
    replayed = [signed(real.to_json()), signed(old.to_json()), signed(fresh.to_json())]
    _produce_raw(broker.bootstrap, topic, [(None, value) for value in replayed])
    second = alerter(tmp_path / "alerts")
    try:
        wait_for(lambda: len(second.lines) >= 2, timeout=30, message="the fresh stop, the late")
    finally:
        second.stop()
    assert second.lines[0] == stop_line_of(fresh)
    assert (
        second.lines[1].startswith("⏰ Late stops: 1 stop decided 3 h ago")
        and "run_old" in (second.lines[1])
    )
    assert len(second.lines) == 2
    assert second.stats is not None and second.stats.duplicates == 1
    assert second.stats.skipped == {"late": 1}


def test_baton_alerts_prints_the_line_and_exits_cleanly_on_sigterm(
    broker: Any, topic_prefix: str
) -> None:
    env = {
        **os.environ,
        "BATON_BOOTSTRAP": broker.bootstrap,
        "BATON_TOPIC_PREFIX": topic_prefix,
        "BATON_PARTITIONS": "2",
        "BATON_SESSION_TIMEOUT_S": "6",
        "PYTHONIOENCODING": "utf-8",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "baton.cli", "alerts"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # the alerter creates the catalog's topics itself; produce once they exist
        wait_for(
            lambda: _topic_exists(broker.bootstrap, f"{topic_prefix}gov.stops"),
            timeout=30,
            message="gov.stops created by baton alerts",
        )
        produce_decisions(broker.bootstrap, f"{topic_prefix}gov.stops", [_stop(742, "run_742")])
        assert proc.stdout is not None
        line = proc.stdout.readline().rstrip("\n")
        assert line == SEED_LINE
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def _topic_exists(bootstrap: str, topic: str) -> bool:
    from confluent_kafka.admin import AdminClient

    return topic in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5).topics
