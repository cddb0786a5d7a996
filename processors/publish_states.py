"""Run states group-committed to the changelog: at most one send in flight at a time.

At-least-once (processors/publish.py): batches are added in batch order as their decisions are
handed to librdkafka; the states of the batches at the head whose decisions are all
acknowledged are sent, so a state never reaches the changelog before the decisions it
remembers. While a send is in flight, the batches whose decisions are acknowledged wait; when
it is acknowledged they go out together in one send, **coalesced to the newest state per
run** (the later batch's state wins, as a compacted changelog would keep it). Sends follow one
another only after an acknowledgement, so a run's states reach the changelog in batch order.
A batch's future completes once the send covering it is acknowledged; the publisher
acknowledges its input only then (and after the batch before it), so a crash between a
batch's decisions and the coalesced state redelivers the batch, and the run's dedup marks
keep it from counting twice.

Under load this is ~one state send per broker round trip instead of one per batch: librdkafka
sends one produce request per partition per send, and Tansu's cost is per request
(bench/RESULTS.md). Not guaranteed: a state that was coalesced away (an older state of the
same run) never reaches the changelog; nothing reads it there but a restore, which takes the
newest one anyway.

Once a send fails, or a batch's ``before_state`` check refuses (the worker lost its
partitions), every batch it covers, every batch waiting, and every batch that joins later
fails with that error and writes no state.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from baton.processors.batch import Outputs
from baton.processors.state import RunState

__all__ = ["StateGroupCommit"]

#: a run's state to write: its partition, the state (None: delete it), its bytes if made
Pending = tuple[int, RunState | None, bytes | None]
#: hands ``produce`` to librdkafka; the future completes once every record it made is acked
Send = Callable[[Callable[[], None]], asyncio.Future[None]]
ProduceState = Callable[[bytes, int, RunState | None, bytes | None], None]


class _Batch:
    """One batch in the group commit: its decisions' delivery, its states, its check, and
    the future that completes once the send covering its states is acknowledged."""

    __slots__ = ("before_state", "covering", "decisions", "out")

    def __init__(
        self,
        decisions: asyncio.Future[None],
        out: Outputs,
        before_state: Callable[[], None] | None,
        covering: asyncio.Future[None],
    ) -> None:
        self.decisions = decisions
        self.out = out
        self.before_state = before_state
        self.covering = covering


class StateGroupCommit:
    """The changelog writes of the batches whose decisions are acknowledged, one send in flight."""

    def __init__(self, send: Send, produce_state: ProduceState) -> None:
        self._send = send
        self._produce_state = produce_state
        #: batches added, in batch order, whose states are not sent yet
        self._waiting: deque[_Batch] = deque()
        self._sending = False
        self._scheduled = False
        self._failed: Exception | None = None
        #: how many sends and how many batches they covered (tests and benches read them)
        self.sends = 0
        self.batches = 0

    def add(
        self,
        decisions: asyncio.Future[None],
        out: Outputs,
        before_state: Callable[[], None] | None,
    ) -> asyncio.Future[None]:
        """Take a batch (in batch order) whose ``decisions`` are being delivered; the future
        completes once the send covering its states is acknowledged, or fails."""
        covering: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        decisions.add_done_callback(self._decided)
        if self._failed is not None:
            covering.set_exception(self._failed)
        else:
            self._waiting.append(_Batch(decisions, out, before_state, covering))
        return covering

    def _decided(self, decisions: asyncio.Future[None]) -> None:
        """A batch's decisions are acknowledged (or failed): send what is ready, once every
        batch whose reports came in the same poll has been marked too."""
        exc = _failure(decisions)
        if exc is not None:
            self._fail([], exc)
        elif not self._sending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Send the states of the batches at the head whose decisions are acknowledged, newest
        state per run, in one go (no send is in flight)."""
        self._scheduled = False
        waiting = self._waiting
        if self._sending or self._failed is not None:
            return
        group: list[_Batch] = []
        while waiting and waiting[0].decisions.done():
            group.append(waiting.popleft())
        pending: dict[bytes, Pending] = {}
        checks: list[Callable[[], None]] = []
        for batch in group:
            exc = _failure(batch.decisions)
            if exc is not None:
                self._fail(group, exc)
                return
            encoded = batch.out.encoded
            for key, (partition, state) in batch.out.changed.items():
                pending[key] = (partition, state, encoded.get(key))  # a later batch's wins
            if batch.out.changed and batch.before_state is not None:
                checks.append(batch.before_state)
        if not pending:
            self._covered(group)
            return
        try:
            for check in checks:
                check()  # each batch's own: decided under a generation this worker still has
            sent = self._send(lambda: self._produce_all(pending))
        except Exception as exc:
            self._fail(group, exc)
            return
        self._sending = True
        self.sends += 1
        self.batches += len(group)
        sent.add_done_callback(lambda done: self._sent(group, done))

    def _produce_all(self, pending: dict[bytes, Pending]) -> None:
        produce_state = self._produce_state
        for key, (partition, state, encoded) in pending.items():
            produce_state(key, partition, state, encoded)

    def _sent(self, group: list[_Batch], done: asyncio.Future[None]) -> None:
        """A send was acknowledged (or failed): complete the batches it covered, send the next."""
        self._sending = False
        exc = _failure(done)
        if exc is not None:
            self._fail(group, exc)
            return
        self._covered(group)
        if self._waiting and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    @staticmethod
    def _covered(group: list[_Batch]) -> None:
        for batch in group:
            if not batch.covering.done():
                batch.covering.set_result(None)

    def _fail(self, group: list[_Batch], exc: Exception) -> None:
        """No state is written after a failure: fail the batches it covered and every later one."""
        self._failed = exc
        waiting, self._waiting = list(self._waiting), deque()
        for batch in group + waiting:
            if not batch.covering.done():
                batch.covering.set_exception(exc)


def _failure(future: asyncio.Future[None]) -> Exception | None:
    """What a finished delivery future failed with (retrieving it), or None if it succeeded."""
    if future.cancelled():
        return RuntimeError("delivery cancelled")
    exc = future.exception()
    if exc is None or isinstance(exc, Exception):
        return exc
    return RuntimeError(str(exc))
