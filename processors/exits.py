"""How a worker process ends itself when it must not go on: at once, committing nothing."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, NoReturn

from baton.streams.transactions import PartitionHeld, committed_ends

__all__ = [
    "CHANGELOG_HOLD_MARGIN_S",
    "EXIT_CHANGELOG_HELD",
    "EXIT_CONTROL_LOST",
    "EXIT_DELIVERY_FAILED",
    "EXIT_SPILL_LOST",
    "changelog_ends",
    "exit_without_commit",
]

log = logging.getLogger("baton.worker")

#: a batch's outputs could not be delivered (or its states not safely written): the batch
#: is decided again after a restart (at-least-once)
EXIT_DELIVERY_FAILED = 75
#: the control follower died: deciding on without kill switches would fail open
EXIT_CONTROL_LOST = 76
#: a decoded run's kept replies could not be read back from the worker's spill file
#: (processors/state_spill.py): the restart restores them from the changelog
EXIT_SPILL_LOST = 77
#: a changelog to restore is held by a transaction left open (streams.transactions
#: .PartitionHeld): runs restored without the records after it would be decided on old states
EXIT_CHANGELOG_HELD = 78


def exit_without_commit(code: int, message: str, *args: object) -> NoReturn:
    """Log ``message`` (with the current exception) and end the process now.

    ``os._exit``, not ``sys.exit``: no ``finally`` may run, because Faust's ``take_events``
    acknowledges its batch in one, and a graceful stop would then commit its offsets.
    """
    log.critical(message, *args, exc_info=True)
    logging.shutdown()
    os._exit(code)


#: how long past a worker's transaction timeout a changelog may stay held before the worker
#: ends: a Kafka broker has aborted any transaction of a crashed Baton worker by then
CHANGELOG_HOLD_MARGIN_S = 5.0


def changelog_ends(
    kafka_config: Mapping[str, Any],
    ends: Mapping[tuple[str, int], int],
    transaction_timeout_s: float = 10.0,
) -> dict[tuple[str, int], int]:
    """The changelogs' ends table recovery reads to (``transactions.committed_ends``); the
    worker ends (78) when one is held by a transaction left open: restored without the
    records after it, its runs were decided on older states (a handoff stopped before the
    restart was allowed after it: session 30 H1). It is never decided on; its restart tries
    again, and the SDK stops what no worker answers.

    Held means no change for ``transaction_timeout_s`` (the workers' own,
    ``BATON_TRANSACTION_TIMEOUT_MS``) plus :data:`CHANGELOG_HOLD_MARGIN_S`: a Kafka broker
    aborts a crashed worker's transaction within its timeout, and a live one commits in far
    less; one still open past it is no Baton worker's, and waiting longer (a fixed 30 s
    before) only delays the restart that tries again."""
    hold_s = transaction_timeout_s + CHANGELOG_HOLD_MARGIN_S
    try:
        return committed_ends(kafka_config, ends, timeout_s=max(30.0, hold_s), hold_s=hold_s)
    except PartitionHeld as held:
        exit_without_commit(
            EXIT_CHANGELOG_HELD,
            "cannot restore the runs of a changelog: %s; ending uncommitted rather than "
            "deciding on the states before it (docs/security.md: a transaction left open)",
            held,
        )
