"""The at-least-once order when two callers publish at once (processors/publish_order.py): a
producer that yields while it takes a batch's decisions must not let the second batch's
decisions in first, nor its states before the first batch's."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from baton.processors.publish_order import PipelinedOrder

pytestmark = pytest.mark.unit


class _Yielding(PipelinedOrder):
    """Hands decisions over in two halves with a yield between (as aiokafka's send_batch may)."""

    def __init__(self) -> None:
        super().__init__()
        self._queued: list[Any] = []
        self.log: list[str] = []

    async def _decisions_step(self, out: Any) -> asyncio.Future[None]:
        self.log.append(f"{out.name} decisions start")
        await asyncio.sleep(0.01 if out.name == "first" else 0)
        self.log.append(f"{out.name} decisions end")
        return _acked()

    async def _states_step(self, out: Any) -> asyncio.Future[None]:
        self.log.append(f"{out.name} states")
        return _acked()

    async def publish_decisions_first(self, out: Any, *_: Any, **__: Any) -> Any:
        return await self._in_order(out, None)


def _acked() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def _batch(name: str) -> Any:
    return SimpleNamespace(
        name=name, decisions=[1], dead_letters=[], forwards=[], changed={b"k": (0, None)}
    )


def test_two_callers_without_a_lock_hand_batches_over_one_at_a_time_in_order() -> None:
    async def both() -> list[str]:
        publisher = _Yielding()
        await asyncio.gather(
            publisher.publish(_batch("first")), publisher.publish(_batch("second"))
        )
        return publisher.log

    log = asyncio.run(both())
    assert log.index("second decisions start") > log.index("first decisions end"), log
    assert log.index("first states") < log.index("second states")
