"""The decision record: what Baton decided about one event, as published and as audited.

``Decision`` is a plain slotted dataclass (the engine builds hundreds of thousands per second,
and orjson serializes dataclasses natively); pydantic validates and exports it through
:data:`DECISION_ADAPTER`, so there is one definition of the record.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from operator import attrgetter
from typing import Any, Final

import orjson
from pydantic import TypeAdapter

__all__ = [
    "AUDIT_FIELDS",
    "CHAIN_FIELDS",
    "DECISION_ADAPTER",
    "DECISION_FIELDS",
    "UNCHAINED_OUTCOMES",
    "Decision",
    "Fallback",
    "Outcome",
    "Phase",
    "Reason",
    "chain_content",
    "chain_hash",
    "chain_values",
    "content_hash",
    "decision_content",
    "decision_id_for",
    "is_link",
    "usd_text",
]


class Phase(StrEnum):
    PRE_HANDOFF = "pre_handoff"
    POST_HANDOFF = "post_handoff"
    APPROVAL = "approval"
    CONTROL = "control"


class Outcome(StrEnum):
    ALLOW = "allow"
    STOP = "stop"
    APPROVAL_REQUIRED = "approval_required"
    #: a record that blocks nothing and allows nothing: a post-handoff cost report within
    #: budget, a finished run, a kill switch, a grant that could not be used (reason says why)
    RECORDED = "recorded"


#: what a worker publishes outside a run's hash chain: answers that change no run (protocol
#: refusals: a handoff's stop, a report's recorded refusal), never an allow, an approval asked
#: or a grant. A record without a ``chain_hash`` saying anything else was written by someone
#: else: the SDK takes no answer from it, `baton audit verify` fails its run, `trace` warns.
UNCHAINED_OUTCOMES = frozenset({Outcome.STOP, Outcome.RECORDED})

#: what every worker's ``chain_hash`` is: a 16-byte keyed BLAKE2b (``chain_hash`` below) in
#: lowercase hex; " ", "x" or 64 hex characters are no link, whatever a forger hoped
_LINK = re.compile(r"[0-9a-f]{32}")


def is_link(value: object) -> bool:
    """True when ``value`` has the shape of a worker's ``chain_hash`` (32 lowercase hex)."""
    return isinstance(value, str) and len(value) == 32 and _LINK.fullmatch(value) is not None


