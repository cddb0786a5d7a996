"""`baton replay --from-kafka`: a grant or denial of a run read before the run's first request
(session 18 H6). Requests and approvals are two topics, merged by their partitions' clocks;
a writer of gov.approvals appends a grant under a run's key (any approval id) stamped early,
on a quiet approvals partition whose clock is behind: read (by clock) before the run's first
request, in the range or before it, it made the run partial ("begun before the range"), its
change under a stricter policy hidden, exit 0. The worker read it when it was written; in
which order it read the two is unknown: the run is listed broken (exit 7), never passed by
its absence. Without Kafka: decide_topics, or the stand-in Consumer of
tests/unit/test_attacks_session17_replay_kafka.py.
"""

from __future__ import annotations

import pytest

from baton.cli.replay_kafka import decide_topics, replay_decided, replay_from_kafka
from baton.processors.batch import InputRecord
from baton.schemas.settings import Settings
from tests.unit.test_attacks_session17_replay_kafka import _trimmed_topics
from tests.unit.test_engine_support import at, denied, granted, handoff
from tests.unit.test_replay_kafka_read_order import (
    APPROVALS,
    BASELINE,
    CONTROL,
    REQUESTS,
    STRICTER,
    _exit_code,
    _ms,
    _request,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "answer",
    [granted("ap-forged", "oncall_amy", run_id="ra"), denied("ap-1", "eve", run_id="ra")],
    ids=["grant", "denial"],
)
def test_an_answer_read_before_a_runs_first_request_makes_it_broken_not_partial(
    answer: object,
) -> None:
    record = (_ms(5), APPROVALS, InputRecord(APPROVALS, 0, 0, b"ra", answer.to_json()))
    requests = [_request("ra", n, n, 10 + 10 * n) for n in range(3)]
    report = replay_decided(
        decide_topics([record, *requests], BASELINE, 1, APPROVALS, CONTROL), STRICTER
    )
    assert report.broken == ["ra"], (report.partial, report.broken)
    assert "before its first request" in report.partial["ra"]
    assert _exit_code(report) == 7


def test_an_answer_read_before_since_of_a_run_begun_in_the_range_makes_it_broken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same grant stamped before --since (the author's known residual of ffb00eb: "a
    record written under a run's id and stamped before --since makes that run begun before
    the range"): ra partial, exit 0. ra has no request before the range: broken, exit 7."""
    events = [handoff(f"ra-h{n}", f"t{n}", "p", "r", run_id="ra") for n in range(3)]
    held = {
        REQUESTS: [(n, _ms(100 + n), event) for n, event in enumerate(events)],
        APPROVALS: [(0, _ms(0), granted("ap-forged", "oncall_amy", run_id="ra"))],
    }
    _trimmed_topics(monkeypatch, held)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1)
    report, _ = replay_from_kafka(settings, STRICTER, BASELINE, at(50), None)
    assert report.broken == ["ra"], (report.partial, report.broken)
    assert _exit_code(report) == 7


def test_a_run_begun_before_since_whose_grant_is_before_it_too_is_replayed_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run with a request before --since is begun before the range, whatever else of it
    is read there: not broken. Every record of it is read (the topic from its start): it is
    replayed from its first request (session 19; it was partial, cut by the range)."""
    events = [handoff(f"ra-h{n}", f"t{n}", "p", "r", run_id="ra") for n in range(3)]
    held = {
        REQUESTS: [(0, _ms(0), events[0]), (1, _ms(100), events[1]), (2, _ms(101), events[2])],
        APPROVALS: [(0, _ms(1), granted("ap-x", "oncall_amy", run_id="ra"))],
    }
    _trimmed_topics(monkeypatch, held)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1)
    report, _ = replay_from_kafka(settings, STRICTER, BASELINE, at(50), None)
    assert not report.partial and not report.broken, (report.partial, report.broken)
    assert [(r.run_id, r.decisions) for r in report.runs] == [("ra", 4)]


def test_an_answer_in_a_trimmed_approvals_partitions_window_does_not_hide_a_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trimmed, quiet approvals partition (its first record read not at offset 0, its
    clock within run_retention_s of its first stamp): a grant appended under ra's key,
    stamped early, is read within the window, and ra, whose requests are all in the range,
    was "may have begun in what is gone": partial, exit 0. An answer in the window begins
    no run; ra's first event read is that answer: broken, exit 7."""
    events = [handoff(f"ra-h{n}", f"t{n}", "p", "r", run_id="ra") for n in range(3)]
    held = {
        REQUESTS: [(n, _ms(100 + n), event) for n, event in enumerate(events)],
        APPROVALS: [
            (7, _ms(10), granted("ap-old", "amy", run_id="rz")),
            (8, _ms(11), granted("ap-forged", "oncall_amy", run_id="ra")),
        ],
    }
    _trimmed_topics(monkeypatch, held)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1, run_retention_s=3600)
    report, _ = replay_from_kafka(settings, STRICTER, BASELINE, None, None)
    assert report.broken == ["ra"], (report.partial, report.broken)
    assert _exit_code(report) == 7


def test_a_grant_kept_whose_run_retention_deleted_stays_partial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The legit case the window is for: a grant among a trimmed approvals partition's
    first records whose run's requests retention deleted (none in the range): partial
    (its history is gone), not broken; the other runs decide the exit."""
    events = [handoff(f"ra-h{n}", f"t{n}", "p", "r", run_id="ra") for n in range(3)]
    held = {
        REQUESTS: [(n, _ms(100 + n), event) for n, event in enumerate(events)],
        APPROVALS: [(7, _ms(10), granted("ap-old", "amy", run_id="rz"))],
    }
    _trimmed_topics(monkeypatch, held)
    settings = Settings(bootstrap="127.0.0.1:1", partitions=1, run_retention_s=3600)
    report, _ = replay_from_kafka(settings, STRICTER, BASELINE, None, None)
    assert "rz" in report.partial and not report.broken, (report.partial, report.broken)
    assert _exit_code(report) == 1
