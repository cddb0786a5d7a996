"""``baton keys new`` and ``baton keys show``: an approver's or operator's Ed25519 key pair;
``baton keys chain``: a deployment's audit chain key in a file (BATON_AUDIT_CHAIN_KEY_FILE).

The private key stays with its owner (a file readable by them only); the public key goes into
the policy as one line, ``NAME: "ed25519:…"``, under ``multi_agent.approval.keys`` (approvers)
or ``operators`` (who may kill, release and publish policy). Rotation: docs/security.md.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import click

from baton.cli.help_listing import SentenceGroup
from baton.schemas.errors import ConfigError
from baton.schemas.files import create_file
from baton.schemas.signing import (
    load_private_key,
    new_private_key,
    public_key_text,
    write_private_key,
)

__all__ = ["policy_line", "register"]

#: a name that is also a safe file name: letters, digits, _ . - (a letter or digit first)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: a public keys file is a line or a few; anything larger is not one
MAX_PUBLIC_FILE = 4096
#: words YAML reads as something else than a string when they are a key
_YAML_WORDS = frozenset(["true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"])


def policy_line(name: str, public_text: str) -> str:
    """The policy line for ``name``: quoted when YAML would read the bare name as a
    boolean, null or number (``yes``, ``null``, ``1e3`` …)."""
    bare = name.lower() not in _YAML_WORDS and not re.fullmatch(r"[0-9][0-9_.eE+-]*", name)
    shown = name if bare else f'"{name}"'
    return f'{shown}: "{public_text}"'


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"key name {name[:60]!r}: expected 1-128 letters, digits, '_', '.' or '-', starting "
            "with a letter or digit (it names the file NAME.key and the policy entry)"
        )
    return name


@click.group("keys", cls=SentenceGroup)
def keys_group() -> None:
    """Signing keys of approvers and operators (Ed25519), and the audit's chain key."""


@keys_group.command("new")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="where to write NAME.key (created with mode 0700 when missing)",
)
@click.option(
    "--keep",
    is_flag=True,
    help="an existing NAME.key is kept (checked) and its line printed, not refused: a "
    "deployment's start that runs this every time (the compose files' signing-key service)",
)
@click.option(
    "--public-out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="also write the public key (ed25519:…, mode 644) to this file: what "
    "BATON_DECISION_KEYS_FILE names for the alerter and clients of workers that sign with it",
)
def keys_new(name: str, directory: Path, keep: bool, public_out: Path | None) -> None:
    """Write a new private key to DIR/NAME.key (mode 0600, never over an existing file) and
    print the policy line NAME: "ed25519:…" to add under multi_agent.approval.keys (an
    approver) or operators (an operator), or give the public key to the workers' readers
    (BATON_DECISION_KEYS) when the workers sign with it (BATON_DECISION_SIGNING_KEY)."""
    _check_name(name)
    path = directory / f"{name}.key"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission
        raise ConfigError(f"cannot make key directory {directory}: {exc.strerror or exc}") from None
    made = True
    try:
        key = new_private_key()
        write_private_key(key, path)
    except FileExistsError:
        if not keep:
            raise ConfigError(
                f"key file {path} already exists; a key is never overwritten (rotate: make "
                f"{name}-2, list both in the policy, switch, then remove the old one)"
            ) from None
        _refuse_planted(path, "key file")  # (keys chain's checks: h48b F4)
        key, made = load_private_key(path), False  # (refused when others may read it)
    except OSError as exc:
        raise ConfigError(f"cannot write key file {path}: {exc.strerror or exc}") from None
    public = public_key_text(key)
    if public_out is not None:
        _write_public(public_out, public, path)
    # the policy line alone on stdout (scripts append it); the rest on stderr
    click.echo(policy_line(name, public))
    use = (
        f"give its public key ({public_out}) to the workers' readers as BATON_DECISION_KEYS "
        "or BATON_DECISION_KEYS_FILE; never list a workers' key as an approver or operator"
        if public_out
        else "add the line above under multi_agent.approval.keys (an approver) or operators "
        "(an operator)"
    )
    mode = "600" if made else f"{stat.S_IMODE(path.stat().st_mode):o}"
    click.echo(
        f"{'wrote' if made else 'kept'} {path} (mode {mode}): keep it secret; {use}", err=True
    )