class Reason(StrEnum):
    # pre-handoff allows
    OK = "ok"
    # stops, in the order the engine checks them
    KILLED = "killed"
    RUN_FINISHED = "run_finished"
    OWNERSHIP_CONFLICT = "ownership_conflict"
    ROLE_NOT_PERMITTED = "role_not_permitted"
    AGENT_LIMIT_EXCEEDED = "agent_limit_exceeded"
    HANDOFF_BUDGET_EXCEEDED = "handoff_budget_exceeded"
    #: multi_agent.require_lineage: a handoff from an agent other than the run's first names
    #: no parent task it owns (a fresh chain would dodge the depth and cycle rules)
    LINEAGE_REQUIRED = "lineage_required"
    DELEGATION_DEPTH_EXCEEDED = "delegation_depth_exceeded"
    DELEGATION_CYCLE = "delegation_cycle"
    SHARED_BUDGET_EXCEEDED = "shared_budget_exceeded"
    STEP_BUDGET_EXCEEDED = "step_budget_exceeded"
    TOOL_NOT_PERMITTED = "tool_not_permitted"
    APPROVAL_DENIED = "approval_denied"
    APPROVAL_EXPIRED = "approval_expired"
    # a hostile or careless client (issue 11): each names what the worker refused and why
    REQUEST_ID_REUSED = "request_id_reused"
    RUN_STATE_LIMIT = "run_state_limit"
    WORKER_RUN_LIMIT = "worker_run_limit"
    RUN_EXPIRED = "run_expired"
    TENANT_MISMATCH = "tenant_mismatch"
    REPLY_NOT_KEPT = "reply_not_kept"
    REQUEST_EXPIRED = "request_expired"
    #: `baton up` restored a run whose recorded history did not replay as recorded (forged or
    #: altered audit rows, another chain key, another engine): stopped for good, fail closed
    AUDIT_UNVERIFIED = "audit_unverified"
    # identity by signature (issue 12): an approval or control command that does not count
    APPROVAL_UNSIGNED = "approval_unsigned"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_APPROVER = "unknown_approver"
    SIGNED_FOR_ANOTHER_REQUEST = "signed_for_another_request"
    SIGNATURE_EXPIRED = "signature_expired"
    BENEFICIARY_APPROVAL = "beneficiary_approval"
    UNKNOWN_TENANT = "unknown_tenant"
    CONTROL_UNSIGNED = "control_unsigned"
    UNKNOWN_OPERATOR = "unknown_operator"
    CONTROL_REPLAYED = "control_replayed"
    # approval gate
    APPROVAL_PENDING = "approval_pending"
    APPROVAL_GRANTED = "approval_granted"
    # records
    WITHIN_BUDGET = "within_budget"
    #: a completion by the task's owner with a status in release_ownership_on freed the task
    OWNERSHIP_RELEASED = "ownership_released"
    #: an estimate reserved at allow time was released after reservation_ttl_seconds
    RESERVATION_EXPIRED = "reservation_expired"
    SELF_APPROVAL = "self_approval"
    APPROVER_NOT_PERMITTED = "approver_not_permitted"
    UNKNOWN_APPROVAL = "unknown_approval"
    KILL_SWITCH = "kill_switch"
    KILL_SWITCH_RELEASED = "kill_switch_released"
    POLICY_UPDATED = "policy_updated"
    #: a worker's policy document, recorded when it starts using it (replay reads it back)
    POLICY_IN_FORCE = "policy_in_force"
    # client side (SDK), never produced by the engine
    GOVERNANCE_UNAVAILABLE = "governance_unavailable"


class Fallback(StrEnum):
    SINGLE_AGENT = "single_agent"
    CONSTRAINED = "constrained"


#: an empty 16-byte BLAKE2b, copied for every id: a copy is a quarter cheaper than setting up
#: a new hash (the engine makes one id per decision)
_ID_HASH: Final = hashlib.blake2b(digest_size=16)


def decision_id_for(run_id: str, key: str, phase: str) -> str:
    """Deterministic id from the run, the request (or approval) id and the phase: replays
    reproduce it, and the same request id in two runs gives two ids.

    The 16-byte BLAKE2b of ``len(run_id)``, ``:``, ``run_id``, 0x1F, ``key``, 0x1F, ``phase``,
    as hex. Ids may contain 0x1F (JSON escapes it), so the run id is length-prefixed and the
    phase (a fixed word) comes last: no two (run, key, phase) triples encode alike.
    """
    h = _ID_HASH.copy()
    h.update(f"{len(run_id)}:{run_id}\x1f{key}\x1f{phase}".encode())
    return h.hexdigest()


