"""Session 18 (H7, review of H2's F7): a partition stalled behind the receive bound is named
in `baton sink`'s status line.

H2 counts every fetch answer past BATON_SINK_MAX_RECEIVE_BYTES (``SinkStats.kafka_error``)
and ``SinkStats.describe`` names the stall; but `baton sink` prints its status line only
when rows were stored or ``last_error`` is set, and the error_cb sets neither: a sink
stalled before storing a row (the record batch among the first, or a sink restarted behind
it, the likely case) never printed the status line (measured: 30 s of a stall with
``--report-every 5``, no status line; the ERROR lines from error_cb were there).
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from baton.sinks import sink as sink_module
from baton.sinks.sink_stats import SinkStats

pytestmark = pytest.mark.unit

#: librdkafka's error_cb text for an answer past receive.message.max.bytes (measured)
REFUSED = (
    'KafkaError{code=_TRANSPORT,val=-195,str="127.0.0.1:54939/111: Receive failed: Invalid '
    'response size 25001207 (0..20000000): increase receive.message.max.bytes"}'
)


def test_a_sink_stalled_before_its_first_row_says_so_in_its_status_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from baton.cli.main import _register, cli

    def stalled(settings: Any, stop: Any, *, on_report: Any, **kw: Any) -> SinkStats:
        stats = SinkStats()
        stats.kafka_error(REFUSED)
        on_report(stats)
        return stats

    monkeypatch.setattr(sink_module, "run_sink", stalled)
    _register()
    result = CliRunner().invoke(
        cli,
        ["sink", "--sql-port", "off"],
        env={"BATON_METRICS_PORT": "off", "BATON_CLICKHOUSE_DSN": "chdb://memory"},
    )
    assert result.exit_code == 0, result.output
    (line,) = [ln for ln in result.output.splitlines() if "fetch answer past" in ln]
    assert "1 fetch answer past the receive bound, a partition stalled" in line