def _write_public(public_out: Path, public: str, private: Path) -> None:
    """The public key into ``public_out`` (mode 644, whatever the umask), over an older public
    key file only: never over the private key or any file that holds something else (a
    private key given by mistake was replaced by public text, for good; h48b F3)."""
    from baton.schemas.files import FileProblem, read_small_file, write_data_file

    if public_out.resolve() == private.resolve():
        raise ConfigError(f"--public-out {public_out} is the private key file itself")
    try:
        old = read_small_file(public_out, MAX_PUBLIC_FILE).decode("utf-8", "replace").split()
    except FileNotFoundError:
        old = []
    except FileProblem as exc:
        raise ConfigError(f"--public-out {public_out}: {exc}") from None
    if any(not text.startswith("ed25519:") for text in old):
        raise ConfigError(
            f"--public-out {public_out} holds something else than public keys: not replaced"
        )
    write_data_file(
        public_out, public + "\n", 0o644, "public key file", hint="give a writable --public-out"
    )
    public_out.chmod(0o644)  # (a umask of 077 made it 600: the readers are other users)


def _refuse_planted(path: Path, what: str) -> None:
    """ConfigError when the file at ``path`` is a link, no regular file, another user's or
    empty: someone else put it there (and knows the key), or a write of it failed."""
    info = os.lstat(path)
    planted = (
        "a link or not a file"
        if not stat.S_ISREG(info.st_mode)
        else f"owned by another user (uid {info.st_uid})"
        if info.st_uid != os.geteuid()
        else "empty (this command writes a key whole: someone else made it)"
        if info.st_size == 0
        else ""
    )
    if planted:
        raise ConfigError(
            f"{what} {path} is {planted}: whoever put it there may know the key; remove it and "
            "run this again"
        )


@keys_group.command("show")
@click.argument("key_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--as", "name", default=None, help="the name to print [default: the file's stem]")
def keys_show(key_file: Path, name: str | None) -> None:
    """Print the policy line of an existing private key file (its public key)."""
    key = load_private_key(key_file)
    click.echo(policy_line(_check_name(name or key_file.stem), public_key_text(key)))


@keys_group.command("chain")
@click.argument("key_file", type=click.Path(path_type=Path, dir_okay=False))
def keys_chain(key_file: Path) -> None:
    """Make a chain key in KEY_FILE (64 random hex characters, mode 600) unless it holds one.

    Give its path to every worker, sink and `baton audit verify` of one deployment as
    BATON_AUDIT_CHAIN_KEY_FILE (the compose files' keys service runs this once): the workers
    then link decisions, seal commands and run states, and mark each decision for the sink,
    under it (docs/security.md). A file already there is kept, checked as the workers read
    it; the key is never printed, only its id (the one `baton doctor` and stack.json show).
    """
    from baton.processors.control_seal import chain_key_id
    from baton.schemas.key_files import read_chain_key_file

    made = _new_chain_key(key_file)
    if not made:  # an earlier run's (or another start's at the same moment, whole): kept
        _refuse_planted(key_file, "chain key file")
    key = read_chain_key_file(key_file)
    click.echo(
        f"{'made' if made else 'kept'} chain key {key_file} (id {chain_key_id(key.encode())}): "
        "BATON_AUDIT_CHAIN_KEY_FILE for every worker, sink and `baton audit verify`"
    )


def _new_chain_key(key_file: Path) -> bool:
    """Write a new key to ``key_file`` whole (a temp file of its own, linked in: a reader never
    sees it half written); False when a file is there already."""
    import secrets

    try:
        create_file(key_file, secrets.token_hex(32) + "\n", 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise ConfigError(
            f"cannot write chain key file {key_file}: {exc.strerror or exc}"
        ) from None
    return True


def register(cli: click.Group) -> None:
    cli.add_command(keys_group)
