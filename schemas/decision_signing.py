"""Workers' Ed25519 signatures on the decisions they publish, checked by the clients waiting.

Why: an SDK client takes the first decision on gov.decisions that answers its request, so a
writer of that topic could hand it an ``allow`` (docs/security.md: the topic's ACL was the only
wall; the embedded broker has none, so every local user could). With
``BATON_DECISION_SIGNING_KEY`` (a private key file, ``baton keys new``) each worker signs every
decision record it publishes, on gov.decisions and gov.stops alike; a client given the public
key (``decision_keys=``, ``BATON_DECISION_KEYS``) takes only decisions whose signature
verifies. A forged or unsigned one is ignored, counted and logged: the client waits on for the
worker's, and answers its fail-closed stop at its timeout when none comes.

What a signature covers: the decision's JSON as the worker wrote it, byte for byte (its run,
request, phase, outcome, input and every other field), after the domain tag ``DOMAIN``. Where
it is: the record's value, as its last member, ``"signature": "<base64>"``: the value read as
JSON is the decision with one more key, which every reader of decisions ignores. Not a record
header: confluent-kafka's ``Message.headers()`` decodes header names as UTF-8 and, on a name
that is not, raised or crashed the process (a NULL in the tuple it builds: a segfault, session
43's attack F1), so a client that reads headers can be stopped by one record. A copy of a
worker's signed record answers only the request it answered (the SDK matches a decision's
``input`` to its own request): replayed, it says what the worker said.

Cost: ~35 µs of the worker's CPU a decision to sign, ~110 µs of the client's to check one of
its own decisions (others' are never checked); bench/RESULTS.md.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from baton.schemas.signing import (
    SigningKeyError,
    load_private_key,
    new_private_key,
    parse_public_key,
    public_key_text,
    signature_bytes,
    write_private_key,
)

__all__ = [
    "DECISION_KEY_FILE",
    "DOMAIN",
    "FIELD",
    "DecisionKeys",
    "DecisionSigner",
    "decision_keys",
    "ensure_decision_key",
    "load_signer",
    "signature_at",
    "signing_key_of",
]

#: the member of a decision record's JSON that carries its signature (the last one)
FIELD: Final = "signature"
#: what a decision's signature covers before its JSON: never an approval's or a command's
DOMAIN: Final = b"baton-decision-v1\x1f"
#: a signature's base64 is 88 characters
_SIGNATURE_CHARS: Final = 88
#: how a signed record's value ends: ``,"signature":"<88 characters>"}``
_HEAD: Final = b',"' + FIELD.encode() + b'":"'
_TAIL_BYTES: Final = len(_HEAD) + _SIGNATURE_CHARS + 2
#: a signature's 88 characters: 64 bytes in base64 (the last group one byte, padded)
_BASE64: Final = re.compile(rb"[A-Za-z0-9+/]{86}==")
#: the most public keys a client checks a decision against (a rotation needs two)
MAX_DECISION_KEYS: Final = 8


class DecisionSigner:
    """A worker's signer: a decision record's value, signed."""

    __slots__ = ("_sign",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._sign = key.sign

    def signed(self, value: bytes) -> bytes:
        """``value`` (a decision's JSON object) with its signature as its last member."""
        signature = base64.b64encode(self._sign(DOMAIN + value))
        return b"".join((value[:-1], _HEAD, signature, b'"}'))


def load_signer(path: Path | str | None) -> DecisionSigner | None:
    """The signer of the key file at ``path`` (None: no path, the worker signs nothing);
    ConfigError naming BATON_DECISION_SIGNING_KEY when the file is not a private key only its
    owner may read (fail closed: a worker that cannot sign does not start)."""
    return None if path is None else DecisionSigner(_signing_key(path))


def _signing_key(path: Path | str) -> Ed25519PrivateKey:
    """The private key file at ``path``; SigningKeyError naming BATON_DECISION_SIGNING_KEY."""
    try:
        return load_private_key(path)
    except SigningKeyError as exc:
        raise SigningKeyError(f"BATON_DECISION_SIGNING_KEY: {exc}") from None


class DecisionKeys:
    """The public keys a client takes decisions signed by."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[Ed25519PublicKey]) -> None:
        self._keys = tuple(keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def verifies(self, value: bytes) -> bool:
        """Whether ``value`` ends in a signature one of the keys made over the rest (the
        decision's JSON as the worker wrote it); never raises."""
        at = signature_at(value)
        if at is None:
            return False
        signature = signature_bytes(value[at + len(_HEAD) : -2])  # (one spelling: h43b F1)
        if signature is None:
            return False
        message = b"".join((DOMAIN, value[:at], b"}"))
        for key in self._keys:
            try:
                key.verify(signature, message)
            except InvalidSignature:
                continue
            return True
        return False


def signature_at(value: object) -> int | None:
    """Where ``value``'s signature member starts (None: it does not end in one: its 88
    characters are base64, never a quote that would end the string early); whether the
    signature verifies is not looked at.

    Why base64 is checked here: the audit MAC (``record_mac``) covers what comes before the
    signature, not the signature, which the sink does not verify; 88 characters there holding
    ``","run_id":"…","reason":"…`` put members after the MACed ones, and the JSON parsers keep
    a repeated key's last value: a stop of any run, with a worker's valid MAC (h45b F1)."""
    if not isinstance(value, bytes) or len(value) <= _TAIL_BYTES or value[-2:] != b'"}':
        return None
    at = len(value) - _TAIL_BYTES
    if value[at : at + len(_HEAD)] != _HEAD:
        return None
    return at if _BASE64.fullmatch(value, at + len(_HEAD), len(value) - 2) else None


def decision_keys(
    keys: str | Iterable[str] | None, what: str = "decision_keys", *, unset: str | None = None
) -> DecisionKeys:
    """``keys`` (``ed25519:…`` texts: a list, or one string of them separated by commas or
    spaces, as BATON_DECISION_KEYS holds them) as DecisionKeys; None (and ``unset``, the text
    that means "not set": a variable's "") is none. SigningKeyError naming ``what`` and the
    key's place when one does not read, and when the value holds no key at all (``[]``, " ",
    ","): checking would be off, silently, though a value was given (session 43, F3)."""
    if keys is None or (unset is not None and keys == unset):
        return DecisionKeys(())
    if isinstance(keys, str):  # (BATON_DECISION_KEYS: read by Settings, then by its user)
        return _parsed(keys, what)
    return _parse(keys, what)


@functools.lru_cache(maxsize=16)
def _parsed(keys: str, what: str) -> DecisionKeys:
    return _parse(keys, what)


def _parse(keys: str | Iterable[str], what: str) -> DecisionKeys:
    if isinstance(keys, (bytes, bytearray)) or not isinstance(keys, (str, Iterable)):
        raise SigningKeyError(
            f"{what}: expected the workers' public keys, ed25519:… texts (a list, or one "
            f"string, comma-separated), got {type(keys).__name__}"
        )
    texts = keys.replace(",", " ").split() if isinstance(keys, str) else list(keys)
    if not texts:
        raise SigningKeyError(
            f"{what}: empty, which would take any decision: give the workers' public key "
            "(ed25519:…), or leave it unset"
        )
    if len(texts) > MAX_DECISION_KEYS:
        raise SigningKeyError(
            f"{what}: {len(texts)} keys, at most {MAX_DECISION_KEYS} (the workers' key, and the "
            "next one during a rotation)"
        )
    return DecisionKeys([parse_public_key(t, f"{what}[{i}]") for i, t in enumerate(texts)])


#: in a worker data dir: the signing key `baton up` makes when BATON_DECISION_SIGNING_KEY is
#: not set
DECISION_KEY_FILE: Final = "decision.key"


def ensure_decision_key(worker_dir: Path) -> Path:
    """``worker_dir``'s decision.key, made when there is none (`baton up`, at every start)."""
    path = worker_dir / DECISION_KEY_FILE
    worker_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        write_private_key(new_private_key(), path)
    except FileExistsError:
        pass  # kept: clients given its public key go on verifying
    except OSError as exc:
        raise SigningKeyError(
            f"cannot write the decision key {path}: {exc.strerror or exc}"
        ) from None
    return path


def signing_key_of(path: Path | str) -> tuple[Path, str]:
    """The key file at ``path``, resolved, and its public key's text (what clients are
    given); SigningKeyError naming BATON_DECISION_SIGNING_KEY when it does not read."""
    return Path(path).resolve(), public_key_text(_signing_key(path))
