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

The key: ``BATON_AUDIT_CHAIN_KEY`` when set, else the worker data dir's ``seal.key``, which
`baton up` makes at its first start (32 random bytes, mode 0600, beside ``held-kills.json``):
the embedded stack seals without any setting, against a local writer of its broker (every local
user, docs/security.md) who cannot read the data dir. A restart verifies with either key. With
neither nothing is sealed (an empty key is a hash anyone can compute): the restart keeps its
rules for unauthenticated rows.

The chain key (``processors/chain``): ``BATON_AUDIT_CHAIN_KEY`` when set, else the worker data
dir's ``chain.key``, which `baton up` makes only while its audit holds no decision: without a
key, anyone who knows the scheme can link a forged row onto a run's end and `baton audit
verify` passes it (a helper's attack, session 43). Not seal.key, which stacks began unkeyed
already hold: keying their chains now would name every run they hold altered, and a restart
would stop them all; such a stack stays unkeyed, and says so (`baton doctor`, `audit verify`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from baton.schemas.decision import Decision, content_hash
from baton.schemas.errors import ConfigError
from baton.schemas.files import write_data_file

if TYPE_CHECKING:
    from baton.schemas.settings import Settings

__all__ = [
    "CHAIN_KEY_FILE",
    "SEAL_FIELD",
    "SEAL_FIELDS",
    "SEAL_KEY_FILE",
    "chain_key",
    "chain_key_id",
    "ensure_chain_key",
    "ensure_seal_key",
    "is_sealed",
    "read_chain_key",
    "read_seal_key",
    "seal",
    "seal_key",
    "seal_keys",
    "seal_of",
    "workers_chain_key",
]

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
_ENUMS_AT: Final = (SEAL_FIELDS.index("phase"), SEAL_FIELDS.index("outcome"))
_TIME_AT: Final = SEAL_FIELDS.index("event_time")
#: the Decision field (and audit column) that holds a command record's seal
SEAL_FIELD: Final = "request_digest"
#: in a worker data dir: the key `baton up` makes when BATON_AUDIT_CHAIN_KEY is not set
SEAL_KEY_FILE: Final = "seal.key"
#: beside it: the key `baton up` links decisions with, made with a fresh audit (docstring)
CHAIN_KEY_FILE: Final = "chain.key"
_KEY_TEXT: Final = re.compile(r"[0-9a-f]{64}").fullmatch
#: the seal's domain: a chain hash (whose ``prev`` is a hash or "") is never a seal
_DOMAIN: Final = "control-seal/1"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def chain_key(settings: Settings) -> bytes:
    """BATON_AUDIT_CHAIN_KEY as the bytes the chains and seals are keyed with (b"": unset)."""
    key = settings.audit_chain_key
    return key.get_secret_value().encode() if key else b""


def seal_key(settings: Settings) -> bytes:
    """The key a worker seals with: BATON_AUDIT_CHAIN_KEY, else its data dir's seal.key (b"":
    neither). ConfigError when the file is there and does not read (fail closed: a worker
    that sealed nothing would have its commands withheld at the next restart)."""
    return chain_key(settings) or read_seal_key(settings.worker_data_dir)


def seal_keys(settings: Settings, worker_dir: Path | None) -> list[bytes]:
    """The keys a restart verifies seals with (and the workers' audit MAC is checked with):
    BATON_AUDIT_CHAIN_KEY and ``worker_dir``'s seal.key (None: no dir), those there are."""
    keys = (chain_key(settings), read_seal_key(worker_dir) if worker_dir else b"")
    return [k for k in keys if k]


def read_seal_key(worker_dir: Path) -> bytes:
    """``worker_dir``'s seal.key (b"": none); ConfigError when it does not read, is a link,
    belongs to another user, or other users may read or write it (whoever reads it can seal a
    forged command)."""
    return _read_key(worker_dir / SEAL_KEY_FILE, _SEAL)


def read_chain_key(worker_dir: Path) -> bytes:
    """``worker_dir``'s chain.key (b"": none), refused as seal.key is (whoever reads it can
    chain a forged decision onto a run's end in the audit)."""
    return _read_key(worker_dir / CHAIN_KEY_FILE, _CHAIN)


def workers_chain_key(settings: Settings, worker_dir: Path | None) -> bytes:
    """The key the workers link decisions with: BATON_AUDIT_CHAIN_KEY, else ``worker_dir``'s
    chain.key (`baton up`'s; ``worker_dir`` None: none), else b"" (unkeyed)."""
    return chain_key(settings) or (read_chain_key(worker_dir) if worker_dir else b"")


def chain_key_id(key: bytes) -> str:
    """16 hex characters that name ``key`` (b"": ""), recorded in stack.json: a start whose
    workers would link with another key, or none, is refused (h44 F1, F2)."""
    return hashlib.blake2b(key, digest_size=8, person=b"baton-chain-id").hexdigest() if key else ""


def ensure_seal_key(worker_dir: Path) -> None:
    """Make ``worker_dir``'s seal.key when there is none (`baton up`, at every start)."""
    if read_seal_key(worker_dir):
        return
    _make_key(worker_dir, SEAL_KEY_FILE, "seal key")


def ensure_chain_key(worker_dir: Path, fresh_audit: bool) -> bytes:
    """``worker_dir``'s chain.key, made when there is none and the audit is ``fresh_audit``
    (no decision stored yet). A stack whose audit was begun unkeyed stays so: a key made now
    would name every run it holds altered, and a restart would stop them all; b"" then."""
    key = read_chain_key(worker_dir)
    if key or not fresh_audit:
        return key
    _make_key(worker_dir, CHAIN_KEY_FILE, "chain key")
    return read_chain_key(worker_dir)


def _make_key(worker_dir: Path, name: str, what: str) -> None:
    worker_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_data_file(worker_dir / name, secrets.token_hex(32) + "\n", 0o600, what)


#: what a key file's errors say: its name, what its reader could forge, how to mend it
_SEAL: Final = (
    "seal key",
    "seal a forged command",
    "remove it and `baton up` makes another",
    "restore it from a backup, or remove it and `baton up` makes another (a restart then issues "
    "no command sealed with the old one again: their kills are held until released anew)",
)
_CHAIN: Final = (
    "chain key",
    "chain a forged decision into the audit",
    "start a new data dir if others may have read it (they could chain forged decisions)",
    "restore it from a backup: without it no run's chain in the audit verifies, and a restart "
    "stops every run it restores (audit_unverified)",
)


def _read_key(path: Path, about: tuple[str, str, str, str]) -> bytes:
    what, power, mend, damaged = about
    try:  # (O_NONBLOCK: a FIFO planted there hung every reader; h44 F4)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise ConfigError(
            f"cannot read the {what} {path}: {exc.strerror or exc} (a link is refused)"
        ) from None
    info = os.fstat(fd)
    mode = info.st_mode
    if not stat.S_ISREG(mode):  # (a folder was a traceback)
        os.close(fd)
        raise ConfigError(
            f"the {what} {path} is not a regular file (a folder, a FIFO ...): someone put it "
            "there; remove it, and put the key back from a backup of the data dir"
        )
    with os.fdopen(fd, "rb") as key_file:
        if info.st_uid != os.geteuid():
            # a key another user made (one in a folder others may write, such as /tmp beside
            # an audit copy `baton audit verify` reads) is that user's to forge with
            raise ConfigError(
                f"the {what} {path} belongs to another user (uid {info.st_uid}): whoever "
                f"made it can {power}; remove it, or run as its owner"
            )
        if mode & 0o077:
            raise ConfigError(
                f"the {what} {path} is not a file only its owner may read (mode "
                f"{stat.S_IMODE(mode):o}): `chmod 600 {path}`, or {mend}"
            )
        raw = key_file.read(128)
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        text = ""
    if not _KEY_TEXT(text):
        raise ConfigError(f"the {what} {path} is not 64 hex characters (damaged?): {damaged}")
    return text.encode()


def seal_of(key: bytes, values: Sequence[Any]) -> str:
    """The seal of a record whose SEAL_FIELDS values are ``values`` (a Decision's, or an audit
    row's: a time without a zone is UTC, as the audit's columns are)."""
    out = [str(v) if i in _ENUMS_AT else v for i, v in enumerate(values)]  # enums as values
    when = out[_TIME_AT]
    if isinstance(when, datetime):  # whole microseconds since the epoch, as chains hash times
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        d = when - _EPOCH
        out[_TIME_AT] = (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds
    return content_hash(key, _DOMAIN, orjson.dumps(out))


def seal(record: Decision, key: bytes) -> Decision:
    """``record`` sealed with ``key`` (left unsealed without one); returned for chaining."""
    if key:
        record.request_digest = seal_of(key, [getattr(record, f) for f in SEAL_FIELDS])
    return record


def is_sealed(key: bytes, values: Sequence[Any], said: str | None) -> bool:
    """Whether ``said`` is the seal ``key`` gives a record of these values (constant time).
    Any text a writer of the audit chose is an answer, never an error (``compare_digest``
    raises on two str with a non-ASCII character: one forged digest of 32 accented letters
    stopped every restart)."""
    if not key or not said or len(said) != 32:
        return False
    return hmac.compare_digest(seal_of(key, values).encode(), said.encode("utf-8", "replace"))
