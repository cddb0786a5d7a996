"""Stop alerts without a broker: the seed's line, dedup by decision_id, storm folding."""

from __future__ import annotations

from dataclasses import replace

import pytest

from baton.schemas.decision import Decision, Outcome, Phase
from baton.sinks.alerts import StopAlerter, stop_line

pytestmark = pytest.mark.unit


def _stop(i: int = 742, reason: str = "ownership_conflict", tenant: str = "acme") -> Decision:
    return Decision(
        decision_id=f"d{i}",
        request_id=f"r{i}",
        run_id=f"run_{i}",
        tenant=tenant,
        phase=Phase.PRE_HANDOFF,
        outcome=Outcome.STOP,
        reason=reason,
        from_agent="planner",
        to_agent="researcher",
        task_id="refund_check",
    )


def test_stop_line_is_exactly_the_seeds_format() -> None:
    assert stop_line(_stop()) == (
        "🛑 Multi-Agent run run_742 stopped: ownership_conflict, "
        "handoff=planner -> researcher, task=refund_check"
    )


def test_stop_line_names_missing_agents_and_task_with_a_question_mark() -> None:
    bare = replace(_stop(), from_agent=None, to_agent=None, task_id=None)
    assert stop_line(bare).endswith("handoff=? -> ?, task=?")


def test_a_redelivered_stop_is_announced_once() -> None:
    alerter = StopAlerter(storm_threshold=0)
    first = alerter.offer(_stop(), now=0.0)
    again = alerter.offer(_stop(), now=1.0)
    assert [m.text for m in first] == [stop_line(_stop())]
    assert again == []
    assert alerter.duplicates == 1


def test_dedup_memory_is_bounded_and_forgets_the_oldest() -> None:
    alerter = StopAlerter(storm_threshold=0, remember=3)
    for i in range(4):
        alerter.offer(_stop(i), now=float(i))
    assert alerter.offer(_stop(3), now=10.0) == []  # still remembered
    assert len(alerter.offer(_stop(0), now=11.0)) == 1  # forgotten: announced again


def test_non_stop_decisions_are_not_announced() -> None:
    allow = replace(_stop(), outcome=Outcome.ALLOW, reason="ok")
    assert StopAlerter().offer(allow, now=0.0) == []


def test_a_storm_folds_into_one_summary_per_window() -> None:
    alerter = StopAlerter(storm_threshold=3, storm_window_s=5.0)
    out = []
    for i in range(50):  # 50 stops within 1 s
        reason = "shared_budget_exceeded" if i % 5 == 0 else "ownership_conflict"
        out += alerter.offer(_stop(i, reason, "acme" if i < 40 else "globex"), now=i * 0.02)
    assert [m.storm for m in out] == [False, False]  # the two before the threshold
    assert alerter.holding == 48
    assert alerter.tick(now=4.9) == []  # window not over yet
    [summary] = alerter.tick(now=5.04)
    assert summary.storm and len(summary.decision_ids) == 48
    assert summary.text.startswith("🛑 Stop storm: 48 stops in 5.0 s across 48 Multi-Agent runs: ")
    assert "ownership_conflict ×39" in summary.text and "shared_budget_exceeded ×9" in summary.text
    assert "tenants: acme ×38, globex ×10" in summary.text
    assert "first: Multi-Agent run run_2 stopped: ownership_conflict" in summary.text


def test_after_a_quiet_window_stops_are_announced_one_by_one_again() -> None:
    alerter = StopAlerter(storm_threshold=3, storm_window_s=5.0)
    for i in range(10):
        alerter.offer(_stop(i), now=0.1 * i)
    assert len(alerter.tick(now=6.0)) == 1  # the summary; 8 in the window: still storming
    assert alerter.tick(now=11.5) == []  # a window with nothing: the storm is over
    out = alerter.offer(_stop(99), now=12.0)
    assert [m.text for m in out] == [stop_line(_stop(99))]


def test_shutdown_flushes_what_a_storm_holds() -> None:
    alerter = StopAlerter(storm_threshold=2, storm_window_s=60.0)
    for i in range(5):
        alerter.offer(_stop(i), now=float(i))
    [summary] = alerter.flush(now=5.0)
    assert len(summary.decision_ids) == 4 and alerter.holding == 0


def test_threshold_zero_never_folds() -> None:
    alerter = StopAlerter(storm_threshold=0, storm_window_s=1.0)
    out = [m for i in range(100) for m in alerter.offer(_stop(i), now=0.0)]
    assert len(out) == 100 and not any(m.storm for m in out)


def test_invalid_storm_settings_are_refused_naming_the_values() -> None:
    with pytest.raises(ValueError, match=r"got -1, 5\.0, 10"):
        StopAlerter(storm_threshold=-1, storm_window_s=5.0, remember=10)
