"""What the publisher unit tests share: a decided batch of new runs, and a wait with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from baton.processors.batch import BatchProcessor, InputRecord, Outputs
from baton.processors.state import RunState
from baton.schemas.policy import load_policy
from tests.helpers import handoff


def decided_batch(runs: int, first: int = 0) -> Outputs:
    """The outputs of one batch: a first handoff of each of ``runs`` runs, run_<first> on."""
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(load_policy(None), 1, states, worker="w")
    records = [
        InputRecord(
            "gov.handoff.requests", 0, i, f"run_{i}".encode(), handoff(f"run_{i}", 1, "x").to_json()
        )
        for i in range(first, first + runs)
    ]
    return proc.process(records, datetime.now(UTC))


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``check`` on the running loop until it is true; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)
