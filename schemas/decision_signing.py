"""Workers' Ed25519 signatures on the decisions they publish, checked by the clients waiting.

Why: an SDK client takes the first decision on gov.decisions that answers its request, so a
writer of that topic could hand it an ``allow`` (docs/security.md: the topic's ACL was the only
wall; the embedded broker has none, so every local user could). With
``BATON_DECISION_SIGNING_KEY`` (a private key file, ``baton keys new``) each worker signs every
decision record it publishes, on gov.decisions and gov.stops alike; a client given the public
key (``decision_keys=``, ``BATON_DECISION_KEYS``) takes only decisions whose signature
verifies. A forged or unsigned one is ignored, counted and logged: the client waits on for the
worker's, and answers its fail-closed stop at its timeout when none comes.

What a signature covers: the record's value, byte for byte (the decision's JSON: its run,
request, phase, outcome, input and every other field), after the domain tag ``DOMAIN``. The
signature is in the record's header ``HEADER``, as base64: the value, the audit's rows and the
run states are what they were, and a reader that knows nothing of it is unaffected. A copy of
a worker's signed record answers only the request it answered (the SDK matches a decision's
``input`` to its own request): replayed, it says what the worker said.

Cost: ~35 µs of the worker's CPU a decision to sign, ~110 µs of the client's to check one of
its own decisions (others' are never checked); bench/RESULTS.md.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from baton.schemas.signing import (
    SigningKeyError,
    load_private_key,
    new_private_key,
    parse_public_key,
    public_key_text,
    write_private_key,
)

__all__ = [
    "DECISION_KEY_FILE",
    "DOMAIN",
    "HEADER",
    "DecisionKeys",
    "DecisionSigner",
    "decision_keys",
    "ensure_decision_key",
    "load_signer",
    "signing_key_of",
]

#: the record header that carries a decision's signature
HEADER: Final = "baton-signature"
#: what a decision's signature covers before its value: never an approval's or a command's
DOMAIN: Final = b"baton-decision-v1\x1f"
#: a signature's base64 is 88 characters; a longer header is not one (never decoded)
_SIGNATURE_CHARS: Final = 88
#: the most public keys a client checks a decision against (a rotation needs two)
MAX_DECISION_KEYS: Final = 8


class DecisionSigner:
    """A worker's signer: the headers to publish a decision record's ``value`` with."""

    __slots__ = ("_sign",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._sign = key.sign

    def headers(self, value: bytes) -> list[tuple[str, bytes]]:
        return [(HEADER, base64.b64encode(self._sign(DOMAIN + value)))]


def load_signer(path: Path | str | None) -> DecisionSigner | None:
    """The signer of the key file at ``path`` (None: no path, the worker signs nothing);
    ConfigError naming BATON_DECISION_SIGNING_KEY when the file is not a private key only its
    owner may read (fail closed: a worker that cannot sign does not start)."""
    if path is None or str(path) == "":
        return None
    try:
        return DecisionSigner(load_private_key(path))
    except SigningKeyError as exc:
        raise SigningKeyError(f"BATON_DECISION_SIGNING_KEY: {exc}") from None


class DecisionKeys:
    """The public keys a client takes decisions signed by."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[Ed25519PublicKey]) -> None:
        self._keys = tuple(keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def verifies(self, value: bytes, headers: Iterable[tuple[str, Any]] | None) -> bool:
        """Whether the record of ``value`` and ``headers`` carries a signature one of the keys
        made over it; never raises. Only the first ``HEADER`` header is read (a worker sends
        one): a record of a thousand forged headers costs one check, not a thousand."""
        said = None
        for name, raw in headers or ():
            if name == HEADER:
                said = raw
                break
        if not isinstance(said, bytes) or len(said) != _SIGNATURE_CHARS:
            return False
        try:
            signature = base64.b64decode(said, validate=True)
        except (binascii.Error, ValueError):
            return False
        message = DOMAIN + value
        for key in self._keys:
            try:
                key.verify(signature, message)
            except InvalidSignature:
                continue
            return True
        return False


def decision_keys(keys: str | Iterable[str] | None, what: str = "decision_keys") -> DecisionKeys:
    """``keys`` (``ed25519:…`` texts: a list, or one string of them separated by commas or
    spaces, as BATON_DECISION_KEYS holds them) as DecisionKeys; SigningKeyError naming
    ``what`` and the key's place when one does not read."""
    if keys is None:
        return DecisionKeys(())
    texts = keys.replace(",", " ").split() if isinstance(keys, str) else list(keys)
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
    try:
        key = load_private_key(path)
    except SigningKeyError as exc:
        raise SigningKeyError(f"BATON_DECISION_SIGNING_KEY: {exc}") from None
    return Path(path).resolve(), public_key_text(key)
