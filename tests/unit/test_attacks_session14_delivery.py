"""Session 14 (F4): a produce acknowledged without an offset is not delivered.

Tansu answers a batch it takes for a duplicate (another writer used the producer's id and next
sequence on the partition) with offset -1; aiokafka and librdkafka both report that as a
success. Every idempotent producer of Baton's counts it as a failure: the worker's step fails
(it exits uncommitted and decides again under a new producer id), the SDK and ``baton send``
name it. The real worker's case: tests/integration/test_attacks_session14_sequence.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from baton.processors.publish_aiokafka import _Step
from baton.processors.publish_delivery import DeliveryFailed, DeliveryStep
from baton.streams.kafka import NOT_WRITTEN, undelivered


class _Msg:
    def __init__(self, offset: int | None) -> None:
        self._offset = offset

    def topic(self) -> str:
        return "gov.decisions"

    def partition(self) -> int:
        return 3

    def offset(self) -> int | None:
        return self._offset


@pytest.mark.parametrize("offset", [-1, -1001, None])
def test_a_report_without_an_offset_is_not_delivered(offset: int | None) -> None:
    assert undelivered(None, _Msg(offset)) == f"gov.decisions[3]: {NOT_WRITTEN}"


def test_a_report_with_an_offset_is_delivered() -> None:
    assert undelivered(None, _Msg(0)) is None and undelivered(None, _Msg(7)) is None


def test_librdkafka_steps_fail_on_a_report_without_an_offset() -> None:
    async def go() -> None:
        step = DeliveryStep("127.0.0.1:9092")
        step.count = 2
        step.on_delivery(None, _Msg(5))
        step.on_delivery(None, _Msg(-1))
        step.seal()
        with pytest.raises(DeliveryFailed, match="acknowledged without an offset"):
            await step.future

    asyncio.run(go())


def _answered(offset: int) -> asyncio.Future[Any]:
    batch: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    batch.set_result(SimpleNamespace(offset=offset))
    return batch


def test_aiokafka_steps_fail_on_a_batch_answered_without_an_offset() -> None:
    async def go() -> None:
        step = _Step("127.0.0.1:9092", 60)
        step.add(_answered(12), "gov.decisions", 0, 2)
        step.add(_answered(-1), "gov.decisions", 1, 3)
        step.seal()
        with pytest.raises(DeliveryFailed, match=r"3 records .*gov.decisions\[1\]: acknowledged"):
            await step.future

    asyncio.run(go())


def test_aiokafka_steps_pass_batches_answered_with_offsets() -> None:
    async def go() -> None:
        step = _Step("127.0.0.1:9092", 60)
        step.add(_answered(0), "gov.decisions", 0, 2)
        step.seal()
        assert await step.future is None

    asyncio.run(go())
