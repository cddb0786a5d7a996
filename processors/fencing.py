"""Membership fences: a batch writes states and commits offsets only as the owner that fetched it.

A worker the group expelled while it was stuck in a flush must not write run states
(another worker has restored them and moved on), nor commit a transaction's offsets under
a membership it no longer holds. Both checks raise; the worker then exits without
committing (``processors.exits``), and the batch is decided again by the partition's owner.
"""

from __future__ import annotations

from baton.streams.transactions import consumer_group_metadata

__all__ = ["Membership", "check_generation", "group_metadata"]

#: (group id, generation, member id) of a worker's consumer
Membership = tuple[str, int, str]


def check_generation(fetched_in: int, now: int) -> None:
    """Raise unless the consumer generation is still the one the batch was fetched in."""
    if now != fetched_in:
        raise RuntimeError(
            f"consumer generation changed from {fetched_in} to {now} during a batch; "
            "not writing its states"
        )


def group_metadata(expected: Membership, now: Membership) -> bytes:
    """The group metadata for a batch's offset commit (the broker fences a stale one).

    aiokafka resets an expelled member to generation -1 and no member id, and Kafka
    accepts a transactional offset commit with those *without any check*: so the batch
    commits only under the membership it was fetched in.
    """
    if now != expected or now[1] < 0 or not now[2]:
        raise RuntimeError(
            f"group membership changed during a batch (generation {expected[1]} -> "
            f"{now[1]}): not committing its transaction"
        )
    return consumer_group_metadata(*now)
