"""How the audit sink and the alerter read the workers' output topics."""

from __future__ import annotations

import pytest

from baton.streams.kafka import output_isolation

pytestmark = pytest.mark.unit


def test_at_least_once_output_is_read_uncommitted_and_exactly_once_committed() -> None:
    # at_least_once: no Baton writer uses transactions there; one left open by another
    # writer must not hold the audit and the alerts back (session 30 H1)
    assert output_isolation("at_least_once") == "read_uncommitted"
    assert output_isolation("exactly_once") == "read_committed"
    assert output_isolation(None) == "read_committed"  # unknown: as librdkafka's default


def test_the_sink_and_the_alerter_take_it_from_their_settings() -> None:
    import inspect

    from baton.sinks import alerts, sink

    for module in (sink, alerts):
        assert 'output_isolation(getattr(settings, "processing_guarantee"' in inspect.getsource(
            module
        )
