"""Ed25519 signatures of approvers and operators: key text, canonical payloads, sign, verify.

Identity is a signature, not a name (docs/security.md): an approval or a control command
counts only when it is signed by a private key whose public key the policy lists
(``multi_agent.approval.keys`` for approvers, top-level ``operators`` for operators). The
private keys never reach the worker; the worker only verifies.

What a signature covers is fixed here, in one place, for the signer (CLI, SDK) and the
verifier (the engine) alike. Each payload starts with a domain tag, so a signature made for
one purpose can never be taken for another, and names every field, so none can be swapped:

* approval: ``baton-approval-v1``, approval id, run id, the digest of the handoff request it
  answers, the verdict (``grant``/``deny``), the approver, the signing time;
* control: ``baton-control-v1``, the event type, scope, target, operator, reason, the
  signing time, and for a policy update the hash of the policy text.

Fields are joined with 0x1F after each is length-prefixed, so no two payloads encode alike.
Names (the approver, the operator, a tenant target) are signed in their folded form
(baton.schemas.names), the form the worker reads them in: ``Finance_Lead`` signs as
``finance_lead``, so a signer need not fold, and a look-alike name cannot verify.
Key text is ``ed25519:<base64 of the 32 raw public-key bytes>``; a private key file holds
``ed25519-private:<base64 of the 32 raw private-key bytes>`` and one newline.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from baton.schemas.errors import ConfigError
from baton.schemas.files import FileProblem, create_file, read_small_file
from baton.schemas.names import fold

__all__ = [
    "PRIVATE_PREFIX",
    "PUBLIC_PREFIX",
    "SigningKeyError",
    "approval_payload",
    "control_payload",
    "load_private_key",
    "new_private_key",
    "parse_public_key",
    "policy_hash",
    "private_key_text",
    "public_key_text",
    "sign",
    "signature_bytes",
    "verify",
    "write_private_key",
]

PUBLIC_PREFIX = "ed25519:"
PRIVATE_PREFIX = "ed25519-private:"
#: a signature is 64 bytes: 88 characters of base64
SIGNATURE_CHARS = 88


class SigningKeyError(ConfigError):
    """Key text or a key file is unusable; the message says which and why."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str, what: str, size: int) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyError(f"{what}: not valid base64") from None
    if len(raw) != size:
        raise SigningKeyError(f"{what}: must be {size} bytes of base64, got {len(raw)}")
    return raw


#: the encodings of the 8 points of small order (sign bit cleared; y = 0, 1 and -1 also as
#: p, p + 1): libsodium's blocklist. Against such a "key", a signature made without any
#: private key verifies (OpenSSL checks no key's order): with the identity, for every
#: message; with all zeros (the natural placeholder), for one message in four
_SMALL_ORDER = frozenset(
    bytes.fromhex(h)
    for h in (
        "00" * 32,
        "01" + "00" * 31,
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "ec" + "ff" * 30 + "7f",
        "ed" + "ff" * 30 + "7f",
        "ee" + "ff" * 30 + "7f",
    )
)


