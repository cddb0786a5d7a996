"""Who waits for which decision: callers by ``(run_id, request_id, phase)``, and parked approvals.

A waiter is a thread (a ``concurrent.futures.Future``) or an asyncio task (an
``asyncio.Future`` and its loop); the decision reader resolves thread waiters directly and
asyncio ones with one ``call_soon_threadsafe`` per loop and batch. An approval decision read
before anyone waits for it (the approver answered before the orchestrator called
``wait_for_approval``) is parked until someone asks, or until the approval's expiry plus a
grace period. Not guaranteed: past ``PARKED_MAX`` parked approvals the oldest is dropped (its
waiter then times out and fails closed).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from baton.schemas.decision import UNCHAINED_OUTCOMES, Decision, Outcome, Phase, is_link

__all__ = ["PARKED_MAX", "Unanswered", "WaitKey", "Waiter", "WaiterBook", "unchained_allow"]

WaitKey: TypeAlias = tuple[str, str, str]  # (run_id, request_id, phase)

#: approval decisions nobody waits for yet are kept this long past the approval's expiry
PARKED_GRACE_S = 60.0
PARKED_MAX = 100_000


def unchained_allow(decision: Decision) -> bool:
    """True for a decision without a worker's ``chain_hash`` (None, "", or not 32 lowercase
    hex characters, what every link is) that does not refuse: no
    worker publishes one (it links every decision that changes a run), so it answers
    nothing. A writer of gov.decisions published such an allow under a decision id the
    worker never uses, or another tenant: a waiting client took it, and the audit kept it
    outside every chain, where `baton audit verify` passed it."""
    if decision.outcome in UNCHAINED_OUTCOMES:
        return False
    # a worker's link is a 16-byte BLAKE2b in lowercase hex: " " or "x" is no link (it passed)
    return not is_link(decision.chain_hash)


@dataclass(frozen=True, slots=True)
class Unanswered:
    """Resolves a waiter that will get no decision (client closed, partition unreadable)."""

    detail: str
    #: Baton answered, in a record this client cannot read (a newer worker's outcome, a
    #: damaged record): a stop even for a fail-open client, which allowed it at its timeout
    unreadable: bool = False


@dataclass(slots=True, eq=False)
class Waiter:
    """One caller waiting for one decision: a thread (``loop`` None) or an asyncio task.

    ``answers``: whether a decision under the waiter's key answers *its* request (None: any
    does). A run and request id do not name one request: another client's request under the
    same ids (a careless counter, or a writer of the requests topic racing a predictable id)
    is decided first and its allow published under the same key; the worker refuses the
    second as ``request_id_reused``, but its waiter had taken the first one's allow."""

    future: concurrent.futures.Future[Any] | asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop | None = None
    answers: Callable[[Decision], bool] | None = None


@dataclass(slots=True)
class _Parked:
    """An approval this client asked for: its decision is kept until someone waits for it."""

    run_id: str
    keep_until: float
    decision: Decision | None = None
    #: the approval asked for: an approval-phase decision of another approval under the same
    #: run and request id (another client's request) is not parked for this one
    approval_id: str | None = None


def _set(future: Any, value: Any) -> None:
    if not future.done():
        with contextlib.suppress(concurrent.futures.InvalidStateError, asyncio.InvalidStateError):
            future.set_result(value)


