"""`baton replay --from-kafka`: a stamp ahead amid a partition moves its clock for every record
after it (session 19 H1). The bound on a stamp is the replay's start (plus 60 s), not its
record's writing, so a writer of a topic stamps one record hours ahead, and the records
written after it, read by the worker at once, are read at that stamp: after a kill switch or
a policy update the worker applied after them. The run's handoffs the worker allowed were
replayed as killed (stops replayed as recorded: a stricter policy's stop hidden, exit 0);
a command on gov.control read late the same way held late. Such a run is broken now (exit 7:
in which order the worker read the two is unknown). Without Kafka: the stand-in Consumer of
tests/unit/test_attacks_session17_replay_kafka.py.
"""

from __future__ import annotations

import pytest

from baton.cli.replay_kafka import replay_from_kafka
from baton.schemas.events import KillSwitch, PolicyUpdated
from baton.schemas.settings import Settings
from tests.unit.test_attacks_session17_replay_kafka import _trimmed_topics
from tests.unit.test_engine_support import at, handoff
from tests.unit.test_replay_kafka_read_order import (
    BASELINE,
    CONTROL,
    REQUESTS,
    STRICTER,
    _exit_code,
    _ms,
    _NoEvent,
)

pytestmark = pytest.mark.unit

SETTINGS = Settings(bootstrap="127.0.0.1:1", partitions=1)


def _ra(*seconds: float) -> list:
    return [handoff(f"ra-h{n}", f"t{n}", "p", "r", run_id="ra") for n in range(len(seconds))]


def _pushed() -> list[tuple[int, int, object]]:
    """ra's handoffs at 10, 20 and 30 s, rz's request stamped 1000 s after ra's first."""
    ra = _ra(10, 20, 30)
    rz = handoff("rz-h0", "t0", "p", "r", run_id="rz")
    return [(0, _ms(10), ra[0]), (1, _ms(1000), rz), (2, _ms(20), ra[1]), (3, _ms(30), ra[2])]


def test_records_read_late_past_a_kill_switch_make_their_run_broken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ra's three handoffs at 10, 20 and 30 s, the worker allowed them all; an operator
    kills ra at 200 s. A writer appends rz's request stamped 1000 s after ra's first: ra's
    second and third are read at 1000 s, after the kill, stopped as killed under both
    policies, and the stricter policy's stop of the third (a change) was hidden, exit 0.
    rz, decided after the kill of another run, is replayed."""
    kill = KillSwitch(scope="run", run_id="ra", operator="ops", event_time=at(200))
    _trimmed_topics(monkeypatch, {REQUESTS: _pushed(), CONTROL: [(0, _ms(200), kill)]})
    report, _ = replay_from_kafka(SETTINGS, STRICTER, BASELINE, None, None)
    assert report.broken == ["ra"], (report.partial, report.broken)
    assert "in which order the worker read them is unknown" in report.partial["ra"]
    assert _exit_code(report) == 7


class _Update:
    """A policy update as the stand-in Consumer takes it (no run: no key)."""

    run_id = ""

    def __init__(self, yaml: str, seconds: float) -> None:
        self._update = PolicyUpdated(policy_yaml=yaml, operator="ops", event_time=at(seconds))

    def to_json(self) -> bytes:
        return self._update.to_json()


def test_a_policy_update_read_late_on_the_control_topic_makes_the_runs_between_broken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer of gov.control appends a record that is no command, stamped 1000 s; the
    operator's policy update (max_handoffs 20, signed at 50 s) after it is read at 1000 s.
    The worker decided ra's three handoffs (100-120 s) under it and allowed them all; the
    replay decided them under the baseline (max_handoffs 2), so the new policy's stop of
    the third equalled the baseline's: no change shown, exit 0."""
    update = _Update("multi_agent:\n  max_handoffs: 20\n", 50)
    ra = _ra(100, 110, 120)
    held = {
        REQUESTS: [(n, _ms(100 + 10 * n), event) for n, event in enumerate(ra)],
        CONTROL: [(0, _ms(1000), _NoEvent("")), (1, _ms(50), update)],
    }
    _trimmed_topics(monkeypatch, held)
    report, _ = replay_from_kafka(SETTINGS, STRICTER, STRICTER, None, None)
    assert report.broken == ["ra"], (report.partial, report.broken)
    assert _exit_code(report) == 7


def test_records_read_late_past_to_make_their_run_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same stamp ahead with --to at 500 s: ra's second and third handoffs (20 and 30 s,
    in the range for the worker) are read at 1000 s, after the range, so ra was replayed
    without its third handoff, the stricter policy's stop of it unseen, exit 0."""
    _trimmed_topics(monkeypatch, {REQUESTS: _pushed()})
    report, _ = replay_from_kafka(SETTINGS, STRICTER, BASELINE, None, at(500))
    assert report.broken == ["ra"], (report.partial, report.broken)
    assert _exit_code(report) == 7
