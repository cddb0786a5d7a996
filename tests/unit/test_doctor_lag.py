"""doctor's lag lines after its own readiness probe (H2, session 33: an idle stack read
`lag: 1` and `audit lag: 1` at every doctor, its own probe decided but not yet committed)."""

from __future__ import annotations

import pytest

from baton.cli import doctor_lag
from baton.cli.doctor_kafka import KafkaView

pytestmark = pytest.mark.unit

TP = ("gov.handoff.requests", 2)


def _measures(*lags: int):  # type: ignore[no-untyped-def]
    seen = iter(lags)
    calls: list[int] = []

    def measure() -> dict:
        lag = next(seen)
        calls.append(lag)
        return {TP: (10, lag)}

    return measure, calls


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_lag.time, "sleep", lambda _s: None)


def test_a_lag_of_one_after_its_own_probe_is_measured_again_until_committed() -> None:
    view = KafkaView({}, {}, {}, probed=True)
    measure, calls = _measures(1, 1, 0)
    assert doctor_lag._settled(view, measure) == {TP: (10, 0)} and calls == [1, 1, 0]


def test_without_a_probe_or_with_more_lag_it_is_measured_once() -> None:
    measure, calls = _measures(1)
    assert doctor_lag._settled(KafkaView({}, {}, {}), measure) == {TP: (10, 1)}
    measure, calls = _measures(5)
    assert doctor_lag._settled(KafkaView({}, {}, {}, probed=True), measure)[TP] == (10, 5)
    assert calls == [5]


def test_a_lag_that_stays_is_reported_after_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 100))
    monkeypatch.setattr(doctor_lag.time, "monotonic", lambda: float(next(clock)))
    measure, calls = _measures(*([1] * 50))
    assert doctor_lag._settled(KafkaView({}, {}, {}, probed=True), measure)[TP] == (10, 1)
    assert 1 < len(calls) <= doctor_lag._PROBE_SETTLE_S + 1