@dataclass(slots=True)
class Decision:
    """One decision, exactly the audit record of ARCHITECTURE.md ("Decision record")."""

    decision_id: str
    request_id: str
    run_id: str
    tenant: str
    phase: Phase
    outcome: Outcome
    reason: str
    owner: str | None = None
    from_agent: str | None = None
    to_agent: str | None = None
    task_id: str | None = None
    parent_task_id: str | None = None
    action: str | None = None
    depth: int = 0
    handoff_count: int = 0
    spent_usd: float = 0.0
    tool_calls: int = 0
    handoff_status: str | None = None
    fallback: Fallback | None = None
    approval_id: str | None = None
    approval_expires_at: datetime | None = None
    approver: str | None = None
    policy_version: str = ""
    event_time: datetime | None = None
    decided_at: datetime | None = None
    worker: str | None = None
    partition: int | None = None
    offset: int | None = None
    #: shadow (dry-run) mode: the outcome Baton *would* have enforced; ``outcome`` is then allow
    shadow_outcome: Outcome | None = None
    tool: str | None = None
    reserved_usd: float = 0.0
    detail: str | None = None
    #: on approval_required and approval decisions, what an approver signs (the request's
    #: digest); on an operator command's control record, the worker's seal (control_seal.py)
    request_digest: str | None = None
    #: the run's hash chain (docs/security.md): the previous decision's chain_hash ("" for
    #: the run's first) and this one's, over chain_content(); None: not part of a chain
    chain_prev: str | None = None
    chain_hash: str | None = None
    #: the event the engine decided, as the worker parsed it (compact JSON; baton.processors.
    #: recorded): what `baton replay` decides again. None: a timer step (approval expiry)
    input: str | None = None
    #: a copy of a decision published before (a retry or redelivery answered from the run's
    #: state): the client needs it, the audit already has the original and does not store it
    reemitted: bool = False

    def to_json(self) -> bytes:
        """The published record: every field in DECISION_FIELDS order, as orjson writes a
        dataclass. Compiled, through a dict written out here (orjson cannot read a native
        Decision): 25k instructions a decision against 43k through ``dict(zip(DECISION_FIELDS,
        ...))``; interpreted, that dict costs more than orjson's own walk of the dataclass
        (36k against 32k). tests/unit/test_decision_json.py holds the two alike."""
        if not _COMPILED:
            return orjson.dumps(self)
        return orjson.dumps({
            "decision_id": self.decision_id, "request_id": self.request_id, "run_id": self.run_id,
            "tenant": self.tenant, "phase": self.phase, "outcome": self.outcome,
            "reason": self.reason, "owner": self.owner, "from_agent": self.from_agent,
            "to_agent": self.to_agent, "task_id": self.task_id,
            "parent_task_id": self.parent_task_id, "action": self.action, "depth": self.depth,
            "handoff_count": self.handoff_count, "spent_usd": self.spent_usd,
            "tool_calls": self.tool_calls, "handoff_status": self.handoff_status,
            "fallback": self.fallback, "approval_id": self.approval_id,
            "approval_expires_at": self.approval_expires_at, "approver": self.approver,
            "policy_version": self.policy_version, "event_time": self.event_time,
            "decided_at": self.decided_at, "worker": self.worker, "partition": self.partition,
            "offset": self.offset, "shadow_outcome": self.shadow_outcome, "tool": self.tool,
            "reserved_usd": self.reserved_usd, "detail": self.detail,
            "request_digest": self.request_digest, "chain_prev": self.chain_prev,
            "chain_hash": self.chain_hash, "input": self.input, "reemitted": self.reemitted,
        })  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Decision:
        return DECISION_ADAPTER.validate_json(raw)

    @property
    def is_stop(self) -> bool:
        return self.outcome == Outcome.STOP


DECISION_FIELDS: Final[tuple[str, ...]] = tuple(f.name for f in fields(Decision))
#: this module is compiled (BATON_COMPILE=1: mypyc makes Decision a native class)
_COMPILED: Final = not __file__.endswith(".py")

#: the fields the audit stores (a re-emitted copy is never stored, so its flag is not)
AUDIT_FIELDS: Final[tuple[str, ...]] = tuple(f for f in DECISION_FIELDS if f != "reemitted")

#: what a decision's chain hash covers: every stored field but the chain's own
CHAIN_FIELDS: Final[tuple[str, ...]] = tuple(
    f for f in AUDIT_FIELDS if f not in ("chain_prev", "chain_hash")
)
#: fields from here on were added after chains shipped (0004): covered when set, so rows
#: linked before they existed (NULL there) still verify
_CHAIN_LATER: Final = CHAIN_FIELDS.index("input")
_MONEY_FIELDS: Final = frozenset({"spent_usd", "reserved_usd"})
_TIME_FIELDS: Final = frozenset({"approval_expires_at", "event_time", "decided_at"})
_MICRO: Final = Decimal("0.000001")
_UTC: Final = UTC
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def usd_text(amount: float | Decimal) -> str:
    """An amount as the audit stores it (Decimal(18, 6), banker's rounding), as text."""
    if not isinstance(amount, Decimal):
        amount = Decimal(repr(float(amount)))
    return str(amount.quantize(_MICRO, rounding=ROUND_HALF_EVEN))


