"""How a worker process ends itself when it must not go on: at once, committing nothing."""

from __future__ import annotations

import logging
import os
from typing import NoReturn

__all__ = [
    "EXIT_CONTROL_LOST",
    "EXIT_DELIVERY_FAILED",
    "EXIT_SPILL_LOST",
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


def exit_without_commit(code: int, message: str, *args: object) -> NoReturn:
    """Log ``message`` (with the current exception) and end the process now.

    ``os._exit``, not ``sys.exit``: no ``finally`` may run, because Faust's ``take_events``
    acknowledges its batch in one, and a graceful stop would then commit its offsets.
    """
    log.critical(message, *args, exc_info=True)
    logging.shutdown()
    os._exit(code)
