"""A real worker filling up: it says so in its log at half its cap, and at the cap, before and
as new runs are stopped worker_run_limit (tombstones count; docs/deploy.md "Worker memory")."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.schemas.decision import Reason
from baton.streams.embedded import EmbeddedBroker
from tests.helpers import handoff, wait_for
from tests.integration.conftest import TEST_POLICY, one_worker_stack

pytestmark = pytest.mark.integration


def test_a_worker_filling_up_says_so_before_it_refuses_new_runs(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    with one_worker_stack(
        broker, tmp_path, TEST_POLICY, "cap", extra_env={"BATON_MAX_RUNS": "24"}
    ) as s:
        (w,) = s.workers
        s.requests.send(handoff(f"run-{i}", 1, "t") for i in range(14))
        for i in range(14):
            s.decisions.wait_run(f"run-{i}", 1)
        # the readiness probes' runs count too: 14 runs and up to 4 probes of 24
        line = wait_for(
            lambda: next((ln for ln in w.log().splitlines() if "of what it may" in ln), None),
            20,
            message=w.log,
        )
        assert "WARNING" in line and "runs and tombstones of max_runs 24" in line
        assert "BATON_TOMBSTONE_RETENTION_S" in line and "new runs a day for good" in line
        assert "is full" not in w.log()

        s.requests.send(handoff(f"more-{i}", 1, "t") for i in range(12))
        for i in range(12):
            s.decisions.wait_run(f"more-{i}", 1)
        refused = [
            i
            for i in range(12)
            if s.decisions.for_run(f"more-{i}")[0].reason == Reason.WORKER_RUN_LIMIT
        ]
        assert refused, [s.decisions.for_run(f"more-{i}")[0].reason for i in range(12)]
        full = wait_for(
            lambda: next((ln for ln in w.log().splitlines() if " is full: " in ln), None),
            20,
            message=w.log,
        )
        assert "ERROR" in full and "every new run is stopped worker_run_limit" in full
