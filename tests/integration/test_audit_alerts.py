"""Stop alerts on the real broker: the seed's line once per decision, storms folded, Slack JSON
posted to a local webhook, `baton alerts` as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from baton.schemas.decision import Decision, Outcome, Phase
from baton.schemas.settings import Settings
from baton.sinks.alerts import run_alerts
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
    """A local Slack-compatible webhook: records every JSON body posted to it."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                posts.append(
                    {
                        "content_type": self.headers["Content-Type"],
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

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


def _alerts(
    broker: Any, topic: str, **kwargs: Any
) -> tuple[list[str], threading.Event, threading.Thread]:
    lines: list[str] = []
    stop = threading.Event()
    settings = Settings(bootstrap=broker.bootstrap)
    thread = threading.Thread(
        target=run_alerts,
        args=(settings, stop),
        kwargs={
            "topic": topic,
            "group_id": f"{topic}-alerts",
            "emit": lines.append,
            "consumer_overrides": {"session.timeout.ms": 6000},
            **kwargs,
        },
        daemon=True,
    )
    thread.start()
    return lines, stop, thread


def test_each_stop_is_announced_once_in_the_seeds_format_and_posted_to_the_webhook(
    broker: Any, stops_topic: str, webhook: Webhook
) -> None:
    stops = [_stop(742, "run_742")] + [_stop(i) for i in range(1, 4)]
    lines, stop, thread = _alerts(broker, stops_topic, webhook_url=webhook.url, storm_threshold=0)
    try:
        produce_decisions(broker.bootstrap, stops_topic, stops + stops[:2])  # 2 redelivered
        wait_for(lambda: len(webhook.posts) >= 4, timeout=30, message="4 webhook posts")
    finally:
        stop.set()
        thread.join(30)
    assert sorted(lines) == sorted(
        [SEED_LINE] + [SEED_LINE.replace("run_742", f"run_{i}") for i in range(1, 4)]
    )
    assert len(webhook.posts) == 4  # the two copies were not announced again
    assert {"content_type": "application/json", "body": {"text": SEED_LINE}} in webhook.posts


def test_a_storm_of_stops_folds_into_one_summary(broker: Any, stops_topic: str) -> None:
    lines, stop, thread = _alerts(broker, stops_topic, storm_threshold=5, storm_window_s=1.0)
    try:
        produce_decisions(
            broker.bootstrap,
            stops_topic,
            [_stop(i, reason="shared_budget_exceeded") for i in range(60)],
        )
        wait_for(
            lambda: any(line.startswith("🛑 Stop storm") for line in lines),
            timeout=30,
            message=lambda: f"a storm summary; lines so far: {lines}",
        )
    finally:
        stop.set()
        thread.join(30)
    singles = [line for line in lines if line.startswith("🛑 Multi-Agent run")]
    storms = [line for line in lines if line.startswith("🛑 Stop storm")]
    assert len(singles) == 4  # the ones before the threshold
    assert len(storms) <= 2  # 56 folded stops, one summary per window at most
    folded = sum(int(line.split()[3]) for line in storms)
    assert folded == 56 and "shared_budget_exceeded ×" in storms[0]


def test_old_stops_are_not_replayed_as_alerts(broker: Any, stops_topic: str) -> None:
    old = replace(_stop(1), decided_at=datetime(2020, 1, 1, tzinfo=UTC))
    lines, stop, thread = _alerts(broker, stops_topic, max_age_s=3600)
    try:
        produce_decisions(broker.bootstrap, stops_topic, [old, _stop(2)])
        wait_for(lambda: lines, timeout=30, message="the recent stop's line")
    finally:
        stop.set()
        thread.join(30)
    assert lines == [SEED_LINE.replace("run_742", "run_2")]


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
