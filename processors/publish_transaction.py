"""One batch's Kafka transaction, the librdkafka side: start transactions, commit a batch's
transaction with its input offsets, abort it.

The publisher (processors/publish.py, exactly-once) begins a transaction per batch, produces
every output record into it and calls ``commit``; anything that fails aborts, so nothing
of the batch is visible to ``read_committed`` readers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from confluent_kafka import KafkaException, Producer, TopicPartition

from baton.processors.publish_delivery import DeliveryFailed
from baton.schemas.errors import BrokerUnavailable

__all__ = ["Offsets", "TransactionFailed", "abort", "commit", "init_transactions"]

log = logging.getLogger("baton.processors.publish")

#: (topic, partition, next offset to read): the input offsets a transaction commits
Offsets = Sequence[tuple[str, int, int]]


class TransactionFailed(BrokerUnavailable):
    """A batch's transaction could not be committed (it was aborted: nothing of it is visible)."""


def init_transactions(producer: Producer, bootstrap: str) -> None:
    """Make ``producer`` ready for transactions (fences an older one of the same id)."""
    try:
        producer.init_transactions(30)
    except KafkaException as exc:
        raise TransactionFailed(
            f"cannot start transactions with Kafka at {bootstrap}: {exc.args[0].str()}"
        ) from exc


def commit(
    producer: Producer,
    offsets: Offsets,
    metadata: bytes | None,
    timeout: float,
    bootstrap: str,
    errors: list[str],
) -> None:
    """Commit the open transaction with ``offsets`` (under the group ``metadata``); raise if
    it cannot be, or if a record of it failed (``errors``, emptied)."""
    if offsets and metadata is not None:
        producer.send_offsets_to_transaction(
            [TopicPartition(t, p, o) for t, p, o in offsets], metadata, timeout
        )
    deadline = time.monotonic() + 3 * timeout  # a few attempts of `timeout` each
    while True:
        try:
            producer.commit_transaction(timeout)
            break
        except KafkaException as exc:
            # a retriable error (e.g. a timeout) leaves the commit in progress: calling
            # commit again resumes it; anything else aborts (or is fatal) in the caller
            err = exc.args[0] if exc.args else None
            if err is None or not err.retriable() or time.monotonic() > deadline:
                raise
            log.warning("committing a transaction with Kafka at %s: %s; retrying",
                        bootstrap, err.str())  # fmt: skip
    if errors:  # commit fails first if a record failed; belt and braces
        failed = list(errors)
        errors.clear()
        raise DeliveryFailed(f"could not deliver {len(failed)} records: {failed[:3]}")


def abort(producer: Producer, errors: list[str]) -> None:
    """Abort the open transaction (nothing of it becomes visible); forget its errors."""
    errors.clear()
    try:
        producer.abort_transaction(30)
    except KafkaException as exc:  # fatal or fenced: the process exits anyway
        log.warning("aborting the transaction failed: %s", exc)
