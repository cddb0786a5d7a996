"""`baton replay --from-kafka --redecide` applies the recorded control records as history: it
logs none of them (it logged each recorded kill switch twice, as a live warning)."""

from __future__ import annotations

import logging

import pytest

from baton.cli.replay_kafka import replay_from_kafka
from baton.processors.batch import InputRecord
from baton.processors.control_apply import ControlInForce, apply_control_record
from baton.processors.engine import NO_KILLS
from baton.schemas.events import KillSwitch
from tests.unit.test_attacks_session17_replay_kafka import _trimmed_topics
from tests.unit.test_attacks_session19_replay_kafka import SETTINGS, _ra
from tests.unit.test_engine_support import at
from tests.unit.test_replay_kafka_read_order import BASELINE, CONTROL, REQUESTS, STRICTER, _ms

pytestmark = pytest.mark.unit

CONTROL_LOG = "baton.processors.control"


def test_a_recorded_kill_switch_is_not_logged_by_its_replay(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kill = KillSwitch(scope="run", run_id="ra", operator="ops", event_time=at(200))
    _trimmed_topics(monkeypatch, {REQUESTS: _ra(150, 170, 250), CONTROL: [(0, _ms(200), kill)]})
    with caplog.at_level(logging.INFO, logger=CONTROL_LOG):
        report, _ = replay_from_kafka(SETTINGS, STRICTER, BASELINE, None, None)
    assert report.decisions  # replayed, the kill applied (its stop is in the runs)
    assert [r for r in caplog.records if r.name == CONTROL_LOG] == []


def test_a_kill_switch_applied_after_a_replay_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    kill = KillSwitch(scope="run", run_id="ra", operator="ops", event_time=at(200))
    rec = InputRecord(
        topic="gov.control", partition=0, offset=0, key=b"*", value=kill.model_dump_json().encode()
    )
    with caplog.at_level(logging.WARNING, logger=CONTROL_LOG):
        apply_control_record(ControlInForce(NO_KILLS, BASELINE, None, "t"), rec, "w", at(201))
    assert any("kill_switch run ra by ops" in r.getMessage() for r in caplog.records)
