"""The at-least-once order of publishing batches: decisions, then run states, durable in order.

Both at-least-once publishers (librdkafka's, processors/publish.py, and aiokafka's,
processors/publish_aiokafka.py) keep this order, here once: a batch's decisions (dead
letters, forwards, queued control records) are handed to the producer and the caller goes on
to decide the next batch; once every one of them is acknowledged, and the previous batch's
states were sent, ``before_state`` is called (it may raise: the worker checks it still owns
the partitions) and the batch's run states are sent; once they are acknowledged too, and the
previous batch is durable, the batch is durable and its input may be acknowledged. So a state
never reaches the changelog before the decisions it remembers, a run's states reach it in
batch order, and once a batch fails no later batch writes its states.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from baton.processors.batch import Outputs
from baton.processors.publish_transaction import Offsets

if TYPE_CHECKING:
    from baton.processors.state_gate import StateMac
    from baton.schemas.decision_signing import DecisionSigner
    from baton.schemas.record_mac import RecordMac

__all__ = ["PipelinedOrder", "done_future"]


def done_future() -> asyncio.Future[None]:
    """A future that is complete already: nothing left to wait for."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


class PipelinedOrder(ABC):
    """The order above, for a publisher that hands a batch's decisions and its states to
    its producer (``_decisions_step``, ``_states_step``: each a future completing once all
    its records are acknowledged, or failing)."""

    _queued: Any  # records from other threads, sent with the next batch

    def __init__(self) -> None:
        #: the previous batch's states handed to the producer / its whole batch durable
        self._states_sent: asyncio.Future[None] | None = None
        self._durable: asyncio.Future[None] | None = None
        #: one batch's hand-over at a time: a producer may yield while taking a batch's
        #: decisions, and a second caller must not slip its batch in between (out of order)
        self._handing = asyncio.Lock()
        #: BATON_DECISION_SIGNING_KEY: each decision record is published signed
        #: (schemas/decision_signing.py); None: unsigned
        self.signer: DecisionSigner | None = None
        #: the workers' seal key: each decision record carries the audit MAC the sink checks
        #: (schemas/record_mac.py); None: no MAC
        self.mac: RecordMac | None = None
        #: the same key's MAC on each run state record (processors/state_gate.py); None: none
        self.state_mac: StateMac | None = None

    def _state_value(self, topic: str, key: bytes, raw: bytes) -> bytes:
        """The value on ``topic`` (the changelog) of the run ``key`` whose record is ``raw``."""
        mac = self.state_mac
        return raw if mac is None else mac.marked(topic, key, raw)

    def _signed(self, raw: bytes) -> bytes:
        """The value to publish a decision whose JSON is ``raw`` as."""
        mac, signer = self.mac, self.signer
        if mac is not None:
            raw = mac.marked(raw)
        return raw if signer is None else signer.signed(raw)

    async def publish(
        self,
        out: Outputs,
        before_state: Callable[[], None] | None = None,
        offsets: Offsets = (),
        group_metadata: Callable[[], bytes] | None = None,
    ) -> None:
        """Publish one batch's outputs; return once they are durable, raise if they are not.

        ``before_state`` may raise to keep the states unwritten (the worker checks it still
        owns the partitions). ``offsets`` and ``group_metadata`` are for exactly-once: the
        input offsets committed with the batch's transaction (ignored otherwise: Faust's
        committer commits them after the caller acknowledges the batch).
        """
        await (await self.publish_decisions_first(out, before_state, offsets, group_metadata))

    @abstractmethod
    async def publish_decisions_first(
        self,
        out: Outputs,
        before_state: Callable[[], None] | None = None,
        offsets: Offsets = (),
        group_metadata: Callable[[], bytes] | None = None,
    ) -> asyncio.Future[None]:
        """Hand the batch's decisions over; the future: the whole batch durable."""

    @abstractmethod
    async def _decisions_step(self, out: Outputs) -> asyncio.Future[None]:
        """Hand ``out``'s decisions (dead letters, forwards, queued records) to the producer."""

    @abstractmethod
    async def _states_step(self, out: Outputs) -> asyncio.Future[None]:
        """Hand ``out``'s run states to the producer."""

    async def _in_order(
        self, out: Outputs, before_state: Callable[[], None] | None
    ) -> asyncio.Future[None]:
        """Hand ``out``'s decisions over and return the future of the whole batch durable."""
        if not (self._queued or out.decisions or out.dead_letters or out.forwards or out.changed):
            previous = self._durable  # an idle sweep: durable once the batch before it is
            return previous if previous is not None and not previous.done() else done_future()
        async with self._handing:
            decisions = await self._decisions_step(out)
            previous_sent, previous_durable = self._states_sent, self._durable
            sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            durable = asyncio.ensure_future(
                self._states_after(
                    decisions, previous_sent, previous_durable, sent, out, before_state
                )
            )
            self._states_sent, self._durable = sent, durable
        return durable

    async def _states_after(
        self,
        decisions: asyncio.Future[None],
        previous_sent: asyncio.Future[None] | None,
        previous_durable: asyncio.Future[None] | None,
        sent: asyncio.Future[None],
        out: Outputs,
        before_state: Callable[[], None] | None,
    ) -> None:
        """The second half of a batch: its states, once its decisions are acknowledged."""
        try:
            await decisions
            if previous_sent is not None:
                await previous_sent  # a run's states reach the changelog in batch order
            states = None
            if out.changed:
                if before_state is not None:
                    before_state()
                states = await self._states_step(out)
        except BaseException as exc:
            # the batches after this one must not send their states either
            sent.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            sent.exception()  # retrieved: the caller hears of it through its own future
            raise
        sent.set_result(None)
        if states is not None:
            await states
        if previous_durable is not None:
            await previous_durable  # durable in batch order: acknowledged input in order