_DECIDED_AT_I: Final = CHAIN_FIELDS.index("decided_at")
_EVENT_TIME_I: Final = CHAIN_FIELDS.index("event_time")
_TIME_I: Final = tuple(i for i, f in enumerate(CHAIN_FIELDS) if f in _TIME_FIELDS)
_MONEY_I: Final = tuple(i for i, f in enumerate(CHAIN_FIELDS) if f in _MONEY_FIELDS)
#: usd_text of recent amounts (a run's spend repeats on its decisions; Decimal is slow)
_USD_TEXT: Final[dict[float, str]] = {}


def _money_text(v: Any) -> str:
    if isinstance(v, Decimal):
        return usd_text(v)
    text = _USD_TEXT.get(v)
    if text is None:
        if len(_USD_TEXT) >= 65_536:
            _USD_TEXT.clear()
        text = _USD_TEXT[v] = (type(v) is float and _short_usd_text(v)) or usd_text(v)
    return text


def _short_usd_text(v: float) -> str:
    """``usd_text(v)`` of a float whose shortest repr has at most 6 decimals and no exponent
    (the Decimal ``usd_text`` quantizes is that repr's: padding it with zeros is exact, no
    rounding), else "" (usd_text then; a third of its cost a miss of the cache above)."""
    text = repr(v)
    if "e" in text or "n" in text:  # 1e-07, 1e+16, inf, nan
        return ""
    whole, _, decimals = text.partition(".")
    if len(decimals) > 6:
        return ""
    return f"{whole}.{decimals}{_ZEROS[len(decimals) :]}"  # (a format spec costs a call)


_ZEROS: Final = "000000"