def _resolve_all(items: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, value in items:
        _set(future, value)


def resolve(pairs: list[tuple[Waiter, Any]]) -> None:
    """Hand results over: thread futures directly, asyncio ones in one callback per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any]]] = defaultdict(list)
    for waiter, result in pairs:
        if waiter.loop is None:
            _set(waiter.future, result)
        else:
            by_loop[waiter.loop].append((waiter.future, result))
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve_all, batch)


class WaiterBook:
    """The waiters of one client and its parked approval decisions, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[WaitKey, list[Waiter]] = {}
        self._parked: dict[WaitKey, _Parked] = {}

    def awaited(self, wait_key: WaitKey) -> bool:
        """Whether a decision under ``wait_key`` is wanted (unlocked: a cheap first look)."""
        return wait_key in self._waiters or wait_key in self._parked

    def register(self, wait_key: WaitKey, waiter: Waiter) -> None:
        """Have ``waiter`` wait for ``wait_key``'s decision (before its request is published)."""
        with self._lock:
            self._waiters.setdefault(wait_key, []).append(waiter)

    def unregister(self, wait_key: WaitKey, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(wait_key)
            if waiters and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[wait_key]

    def claim_parked(self, wait_key: WaitKey, waiter: Waiter) -> Decision | None:
        """A parked approval decision, or None after registering ``waiter`` for it."""
        with self._lock:
            parked = self._parked.get(wait_key)
            if parked is not None and parked.decision is not None:
                del self._parked[wait_key]
                # the check every read decision meets (another request's digest)
                if waiter.answers is None or waiter.answers(parked.decision):
                    return parked.decision
            self._waiters.setdefault(wait_key, []).append(waiter)
            return None

    def parked(self, wait_key: WaitKey) -> Decision | None:
        """The approval decision read for ``wait_key`` that nobody has waited for yet, if any."""
        with self._lock:
            slot = self._parked.get(wait_key)
            return slot.decision if slot is not None else None

    def forget_run(self, run_id: str) -> None:
        """Drop approval decisions parked for ``run_id`` (the run is finished)."""
        with self._lock:
            for key in [k for k, p in self._parked.items() if p.run_id == run_id]:
                del self._parked[key]

    def take(self, wait_key: WaitKey, decision: Decision) -> list[Waiter]:
        """The waiters ``decision`` answers, removed; parks an approval nobody waits for yet."""
        with self._lock:
            waiters = self._answered(wait_key, decision)
            if decision.phase == Phase.APPROVAL:
                slot = self._parked.get(wait_key)
                if waiters:
                    self._parked.pop(wait_key, None)
                elif (
                    slot is not None
                    and slot.decision is None
                    and slot.approval_id in (None, decision.approval_id)
                    and not unchained_allow(decision)
                ):
                    slot.decision = decision
            elif waiters and decision.outcome == Outcome.APPROVAL_REQUIRED:
                # the approver may answer before our caller gets to wait_for_approval
                self._park(decision)
            return waiters

    def _answered(self, wait_key: WaitKey, decision: Decision) -> list[Waiter]:
        """The waiters of ``wait_key`` that ``decision`` answers, removed (under the lock);
        the others wait on for their own request's decision."""
        waiters = self._waiters.pop(wait_key, None) or []
        mine = [w for w in waiters if w.answers is None or w.answers(decision)]
        if len(mine) < len(waiters):
            self._waiters[wait_key] = [w for w in waiters if w not in mine]
        return mine

    def take_all(self, wait_keys: list[WaitKey]) -> list[Waiter]:
        """The waiters of ``wait_keys``, removed (their requests will get no decision)."""
        with self._lock:
            return [w for k in wait_keys for w in self._waiters.pop(k, ())]

    def take_everyone(self) -> list[Waiter]:
        """Every waiter, removed (the client closes or its reader died)."""
        with self._lock:
            waiters = [w for ws in self._waiters.values() for w in ws]
            self._waiters.clear()
            return waiters

    def prune_parked(self) -> None:
        """Drop parked approvals kept past their approval's expiry and grace."""
        now = time.monotonic()
        with self._lock:
            for key in [k for k, p in self._parked.items() if p.keep_until < now]:
                del self._parked[key]

    def _park(self, decision: Decision) -> None:
        expires = decision.approval_expires_at
        left = (expires - datetime.now(expires.tzinfo)).total_seconds() if expires else 3600.0
        key = (decision.run_id, decision.request_id, str(Phase.APPROVAL))
        if key not in self._parked:
            if len(self._parked) >= PARKED_MAX:
                del self._parked[next(iter(self._parked))]
            self._parked[key] = _Parked(
                decision.run_id,
                time.monotonic() + max(left, 0.0) + PARKED_GRACE_S,
                approval_id=decision.approval_id,
            )
