"""The identity of an event a run decided: the key it is remembered under, and its digest.

The key (its dedup mark and kept replies) is one per logical event: a handoff and a report
by their request id, an approval's answers by the approval id (the first resolution wins;
every later grant or deny of it gets the same answer), a run's finish once. The prefixes
keep the kinds apart (a request id may equal an approval id) and are part of the stored run
state: changing one forgets every mark. The digest (``request_digest``) is what a request id
stands for: a retry matches it, the same id reused for another request does not.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import orjson

from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    HandoffCompleted,
    HandoffRequested,
    RunEvent,
)

__all__ = [
    "APPROVAL",
    "FINISHED",
    "HANDOFF",
    "REFUSED",
    "REPORT",
    "TOMBSTONE_REPORT",
    "dedup_key",
    "digest_of",
    "request_digest",
    "request_key",
    "untimed_fields",
    "with_digest",
]

# (Final: a compiled module reads these from C statics, not through its dict)
_HandoffRequested: Final = HandoffRequested
_HandoffCompleted: Final = HandoffCompleted
_ApprovalGranted: Final = ApprovalGranted
_ApprovalDenied: Final = ApprovalDenied

HANDOFF: Final = "h:"
REPORT: Final = "c:"
APPROVAL: Final = "a:"
#: a run's finish (one per run)
FINISHED: Final = "f:"
#: a grant or denial that could not be used: its own key, so that it does not burn the
#: approval's (the real approver's answer must still count)
REFUSED: Final = "r:"
#: a report a tombstone counted, by its digest alone (which covers its run and request id):
#: ~20 bytes of record a report where its key and digest took ~60 (RunState.tombstone)
TOMBSTONE_REPORT: Final = "c#"


def dedup_key(event: RunEvent) -> str:
    """The key ``event`` is remembered under (dispatch on the exact type: isinstance() on
    pydantic models goes through their metaclass, slow when it misses)."""
    kind = type(event)
    if kind is _HandoffRequested or kind is _HandoffCompleted:
        return request_key(kind is _HandoffRequested, event.request_id)  # type: ignore[union-attr]
    if kind is _ApprovalGranted or kind is _ApprovalDenied:
        return APPROVAL + event.approval_id  # type: ignore[union-attr]
    return FINISHED


def request_key(requested: bool, request_id: str) -> str:
    """The key of a handoff request (``requested``) or of its cost report, by request id."""
    return (HANDOFF if requested else REPORT) + request_id


def with_digest(key: str, digest: str) -> str:
    """The key of a report sent again under a used request id with other content: counted
    under its own key (a redelivery of it is still not counted twice)."""
    return f"{key}#{digest}"


#: an empty 8-byte BLAKE2b, copied per digest (cheaper than a new one)
_DIGEST: Final = hashlib.blake2b(digest_size=8)
#: the newest event digested and its digest: replay decides each recorded event under two
#: policies, and a handoff asking for approval is digested twice. Events are frozen, and the
#: event held here cannot be collected, so no other event can come to have its identity
#: (a Final list changed in place: a compiled module writes a plain global through its dict)
_LAST: Final[list[Any]] = [None, ""]


def untimed_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` (an event's, changed in place and returned) as a request id stands for
    them: the one normal form the worker's digest and the SDK's matcher of a decision's
    ``input`` (streams/sdk/base.py) both apply. Left out: the client's timing (``event_time``,
    ``decide_by``: a retry is stamped anew), fields added after digests were first kept, at their
    defaults (``tools`` null, a report's ``steps`` 0), so an event without them keeps its
    digest, and so its decision ids and approval id, across versions. Field order is kept:
    the digest hashes the fields in the model's order."""
    fields.pop("event_time", None)
    fields.pop("decide_by", None)
    if "tools" in fields and fields["tools"] is None:
        del fields["tools"]
    steps = fields.get("steps")
    # an int 0 only: 0.0 or false is another input (1 == 1.0 == True), never taken for it
    if steps == 0 and type(steps) is int:
        del fields["steps"]
    return fields


def request_digest(event: HandoffRequested | HandoffCompleted) -> str:
    """What a request id stands for: every field but the client's timing (``event_time`` and
    ``decide_by``: a client stamps a retry anew), so a retry matches and the same id reused
    for another request does not (``untimed_fields``)."""
    return digest_of(event, event.__dict__)


def digest_of(event: object, fields: dict[str, Any]) -> str:
    """``request_digest(event)``, ``fields`` its ``__dict__`` (read once by the caller)."""
    last = _LAST
    if event is last[0]:
        return last[1]  # type: ignore[no-any-return]
    h = _DIGEST.copy()
    h.update(orjson.dumps(untimed_fields(dict(fields))))
    digest = h.hexdigest()
    last[0], last[1] = event, digest
    return digest
