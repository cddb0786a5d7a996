"""Session 17's attacks on the alerter (sinks/alerts.py) through a real Tansu broker: stops
an alerter missed while it was down longer than ``--max-age`` (or decided on a worker clock
that far behind) were skipped after its restart, silently: no line, no count, and their
offsets committed (the docs promised the stops since the last commit "announced again (at
least once; never dropped)"). Since h44b F1 such a stop is folded into a late summary (a copy
of an old genuine stop written again paged on-call anew): told, never paged alone."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from baton.schemas.settings import Settings
from baton.sinks.alerts import AlertStats, run_alerts
from tests.audit_support import create_topic, produce_decisions
from tests.helpers import wait_for
from tests.integration.test_audit_alerts import _stop, stop_line_of

pytestmark = pytest.mark.integration


class _Alerter:
    """``run_alerts`` in a thread, in consumer group ``group``, --max-age 3600, no storms,
    late stops summed up every 0.5 s."""

    def __init__(self, broker: Any, topic: str, group: str) -> None:
        self.lines: list[str] = []
        self.stats: AlertStats | None = None
        self.stop_event = threading.Event()

        def run() -> None:
            self.stats = run_alerts(
                Settings(bootstrap=broker.bootstrap),
                self.stop_event,
                topic=topic,
                group_id=group,
                emit=self.lines.append,
                storm_threshold=0,
                max_age_s=3600,
                late_window_s=0.5,
                consumer_overrides={"session.timeout.ms": 6000},
            )

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "run_alerts did not return within 30 s"


def test_stops_after_the_groups_committed_offset_are_announced_however_old(
    broker: Any, topic_prefix: str
) -> None:
    """An alerter announces s1 and commits; it is down while s2 is decided (two hours
    before its restart, past --max-age 3600); restarted in the same group it announces s3
    and names s2 in a late summary (s2 was skipped silently; then announced alone, which a
    replay of an old stop could do at will: h44b F1). A fresh group (a first start) still
    skips the old s2, and counts it (``too_old``)."""
    topic = f"{topic_prefix}gov.stops"
    create_topic(broker.bootstrap, topic, partitions=1)
    s1, s3 = _stop(1), _stop(3)
    s2 = replace(_stop(2), decided_at=datetime.now(UTC) - timedelta(hours=2))
    first = _Alerter(broker, topic, f"{topic}-a")
    try:
        produce_decisions(broker.bootstrap, topic, [s1])
        wait_for(lambda: first.lines, timeout=30, message="s1 announced")
    finally:
        first.stop()
    produce_decisions(broker.bootstrap, topic, [s2, s3])
    second = _Alerter(broker, topic, f"{topic}-a")
    try:
        wait_for(lambda: len(second.lines) == 2, timeout=30, message="s3 and the late s2")
    finally:
        second.stop()
    assert second.lines[0] == stop_line_of(s3)
    assert second.lines[1].startswith("⏰ Late stops: 1 stop decided 2 h ago")
    assert "run run_2 (ownership_conflict, decided 2 h ago, decision stop-2)" in second.lines[1]
    assert second.stats is not None and second.stats.skipped["late"] == 1

    fresh = _Alerter(broker, topic, f"{topic}-fresh")
    s4 = replace(_stop(4), decided_at=datetime.now(UTC) - timedelta(hours=2))
    try:
        wait_for(lambda: len(fresh.lines) == 2, timeout=30, message="s1 and s3 announced")
        # written after its start (a worker clock two hours behind): not history, told in a
        # late summary (review H4: --max-age held for the whole life of the process)
        produce_decisions(broker.bootstrap, topic, [s4])
        wait_for(lambda: len(fresh.lines) == 3, timeout=30, message="s4 told")
    finally:
        fresh.stop()
    assert fresh.lines[:2] == [stop_line_of(s1), stop_line_of(s3)]
    assert fresh.lines[2].startswith("⏰ Late stops: 1 stop") and "run_4" in fresh.lines[2]
    assert fresh.stats is not None and fresh.stats.skipped["too_old"] == 1, fresh.stats
