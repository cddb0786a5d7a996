"""The key under which a run remembers an event it decided (its dedup mark and kept replies).

One key per logical event: a handoff and a report by their request id, an approval's answers
by the approval id (the first resolution wins; every later grant or deny of it gets the same
answer), a run's finish once. The prefixes keep the kinds apart (a request id may equal an
approval id) and are part of the stored run state: changing one forgets every mark.
"""

from __future__ import annotations

from typing import Final

from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    HandoffCompleted,
    HandoffRequested,
    RunEvent,
)

__all__ = ["APPROVAL", "FINISHED", "HANDOFF", "REFUSED", "REPORT", "dedup_key", "with_digest"]

HANDOFF: Final = "h:"
REPORT: Final = "c:"
APPROVAL: Final = "a:"
#: a run's finish (one per run)
FINISHED: Final = "f:"
#: a grant or denial that could not be used: its own key, so that it does not burn the
#: approval's (the real approver's answer must still count)
REFUSED: Final = "r:"


def dedup_key(event: RunEvent) -> str:
    """The key ``event`` is remembered under (dispatch on the exact type: isinstance() on
    pydantic models goes through their metaclass, slow when it misses)."""
    kind = type(event)
    if kind is HandoffRequested or kind is HandoffCompleted:
        return (HANDOFF if kind is HandoffRequested else REPORT) + event.request_id  # type: ignore[union-attr]
    if kind is ApprovalGranted or kind is ApprovalDenied:
        return APPROVAL + event.approval_id  # type: ignore[union-attr]
    return FINISHED


def with_digest(key: str, digest: str) -> str:
    """The key of a report sent again under a used request id with other content: counted
    under its own key (a redelivery of it is still not counted twice)."""
    return f"{key}#{digest}"
