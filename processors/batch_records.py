"""The batch step's records: what one batch takes in and gives out, and the dead-letter envelope.

``InputRecord`` is a Kafka record as the batch step sees it (no Faust, no confluent-kafka
type); ``Outputs`` is what one batch produced, in the order it must be published
(processors/publish.py); ``dead_letter_record`` makes the one record a bad input becomes:
what was wrong (``ErrorKind``), where it came from and the original bytes, itself always
small enough for Kafka.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome, Phase
from baton.schemas.errors import encodable
from baton.schemas.events import MAX_EVENT_BYTES, ApprovalDenied, ApprovalGranted, RunEvent

__all__ = [
    "MAX_KEY_BYTES",
    "DeadLetter",
    "ErrorKind",
    "Forward",
    "InputRecord",
    "Outputs",
    "RecordError",
    "answers_approval",
    "dead_letter_record",
    "record_of",
    "same_record",
]

#: a run id is at most 256 characters, 1,024 bytes of UTF-8: a longer key is no run's
MAX_KEY_BYTES = 1024


class ErrorKind(StrEnum):
    """The ``error_kind`` of a dead letter: a stable code to count and alert on.

    Parse errors keep the kinds :class:`~baton.schemas.events.EventError` gives them
    (``not_json``, ``schema``, ``unknown_type``, ``oversized``, ``key_mismatch``,
    ``out_of_range``, ``bad_name``).
    """

    EMPTY = "empty"
    MISSING_KEY = "missing_key"
    MISROUTED = "misrouted"
    ROUTING = "routing"
    STATE_UNREADABLE = "state_unreadable"
    ENGINE_ERROR = "engine_error"
    RUN_STATE_LIMIT = "run_state_limit"
    OUT_OF_RANGE = "out_of_range"
    WRONG_TOPIC = "wrong_topic"


class RecordError(Exception):
    """One record cannot be decided; ``kind`` names why (its dead letter's ``error_kind``)."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(slots=True)
class InputRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: as the consumer gives them: aiokafka (so Faust) a tuple of (name, value) tuples,
    #: confluent-kafka a list or None; a value may be None. Typed as any sequence: the
    #: compiled build checks a declared ``list`` at each read and refused aiokafka's tuple
    #: (every forwarded or client-headered event an engine_error dead letter)
    headers: Sequence[tuple[str, bytes | None]] | None = None
    #: the Kafka timestamp, seconds (the producer's clock): the metrics' decision latency
    timestamp: float | None = None


def record_of(m: Any) -> InputRecord:
    """The batch step's view of a Faust message (its headers as Faust gives them: aiokafka's
    tuple, empty when the record has none)."""
    return InputRecord(m.topic, m.partition, m.offset, m.key, m.value, m.headers, m.timestamp)


@dataclass(slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes  # the JSON envelope: error, where it came from, the original bytes
    kind: str = ""  # its error_kind, for the metrics (processors/metrics.py)


@dataclass(slots=True)
class Forward:
    topic: str
    partition: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(slots=True)
class Outputs:
    """What one batch produced, in the order it must be published."""

    decisions: list[tuple[int, Decision]] = field(default_factory=list)  # (partition, decision)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)
    #: run key -> (partition, state or None for a deletion), written after decisions are acked
    changed: dict[bytes, tuple[int, RunState | None]] = field(default_factory=dict)
    #: run key -> the encoded state of ``changed`` (the batch measured it against the
    #: state budget; the publisher writes these bytes instead of encoding again)
    encoded: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def stops(self) -> list[tuple[int, Decision]]:
        return [(p, d) for p, d in self.decisions if d.outcome == Outcome.STOP]


def dead_letter_record(
    rec: InputRecord, kind: str, error: str, worker: str | None, now: datetime
) -> DeadLetter:
    """The dead-letter envelope: what was wrong, where it came from, and the original bytes.

    Written for any record: a key or value that is no bytes (a ``str``, a ``memoryview``, no
    type a Kafka client hands over today) is carried as its bytes, or, when it has none, left
    out with a note saying so (``key_dropped``, ``original_dropped``), never an exception that
    would end the batch."""
    key, key_note = _carried(rec.key)
    raw, raw_note = _carried(rec.value)
    raw = raw or b""
    envelope: dict[str, Any] = {
        "error_kind": kind,
        "error": encodable(
            error if len(error) <= MAX_ERROR_CHARS else error[:MAX_ERROR_CHARS] + "…"
        ),
        "topic": _plain(rec.topic),
        "partition": _plain(rec.partition),
        "offset": _plain(rec.offset),
        "key": key[:1024].decode("utf-8", "replace") if key is not None else None,
        "key_size": len(key) if key is not None else None,
        "worker": worker,
        "failed_at": now,
        "original_size": len(raw),
    }
    if key_note is not None:
        envelope["key_dropped"] = key_note
    kept = raw[:MAX_EVENT_BYTES]
    try:
        text = kept.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    # JSON escapes a control character in six bytes: text full of them would make the
    # dead letter several times its input (and past Kafka's message limit), base64 never
    if raw_note is not None:
        envelope["original_dropped"] = raw_note
    elif text is not None and len(orjson.dumps(text)) <= 2 * len(kept) + 2:
        envelope["original"] = text
    else:
        envelope["original_b64"] = base64.b64encode(kept).decode()
    if len(raw) > len(kept):
        envelope["original_truncated"] = True
    # the dead letter's own Kafka key is capped too: a record with a 1 MB key must not make
    # a dead letter Kafka refuses (that would end the worker on every restart)
    kept_key = key if key is None or len(key) <= MAX_KEY_BYTES else None
    return DeadLetter(kept_key, orjson.dumps(envelope, default=repr), str(kind))


#: a dead letter's error text at the most (the engine's and parser's are < 2 KB): a longer
#: one (an exception quoting its input) would make the dead letter its size, past Kafka's
#: limit, and ``dead_letter_without_original`` keeps the error
MAX_ERROR_CHARS = 8192


def _carried(value: Any) -> tuple[bytes | None, str | None]:
    """``value`` (a record's key or value) as bytes for its dead letter, and why it could not
    be carried (None: carried, or None itself). A ``str`` as its UTF-8 (lone surrogates
    kept, ``surrogatepass``); anything else through the buffer protocol (an int is refused:
    ``bytes(n)`` would make n zero bytes)."""
    if value is None or type(value) is bytes:
        return value, None
    try:
        if isinstance(value, str):
            return value.encode("utf-8", "surrogatepass"), None
        return bytes(memoryview(value)), None
    except Exception as exc:
        return None, f"a {type(value).__name__} the worker cannot read as bytes ({exc})"[:300]


def _plain(value: Any) -> Any:
    """A position field as JSON can hold it (a str, an int of 64 bits; else its repr). A str
    JSON cannot hold (a lone surrogate: orjson raises) is escaped, a repr that raises is
    named by its type: the envelope's write must not end the batch."""
    if value is None:
        return value
    if type(value) is int and -(2**63) <= value < 2**64:
        return value
    if type(value) is not str:
        try:
            value = repr(value)[:300]
        except Exception:
            return f"a {type(value).__name__} without a repr"
    return encodable(value)


#: what a dead letter keeps when it is too large for Kafka
_DEAD_LETTER_HEAD = (
    "error_kind", "error", "topic", "partition", "offset", "key_size", "worker", "failed_at",
    "original_size",
)  # fmt: skip


def dead_letter_without_original(value: bytes) -> bytes:
    """A dead letter too large for Kafka, kept to what was wrong and where (belt and braces:
    dead letters are capped when made; one Kafka refuses must not end the worker on every
    restart)."""
    doc = orjson.loads(value)
    short = {k: doc.get(k) for k in _DEAD_LETTER_HEAD}
    short["original_dropped"] = "too large for Kafka"
    return orjson.dumps(short)


def same_record(decisions: list[Decision], rec: InputRecord, approval: bool) -> bool:
    """Whether ``decisions`` are this very record's, answered again from the state (Kafka
    delivered it twice). Only re-emitted copies count: a decision made now without a state
    change (a refusal such as request_id_reused or tenant_mismatch) carries this record's
    position too and must be published. The position names no topic, so the phase tells a
    grant's decision (approvals topic) from a request's at the same partition and offset: an
    approval-phase decision holds an approvals-topic position or none (``_expire_first``)."""
    partition, offset = rec.partition, rec.offset
    return all(
        d.reemitted
        and d.partition == partition
        and d.offset == offset
        and (d.phase == Phase.APPROVAL) == approval
        for d in decisions
    )


def answers_approval(event: RunEvent) -> bool:
    """The event answers an approval (a grant or a denial)."""
    return type(event) is ApprovalGranted or type(event) is ApprovalDenied
