"""The worker's seal on the control record of an operator's command: who wrote the audit row.

Why: a `baton up` restart (embedded broker: the control topic is gone) re-issues the kill
switches, releases and policy updates the audit says were applied. Anyone who can write
gov.decisions can put a row there: five attack rounds (session 39) found a forged, copied,
re-dated or replaced control row that the restart re-issued and a kill that it lifted. Rules
over unauthenticated rows kept giving. With ``BATON_AUDIT_CHAIN_KEY`` the worker now seals
each such record: keyed BLAKE2b of what it recorded (SEAL_FIELDS), and the restart re-issues
only commands whose record carries a seal that verifies (``cli/restore_sealed.py``).

Where: the record's ``request_digest`` (SEAL_FIELD), which a control record had no use for (on
approvals it is the digest an approver signs). A field of its own would change the run
state's reply rows, whose columns are frozen in state format 4 (processors/state_rows.py): a
new format on the workers' hot path for a value run states never hold.

What the seal covers: the command (``input``), what became of it (outcome, reason),
its ids and key columns, its operator and its time. Not covered: where and when a worker
recorded it (``decided_at``, ``worker``, ``partition``, ``offset``) and the policy version in
force: a restart's re-issue is recorded again by a fresh worker and seals the same, so the
sink keeps the first row (``sinks/audit_controls``). Nor ``detail``: a policy update's names the
policy before it, which a restart under another ``--policy`` changes. A copy of a sealed row
re-dated by a forger still verifies; the restart orders the commands by when the sink first
stored each (``control_log.inserted_at``), which no writer of the topic sets.

Without the key nothing is sealed (an empty key is a hash anyone can compute): the restart
keeps its rules for unauthenticated rows (docs/security.md).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson

from baton.schemas.decision import Decision, content_hash

if TYPE_CHECKING:
    from baton.schemas.settings import Settings

__all__ = ["SEAL_FIELD", "SEAL_FIELDS", "chain_key", "is_sealed", "seal", "seal_of"]

#: what a seal covers, in this order (an audit row's columns of these names give the same)
SEAL_FIELDS: Final = (
    "decision_id",
    "request_id",
    "run_id",
    "tenant",
    "phase",
    "outcome",
    "reason",
    "approver",
    "event_time",
    "input",
)
#: the Decision field (and audit column) that holds a command record's seal
SEAL_FIELD: Final = "request_digest"
#: the seal's domain: a chain hash (whose ``prev`` is a hash or "") is never a seal
_DOMAIN: Final = "control-seal/1"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def chain_key(settings: Settings) -> bytes:
    """BATON_AUDIT_CHAIN_KEY as the bytes the chains and seals are keyed with (b"": unset)."""
    key = settings.audit_chain_key
    return key.get_secret_value().encode() if key else b""


def seal_of(key: bytes, values: Sequence[Any]) -> str:
    """The seal of a record whose SEAL_FIELDS values are ``values`` (a Decision's, or an audit
    row's: a time without a zone is UTC, as the audit's columns are)."""
    out = [str(v) if i in (4, 5) else v for i, v in enumerate(values)]  # enums as values
    when = out[8]
    if isinstance(when, datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        d = when - _EPOCH
        out[8] = (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds
    return content_hash(key, _DOMAIN, orjson.dumps(out))


def seal(record: Decision, key: bytes) -> Decision:
    """``record`` sealed with ``key`` (left unsealed without one); returned for chaining."""
    if key:
        record.request_digest = seal_of(key, [getattr(record, f) for f in SEAL_FIELDS])
    return record


def is_sealed(key: bytes, values: Sequence[Any], said: str | None) -> bool:
    """Whether ``said`` is the seal ``key`` gives a record of these values (constant time)."""
    if not key or not said or len(said) != 32:
        return False
    return hmac.compare_digest(seal_of(key, values), said)
