"""Publish-and-confirm with an optional signing key: what approvers and operators share.

An approver or operator holds an Ed25519 private key (``baton keys new``); the policy lists its
public key (``multi_agent.approval.keys``, top-level ``operators``). Given ``key=`` (or
``key_file=``), the clients sign every answer and command inside
(``baton.schemas.signing``): what is signed is fixed there, for signer and verifier alike, so
a caller never builds a payload. The event's ``event_time`` is the signing time.

Waiting: with ``wait=True`` a call returns the worker's record of *this* answer or command,
either the one it applied or the one it refused with (outcome ``recorded``, the reason says
why: ``bad_signature``, ``approval_unsigned``, ``control_replayed`` …). Not guaranteed: an
answer that arrives at the worker after the caller gave up is decided all the same; with
several workers the record comes from the first one that applied a control command.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from baton.schemas.decision import Decision
from baton.schemas.errors import BrokerUnavailable
from baton.schemas.signing import load_private_key, sign
from baton.streams.sdk.base import ClientBase
from baton.streams.sdk.options import checked_seconds
from baton.streams.sdk.waiters import Unanswered, Waiter, WaitKey

__all__ = ["SignedPublisher"]


class SignedPublisher(ClientBase):
    """Blocking publish-and-confirm, with an optional signing key, for both clients."""

    def __init__(
        self,
        bootstrap: str | None = None,
        *,
        key: Ed25519PrivateKey | None = None,
        key_file: str | Path | None = None,
        **options: Any,
    ) -> None:
        if key is not None and key_file is not None:
            raise ValueError("give key= or key_file=, not both")
        if key is not None and not isinstance(key, Ed25519PrivateKey):
            raise TypeError(f"key: expected an Ed25519PrivateKey, got {type(key).__name__}")
        # read before connecting: a key others can read is refused (SigningKeyError)
        self.key = load_private_key(key_file) if key_file is not None else key
        super().__init__(bootstrap, **options)

    def __enter__(self) -> Any:
        self.channel.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        self.channel.close(timeout)

    def _confirm(self, what: str) -> None:
        # a grant or a kill switch that silently stays in a local queue is worse than an error
        left = self.channel.flush(self.options.connect_timeout_s)
        error = self.channel.last_delivery_error()
        if left:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {self.bootstrap} to publish {what} "
                f"({error or f'not acknowledged within {self.options.connect_timeout_s:g} s'})"
                "; is the broker running?"
            )

    def _signature(self, payload: Callable[[], bytes], given: str | None = None) -> str | None:
        """The client key's signature over ``payload()``; without a key, ``given`` (if any)."""
        if self.key is None:
            return given
        if given is not None:
            raise ValueError("give signature= or a client key, not both")
        return sign(self.key, payload())

    def _send_and_wait(
        self,
        topic: str,
        key: bytes,
        raw: bytes,
        run_id: str,
        waits: list[WaitKey],
        what: str,
        timeout: float | None,
        ours: Callable[[Decision], bool] | None = None,
    ) -> Decision:
        """Publish ``raw`` and return the first decision under one of ``waits`` that
        ``ours`` (a predicate; None: any) accepts as the answer to it."""
        wait_s = self.options.timeout_s if timeout is None else checked_seconds("timeout", timeout)
        t = self.channel
        futures: list[concurrent.futures.Future[Any]] = [concurrent.futures.Future() for _ in waits]
        waiters = [Waiter(f) for f in futures]
        # every key is awaited before the record can be produced (submit may produce at once)
        for wait_key, waiter in zip(waits[1:], waiters[1:], strict=True):
            t.waiters.register(wait_key, waiter)
        t.submit(
            topic,
            key,
            raw,
            decisions_partition=t.partition_of(run_id),
            wait_key=waits[0],
            waiter=waiters[0],
        )
        deadline = time.monotonic() + wait_s
        pending = set(futures)
        try:
            while pending:
                done, pending = concurrent.futures.wait(
                    pending, max(deadline - time.monotonic(), 0), return_when="FIRST_COMPLETED"
                )
                if not done:
                    break
                for future in done:
                    result = future.result()
                    if isinstance(result, Unanswered):
                        raise BrokerUnavailable(f"{what}: {result.detail}")
                    if ours is None or ours(result):
                        return result  # type: ignore[no-any-return]
            self._confirm(what)
            error = t.last_delivery_error()
            held = self._held(t.catalog.decisions, t.partition_of(run_id))
            ignored = sum(t.unsigned.count(k) for k in waits)
            if ignored:  # a worker may have applied it: its record was not signed by our key
                held = (
                    f"{ignored} answer(s) ignored: signed by no key of decision_keys (forged, "
                    "or the workers sign with another BATON_DECISION_SIGNING_KEY: a worker may "
                    "have applied it)"
                )
            raise BrokerUnavailable(
                f"{what} was published to Kafka at {self.bootstrap}, but no worker answered "
                f"it within {wait_s:g} s; "
                + (held or "is a worker running?")
                + (f" (last Kafka error: {error})" if error else "")
            )
        finally:
            for wait_key, waiter in zip(waits, waiters, strict=True):
                t.waiters.unregister(wait_key, waiter)

    def _held(self, topic: str, partition: int) -> str | None:
        """Why no answer could be read on ``topic[partition]`` when a transaction a writer
        left open holds it (read_committed readers stop there: a worker may well have
        answered, unseen), else None. One short probe (streams.transactions), only once the
        wait is over; a probe that fails says nothing."""
        from baton.streams.transactions import held_partitions

        try:
            held, _ = held_partitions(
                self.options.kafka_config, [(topic, partition)], hold_s=1.0, timeout_s=3.0
            )
        except Exception:
            return None
        if (topic, partition) not in held:
            return None
        stable, high = held[topic, partition]
        return (
            f"{topic}[{partition}] is held by a transaction left open at offset {stable} "
            f"({high - stable} records behind it): no answer there can be read until it ends, "
            "though a worker may have answered; `baton doctor` names it"
        )