def chain_content(values: Sequence[Any]) -> bytes:
    """The canonical bytes a chain hash covers, from a decision's values in CHAIN_FIELDS
    order (:func:`chain_values` of a Decision, or an audit row's columns: both give the same
    bytes). Times as microseconds since the epoch (a time without a zone is UTC, as the
    audit's columns are), money as the audit's Decimal text, enums as their values (orjson
    writes a StrEnum as its value); a missing ``event_time`` is the ``decided_at`` the audit
    fills in; fields added after chains shipped only when set (as a name -> value map)."""
    out = list(values)
    if out[_EVENT_TIME_I] is None:
        out[_EVENT_TIME_I] = out[_DECIDED_AT_I]
    for i in _TIME_I:
        v = out[i]
        if v is not None:
            if v.tzinfo is None:
                v = v.replace(tzinfo=_UTC)
            # whole microseconds by int arithmetic, exact as `// timedelta(microseconds=1)`
            # (which converts both to Python ints and divides: ~0.9k instructions more a link)
            d = v - _EPOCH
            out[i] = (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds
    for i in _MONEY_I:
        v = out[i]
        # the float cache inline (a Decimal, from an audit row, is never looked up there)
        out[i] = "0.000000" if not v else (type(v) is float and _USD_TEXT.get(v)) or _money_text(v)
    # (typed: mypy takes a bare None's variable for the dict it becomes in the loop, and
    # mypyc then compiled `if later:` below as the size of a dict, None included)
    # (a loop: a dict comprehension costs a frame, and this runs per link)
    later: dict[str, Any] | None = None
    for i in range(_CHAIN_LATER, len(out)):
        v = out[i]
        if v is not None:
            if later is None:
                later = {}
            later[CHAIN_FIELDS[i]] = v
    del out[_CHAIN_LATER:]
    if later:
        out.append(later)
    return orjson.dumps(out)


#: a Decision's values in CHAIN_FIELDS order (one C call)
chain_values = attrgetter(*CHAIN_FIELDS)


def decision_content(d: Decision, input: str | None) -> bytes:
    """``chain_content`` of ``d``'s values with ``input`` for its input, read as native fields
    and written in one pass (compiled: ``chain_values`` reads each field through its
    descriptor, and chain_content copies the list, loops over its times and money and cuts
    its tail). tests/unit/test_chain_content.py holds the two equal."""
    global _LAST_DECIDED
    decided: Any = d.decided_at  # (Any: a row the interpreted build holds may have None)
    last = _LAST_DECIDED  # a batch's decisions share its `now`: converted once (~3k each)
    decided_us = last[1]
    if decided is not last[0]:
        decided_us = None if decided is None else _micros(decided)
        _LAST_DECIDED = (decided, decided_us)
    event_time = d.event_time
    expires = d.approval_expires_at
    spent, reserved = d.spent_usd, d.reserved_usd
    out: list[Any] = [
        d.decision_id, d.request_id, d.run_id, d.tenant, d.phase, d.outcome, d.reason, d.owner,
        d.from_agent, d.to_agent, d.task_id, d.parent_task_id, d.action, d.depth,
        d.handoff_count,
        "0.000000" if not spent else _USD_TEXT.get(spent) or _money_text(spent),
        d.tool_calls, d.handoff_status, d.fallback, d.approval_id,
        None if expires is None else _micros(expires),
        d.approver, d.policy_version,
        decided_us if event_time is None else _micros(event_time),
        decided_us, d.worker, d.partition, d.offset, d.shadow_outcome, d.tool,
        "0.000000" if not reserved else _USD_TEXT.get(reserved) or _money_text(reserved),
        d.detail, d.request_digest,
    ]  # fmt: skip
    if input is not None:
        out.append({"input": input})
    return orjson.dumps(out)


#: the last ``decided_at`` decision_content converted, and its microseconds (immutable: same value)
_LAST_DECIDED: tuple[Any, int | None] = (None, None)


def _micros(v: datetime) -> int:
    """``v`` as whole microseconds since the epoch (chain_content's times)."""
    if v.tzinfo is None:
        v = v.replace(tzinfo=_UTC)
    d = v - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


#: key -> a keyed 16-byte BLAKE2b before any input, copied per link: a copy costs about a
#: sixth of setting up a keyed hash (measured with timeit), and every decision is linked
_KEYED: Final[dict[bytes, Any]] = {}


def chain_hash(key: bytes, prev: str, values: Sequence[Any]) -> str:
    """The next link: keyed BLAKE2b (``key`` may be empty) of ``prev`` and the content of
    ``values`` (a decision's, in CHAIN_FIELDS order)."""
    return content_hash(key, prev, chain_content(values))


def content_hash(key: bytes, prev: str, content: bytes) -> str:
    """:func:`chain_hash` of the values whose chain_content is ``content``."""
    keyed = _KEYED.get(key)
    if keyed is None:
        if len(_KEYED) >= 16:
            _KEYED.clear()
        keyed = _KEYED[key] = hashlib.blake2b(digest_size=16, key=key)
    h = keyed.copy()
    h.update(prev.encode())
    h.update(b"\x1f")
    h.update(content)
    return h.hexdigest()


class _ViaTwin:
    """``TypeAdapter(Decision)``'s methods the project uses, for a compiled Decision, which
    pydantic cannot read: validated through its interpreted twin (schemas/decision_doc.py,
    imported on first use: it imports this module)."""

    def validate_json(self, data: bytes | str) -> Decision:
        from baton.schemas.decision_doc import TWIN_ADAPTER

        return TWIN_ADAPTER.validate_json(data)

    def validate_python(self, obj: Any) -> Decision:
        from baton.schemas.decision_doc import TWIN_ADAPTER

        return TWIN_ADAPTER.validate_python(obj)

    def json_schema(self) -> dict[str, Any]:
        from baton.schemas.decision_doc import TWIN_ADAPTER

        return TWIN_ADAPTER.json_schema()


#: pydantic's validator of decisions: of Decision itself, or through its twin when compiled
DECISION_ADAPTER: Any = _ViaTwin() if _COMPILED else TypeAdapter(Decision)
