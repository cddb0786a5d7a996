"""`baton replay --from-kafka --redecide` runs the worker's sweep on the records' clock
(processors/replay_sweep.py): a run idle for its run retention is a tombstone (its late
handoff stopped ``run_expired``, as the worker stopped it), a tombstone is forgotten its
tombstone retention after the run's last event (the run id a new run's: session 19 H3's
break, test_attacks_session19_replay_kafka.py), and a run that keeps knocking keeps its
tombstone. The read before ``--since`` forgets such a run too (cli/replay_kafka_kept.py).
Without Kafka: the stand-in Consumer of tests/unit/test_attacks_session17_replay_kafka.py.
"""

from __future__ import annotations

import pytest

from baton.cli.replay_kafka import decide_topics, replay_from_kafka
from baton.schemas.settings import Settings
from tests.unit.test_attacks_session17_replay_kafka import _trimmed_topics
from tests.unit.test_engine_support import at, finished, handoff
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

#: the workers' retentions in these tests: evicted after 1 h idle, forgotten 2 h later
SETTINGS = Settings(
    bootstrap="127.0.0.1:1", partitions=1, run_retention_s=3600, tombstone_retention_s=7200
)
RETENTION = (SETTINGS.run_retention_s, SETTINGS.tombstone_retention_s)


def _h(run: str, n: int, seconds: float) -> tuple[int, int, object]:
    return (n, _ms(seconds), handoff(f"{run}-h{n}", f"t{n}", "p", "r", run_id=run))


def test_a_handoff_after_the_run_idled_past_its_retention_is_stopped_run_expired() -> None:
    """ra's two handoffs at 0 and 1 s, its third at 4000 s: the worker's sweep had made ra a
    tombstone at 3601 s and stopped the third run_expired. The batch step alone allowed it
    (no sweep: every run kept for good)."""
    records = [_request("ra", n, n, s) for n, s in enumerate((0, 1, 4000))]
    rows = decide_topics(records, BASELINE, 1, APPROVALS, CONTROL, retention=RETENTION).rows
    assert [(r.outcome, r.reason) for r in rows] == [
        ("allow", "ok"),
        ("allow", "ok"),
        ("stop", "run_expired"),
    ]


def test_within_its_retention_the_run_is_decided_live() -> None:
    """The same third handoff at 3500 s: ra is not due, allowed."""
    records = [_request("ra", n, n, s) for n, s in enumerate((0, 1, 3500))]
    rows = decide_topics(records, BASELINE, 1, APPROVALS, CONTROL, retention=RETENTION).rows
    assert [r.outcome for r in rows] == ["allow"] * 3


@pytest.mark.parametrize("since", [None, 12000])
def test_a_run_that_knocks_on_its_tombstone_keeps_it(
    monkeypatch: pytest.MonkeyPatch, since: float | None
) -> None:
    """ra finished at 0 s (a tombstone from 3600 s, forgotten at 10800 s if nothing came),
    a handoff of it at 9000 s (stopped: the tombstone is counted from it on, to 16200 s),
    three more at 14000-14002 s: still the tombstone's, stopped under either policy. Taken
    as a new run (forgotten at 10800 s), the stricter policy's stop of the third would be a
    change that never was."""
    held = [(0, _ms(0), finished(run_id="ra")), _h("ra", 1, 9000)]
    held += [_h("ra", 2 + n, 14000 + n) for n in range(3)]
    held[2:] = [(2 + n, stamp, event) for n, (_, stamp, event) in enumerate(held[2:])]
    held.append((5, _ms(14010), handoff("rb-h0", "t0", "p", "r", run_id="rb")))
    _trimmed_topics(monkeypatch, {REQUESTS: held})
    report, _ = replay_from_kafka(
        SETTINGS, STRICTER, BASELINE, None if since is None else at(since), None
    )
    assert not report.changed_runs, [r.run_id for r in report.changed_runs]
    assert _exit_code(report) == 0


@pytest.mark.parametrize("neighbour", [False, True])
def test_a_run_forgotten_before_the_range_and_begun_again_shows_its_change(
    monkeypatch: pytest.MonkeyPatch, neighbour: bool
) -> None:
    """ra finished at 0 s, forgotten at 10800 s; its id used again at 12000 and 12001 s
    (before --since 15000 s) and at 15500 s (in the range): a new run whose third handoff
    the stricter policy stops, a change (exit 1). With ``neighbour`` (rb's request at
    5000 s on the same partition), ra was first dropped idle before the range, as begun
    before it, and must be taken back as a new run at 12000 s."""
    held = [(0, _ms(0), finished(run_id="ra"))]
    if neighbour:
        held.append((0, _ms(5000), handoff("rb-h0", "t0", "p", "r", run_id="rb")))
    held += [_h("ra", n, s) for n, s in enumerate((12000, 12001, 15500))]
    held = [(offset, stamp, event) for offset, (_, stamp, event) in enumerate(held)]
    _trimmed_topics(monkeypatch, {REQUESTS: held})
    report, _ = replay_from_kafka(SETTINGS, STRICTER, BASELINE, at(15000), None)
    assert "ra" not in report.partial, report.partial
    assert [r.run_id for r in report.changed_runs] == ["ra"]
    assert _exit_code(report) == 1


def test_a_run_evicted_but_not_forgotten_before_the_range_stays_begun_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ra finished at 0 s, its id used again at 9000 s (the tombstone's: stopped) and in the
    range at 15500 s: not forgotten (counted from 9000 s): still partial, never decided as
    a new run."""
    held = [(0, _ms(0), finished(run_id="ra")), _h("ra", 1, 9000), _h("ra", 2, 15500)]
    held.append((3, _ms(15600), handoff("rb-h0", "t0", "p", "r", run_id="rb")))
    held = [(offset, stamp, event) for offset, (_, stamp, event) in enumerate(held)]
    _trimmed_topics(monkeypatch, {REQUESTS: held})
    report, _ = replay_from_kafka(SETTINGS, STRICTER, BASELINE, at(15000), None)
    assert "ra" in report.partial and not report.changed_runs