def parse_public_key(text: str, what: str = "public key") -> Ed25519PublicKey:
    """``ed25519:<base64>`` → a public key; :class:`SigningKeyError` names what is wrong."""
    if not isinstance(text, str) or not text.startswith(PUBLIC_PREFIX):
        raise SigningKeyError(f'{what}: must look like "{PUBLIC_PREFIX}<base64 public key>"')
    raw = _unb64(text[len(PUBLIC_PREFIX) :], what, 32)
    if raw[:31] + bytes([raw[31] & 0x7F]) in _SMALL_ORDER:
        raise SigningKeyError(
            f"{what}: a point of small order, not anyone's public key (a placeholder?): "
            "signatures made without a private key would verify against it; use the line "
            "`baton keys new` prints"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return PUBLIC_PREFIX + _b64(public.public_bytes_raw())


def new_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_text(key: Ed25519PrivateKey) -> str:
    return PRIVATE_PREFIX + _b64(key.private_bytes_raw()) + "\n"


def write_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write ``key`` to ``path`` readable by its owner only (0600), never over a file
    (FileExistsError), whole: a temp file of its own linked in, so no reader (a racing `keys
    new --keep`) and no crash ever leaves a half-written key there (h48b F5)."""
    create_file(path, private_key_text(key), 0o600)


#: a key file is one line of ~60 bytes; anything much larger is not one
MAX_KEY_FILE = 4096


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read a key file written by ``baton keys new``; refuses one others can read.

    Its kind, size and mode are checked on the open file (``schemas.files``): a FIFO or a
    device given for it, even one swapped in after a check, is refused, never read."""
    p = Path(path)
    try:
        data = read_small_file(p, MAX_KEY_FILE, private=True)
        text = data.decode("ascii").strip()
    except FileProblem as exc:
        if exc.kind is None and exc.size is None:  # readable by others, or unreadable
            raise SigningKeyError(f"key file {p}: {exc}") from None
        got = f"a {exc.kind}" if exc.kind else f"{exc.size} bytes"
        raise SigningKeyError(
            f"key file {p}: expected a regular file of one line made by `baton keys new`, got {got}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a key file"
        raise SigningKeyError(f"key file {p}: {reason}") from None
    if not text.startswith(PRIVATE_PREFIX):
        raise SigningKeyError(f"key file {p}: not a Baton private key (made by `baton keys new`)")
    raw = _unb64(text[len(PRIVATE_PREFIX) :], f"key file {p}", 32)
    return Ed25519PrivateKey.from_private_bytes(raw)


def _payload(tag: str, *fields: str) -> bytes:
    parts = [tag]
    parts += [f"{len(f)}:{f}" for f in fields]
    return "\x1f".join(parts).encode()


def _time(at: datetime) -> str:
    # isoformat of an aware time: what the event carries round-trips to the same text
    return at.isoformat()


def approval_payload(
    approval_id: str,
    run_id: str,
    request_digest: str,
    verdict: str,
    approver: str,
    signed_at: datetime,
) -> bytes:
    """What an approver signs: this approval of this request in this run, this verdict."""
    if verdict not in ("grant", "deny"):
        raise ValueError(f"verdict must be grant or deny, got {verdict!r}")
    return _payload(
        "baton-approval-v1",
        approval_id,
        run_id,
        request_digest,
        verdict,
        fold(approver),
        _time(signed_at),
    )


def control_payload(
    event_type: str,
    scope: str,
    target: str,
    operator: str,
    reason: str,
    signed_at: datetime,
    policy_sha: str = "",
) -> bytes:
    """What an operator signs: this kill, release or policy (by its text's hash), now."""
    return _payload(
        "baton-control-v1",
        event_type,
        scope,
        fold(target) if scope == "tenant" else target,  # a run id is an id, never folded
        fold(operator),
        reason,
        _time(signed_at),
        policy_sha,
    )


def policy_hash(policy_yaml: str) -> str:
    """SHA-256 of a policy's text, as hex: what a signed policy update names."""
    return hashlib.sha256(policy_yaml.encode()).hexdigest()


def sign(key: Ed25519PrivateKey, payload: bytes) -> str:
    return _b64(key.sign(payload))


def signature_bytes(text: str | bytes) -> bytes | None:
    """The 64 bytes of a signature's base64 in its one canonical spelling, else None (never
    raises): the last character before ``==`` carries 4 bits decoding ignores, so 15 other
    spellings decoded alike (a command's, session 39 G3; a decision's, session 43)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return None
    said = text if isinstance(text, bytes) else text.encode("ascii", "replace")
    if len(raw) != 64 or base64.b64encode(raw) != said:
        return None
    return raw


def verify(key: Ed25519PublicKey, payload: bytes, signature: str) -> bool:
    """True when ``signature`` (base64, in its one canonical spelling) is ``key``'s over
    ``payload``; never raises. The last character before ``==`` carries 4 bits decoding
    ignores: another spelling of the same bytes verified, and a copy of a refused command so
    spelled had another refusal id and was issued again at a restart (session 39, G3)."""
    raw = signature_bytes(signature)
    if raw is None:
        return False
    try:
        key.verify(raw, payload)
    except InvalidSignature:
        return False
    return True
