"""Keys given to a setting in a file: the audit's chain key and the workers' public keys.

Why a file: a container's environment is in every `docker inspect` and in the compose file
itself, and Docker and Kubernetes hand secrets over as files. ``BATON_AUDIT_CHAIN_KEY_FILE``
names one (the ``_FILE`` convention of official images), read once when the settings are
built: a regular file owned by the reader or root that only its owner may read (mode 600 or
400: whoever reads it can forge audit rows, seal commands and run states; a Swarm secret needs
``mode: 0400`` and a Kubernetes one ``defaultMode: 0400``), at most 4 KB, holding the key
alone (a final newline, as `openssl rand -hex 32 > FILE` leaves it, is dropped; any other
space is refused, as the same text in BATON_AUDIT_CHAIN_KEY would be another key). `baton
keys chain FILE` makes one (the compose files' ``keys`` service does, once per deployment).
Every error names the variable and the path, never the key. `baton up` reads it once and
gives its children the key itself, so a restarted child keeps the stack's key.

``BATON_DECISION_KEYS_FILE`` names a file holding the workers' public keys (what
BATON_DECISION_KEYS holds: ``ed25519:…``), which `baton keys new ... --public-out FILE` writes:
public, so others may read it, but no one else may write it (whoever replaces it makes the
alerter or a client take their signatures): owned by the reader or root, not writable by its
group or others. The compose files' ``signing-key`` service writes one into a volume of its own
that the alerter mounts, never the volume of the private keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from baton.schemas.errors import ConfigError
from baton.schemas.files import FileProblem, read_small_file

if TYPE_CHECKING:
    from baton.schemas.settings import Settings

__all__ = [
    "KEY_FILE_VARIABLE",
    "MAX_KEY_BYTES",
    "chain_key_problem",
    "key_source",
    "read_chain_key_file",
    "read_key_files",
    "read_public_keys_file",
]

#: BLAKE2b's key (chains, seals, the audit MAC, the state MAC): a longer one crashed the worker
MAX_KEY_BYTES: Final = 64
KEY_FILE_VARIABLE: Final = "BATON_AUDIT_CHAIN_KEY_FILE"
#: far past any key: the file is read whole
_FILE_LIMIT: Final = 4096


def chain_key_problem(text: str) -> str | None:
    """Why ``text`` is no chain key (None: it is one)."""
    # empty was taken as no key, silently, without the restore's warning: what
    # `BATON_AUDIT_CHAIN_KEY: ${CHAIN_KEY}` gives when CHAIN_KEY is unset (H2, session 27)
    if not text.strip():
        return "empty; unset it for no key, or give the workers' key"
    if (n := len(text.encode())) > MAX_KEY_BYTES:
        return f"{n} bytes; at most {MAX_KEY_BYTES} (`openssl rand -hex 32` makes one)"
    return None


def read_chain_key_file(path: Path) -> str:
    """The key in ``path`` (its text less one final newline); ConfigError naming the variable
    and the path when it is missing, not a regular file, another user's, in a folder others may
    write, readable by others, not UTF-8, empty, spaced or too long."""

    def refused(why: str) -> ConfigError:
        return ConfigError(f"{KEY_FILE_VARIABLE}: chain key file {path}: {why}")

    try:
        data = read_small_file(path, _FILE_LIMIT, private=True, trusted=True)
    except FileNotFoundError:
        raise refused("no such file (`baton keys chain FILE` makes one)") from None
    except FileProblem as exc:
        raise refused(str(exc)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise refused("not UTF-8 text") from None
    # one line ending, as `openssl rand -hex 32 > FILE` or a secret made --from-file leaves it;
    # any other space around it (or a byte-order mark) would give another key than the same
    # text in BATON_AUDIT_CHAIN_KEY, which is taken as it is: a sink refusing every record
    text = text.removesuffix("\n").removesuffix("\r")
    if text != text.strip() or text.startswith("\ufeff"):
        raise refused(
            "space, another line or a byte-order mark around the key: write the key alone "
            "(a final newline is fine)"
        )
    problem = chain_key_problem(text)
    if problem is not None:
        raise refused(f"no key in it: {problem}")
    return text


def key_source(key_file: Path | None) -> str:
    """Where the settings' chain key came from, for a message: the variable, or the file."""
    return f"{KEY_FILE_VARIABLE} ({key_file})" if key_file else "BATON_AUDIT_CHAIN_KEY"


def read_public_keys_file(path: Path) -> str:
    """The public keys in ``path`` (its text, stripped; checked by the caller as
    BATON_DECISION_KEYS is); ConfigError naming the variable and the path when it is missing,
    not a regular file, writable by others, another user's or not UTF-8."""
    variable = "BATON_DECISION_KEYS_FILE"
    try:
        data = read_small_file(path, _FILE_LIMIT, trusted=True, unwritable=True)
        return data.decode("utf-8").strip()
    except FileNotFoundError:
        why = "no such file (`baton keys new NAME --public-out FILE` writes one)"
    except FileProblem as exc:
        why = str(exc)
    except UnicodeDecodeError:
        why = "not UTF-8 text"
    raise ConfigError(f"{variable}: public keys file {path}: {why}")


def read_key_files(settings: Settings) -> Settings:
    """``settings`` with BATON_AUDIT_CHAIN_KEY_FILE's key and BATON_DECISION_KEYS_FILE's public
    keys read into the fields their variables fill (Settings' last validator); ConfigError when
    a variable and its file are both given and differ, or a file does not read."""
    from pydantic import SecretStr

    from baton.schemas.decision_signing import decision_keys
    from baton.schemas.signing import SigningKeyError

    if settings.audit_chain_key_file is not None:
        key = read_chain_key_file(settings.audit_chain_key_file)
        given = settings.audit_chain_key
        # the same key in both is one (a command's settings rebuilt from a dump of its own:
        # `baton kill` refused to start, h48b F1); another is refused
        if given is not None and given.get_secret_value() != key:
            raise ConfigError(f"BATON_AUDIT_CHAIN_KEY and {KEY_FILE_VARIABLE}: give one")
        settings.audit_chain_key = SecretStr(key)
    path = settings.decision_keys_file
    if path is not None:
        text = read_public_keys_file(path)
        try:  # as the variable's are, and an empty file too: checking would be off, silently
            decision_keys(text, f"BATON_DECISION_KEYS_FILE: public keys file {path}")
        except SigningKeyError as exc:
            raise ConfigError(str(exc)) from None
        if settings.decision_keys and settings.decision_keys != text:
            raise ConfigError("BATON_DECISION_KEYS and BATON_DECISION_KEYS_FILE: give one")
        settings.decision_keys = text
    return settings
