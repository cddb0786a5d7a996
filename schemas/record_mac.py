"""The audit MAC: a keyed BLAKE2b a worker puts on every decision record, which the sink checks.

Why: the audit sink stored any record on gov.decisions that read as a decision, so a writer of
that topic put rows in the audit that no worker decided. With the chain key they failed `baton
audit verify` (``altered``) and stopped their runs at `baton up`'s next restart
(``audit_unverified``); refusals that change no state are not chained, so a forged unchained
stop passed verify too (h44): any writer of the topic could stop any run at the next restart.
The worker's Ed25519 signature would tell them apart, but a verify costs ~118 us a record, four
times the sink's whole work on one. A MAC under a key the workers and the sink share costs ~2 us.

The key is the one workers seal their control records with (``control_seal.seal_key``):
``BATON_AUDIT_CHAIN_KEY``, else the workers' data dir's ``seal.key`` (every `baton up` stack has
one). Where it is: the record's value, as a member ``"audit_mac": "<32 hex>"`` right before the
signature (which covers it) or last when the worker signs nothing. What it covers: the decision's
JSON as the worker wrote it, byte for byte, after the BLAKE2b personalisation ``PERSON``.

Not covered: a reader without the key (clients check the signature); a worker's copy written
again to the topic (the sink takes it as the copy it is: ``audit_copies``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Final

from baton.schemas.decision_signing import signature_at

__all__ = ["FIELD", "PERSON", "MacKeys", "RecordMac"]

#: the member of a decision record's JSON that carries its MAC
FIELD: Final = "audit_mac"
#: BLAKE2b's personalisation of the MAC: never a chain hash's or a seal's under the same key
PERSON: Final = b"baton-audit-mac1"
_HEX: Final = 32
#: how a MACed decision's JSON ends: ``,"audit_mac":"<32 hex>"}``
_HEAD: Final = b',"' + FIELD.encode() + b'":"'
_TAIL: Final = len(_HEAD) + _HEX + 2


def _keyed(key: bytes) -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=_HEX // 2, key=key, person=PERSON)


class RecordMac:
    """A worker's MAC: a decision record's JSON with its ``audit_mac`` member."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        self._keyed = _keyed(key)

    def marked(self, value: bytes) -> bytes:
        """``value`` (a decision's JSON object) with its MAC as its last member."""
        h = self._keyed.copy()
        h.update(value)
        return b"".join((value[:-1], _HEAD, h.hexdigest().encode(), b'"}'))


class MacKeys:
    """The keys the sink takes a record MACed by (none: it checks nothing)."""

    __slots__ = ("_keyed",)

    def __init__(self, keys: Iterable[bytes]) -> None:
        self._keyed = tuple(_keyed(k) for k in dict.fromkeys(keys) if k)

    def __bool__(self) -> bool:
        return bool(self._keyed)

    def holds(self, value: bytes | None) -> bool:
        """Whether ``value`` (a record as published: signed or not) carries a MAC one of the
        keys made over the rest of its JSON; never raises."""
        if not isinstance(value, bytes):
            return False
        # where the MACed JSON's closing brace is: before the signature (its 88 characters
        # base64: h45b F1), or the last byte
        end = signature_at(value)
        if end is None:
            if value[-1:] != b"}":
                return False
            end = len(value) - 1
        at = end - _TAIL + 1  # the MAC member: ,"audit_mac":"<32 hex>"
        if at <= 0 or value[at : at + len(_HEAD)] != _HEAD or value[end - 1 : end] != b'"':
            return False
        said = value[at + len(_HEAD) : end - 1]
        message = memoryview(value)[:at]  # (no copy of the record: the sink's every one)
        for keyed in self._keyed:
            h = keyed.copy()
            h.update(message)
            h.update(b"}")
            if hmac.compare_digest(h.hexdigest().encode(), said):
                return True
        return False
