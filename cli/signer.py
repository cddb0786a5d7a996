"""What the people's commands share: who signs (``--as NAME --key FILE``) and how a refusal ends.

An approver or operator signs with a private key made by ``baton keys new``; the worker checks
the signature against the public key the policy lists under that name. A command that the
worker refused (unsigned, forged, replayed, self- or beneficiary approval …) prints the
worker's record and ends with :class:`CommandRefused` (exit 6), so scripts can tell "Baton said
no" (6) from "Kafka or the worker did not answer" (4) and a usage or key problem (2).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from baton.schemas.decision import Decision
from baton.schemas.errors import CommandRefused
from baton.schemas.names import name_problem
from baton.schemas.signing import load_private_key
from baton.sinks.render import shown

__all__ = ["CommandRefused", "current_user", "describe", "load_key", "shown", "signer_options"]

F = TypeVar("F", bound=Callable[..., Any])

#: a name the policy lists: a YAML key, at most this long (schemas/policy.py PublicKeys)
MAX_NAME = 256


def _name(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not (0 < len(value) <= MAX_NAME and value.isprintable()):
        raise click.BadParameter(
            f"expected the 1-{MAX_NAME} printable characters of a name the policy lists, "
            f"got {value[:60]!r}{'…' if len(value) > 60 else ''}"
        )
    # as every event checks its names: "a b" passed here and the event refused it after the
    # command had connected (a traceback from `baton policy publish`, `approve`, `deny`)
    problem = None if value is None else name_problem(value)
    if problem is not None:
        raise click.BadParameter(f"bad name {value[:60]!r}: {problem}")
    return value


def signer_options(role: str, *, key_required: bool, as_default: Any = None) -> Callable[[F], F]:
    """``--as NAME`` and ``--key FILE`` for a command signed by an ``role`` (approver or
    operator); adds the parameters ``signer`` and ``key_file``."""
    where = "multi_agent.approval.keys" if role == "approver" else "operators"

    def decorate(fn: F) -> F:
        fn = click.option(
            "--key",
            "key_file",
            type=click.Path(path_type=Path, dir_okay=False),
            metavar="FILE",
            required=key_required,
            help=f"the {role}'s private key file (from `baton keys new`, mode 0600); its public "
            f"key must be listed under that name in {where}"
            + (
                ""
                if key_required
                else f" (unsigned without it: refused when the policy lists {where})"
            ),
        )(fn)
        names = ("--as", "--operator") if role == "operator" else ("--as",)
        # click 8.3 takes an explicit default=None as a value: required would never trigger
        default: dict[str, Any] = {} if as_default is None else {"default": as_default}
        return click.option(
            *names,
            "signer",
            metavar="NAME",
            required=as_default is None,
            callback=_name,
            **default,
            help=f"the {role}'s name, as listed in {where} (recorded in the audit)"
            + (" [default: $USER]" if as_default is not None else ""),
        )(fn)

    return decorate


def current_user() -> str:
    return os.environ.get("USER", "operator")


def load_key(path: Path | None) -> Ed25519PrivateKey | None:
    """The private key in ``path`` (None: no key); a key file others can read, or anything
    that is not a key, is a ConfigError naming the file (exit 2). A FIFO, device or huge file
    is refused from the open file, never read (``load_private_key``: reading ``--key
    /dev/stdin`` or a FIFO would block)."""
    return None if path is None else load_private_key(path)


def describe(d: Decision) -> str:
    """One line for a person: phase, outcome, reason, who, when, by which worker."""
    who = f" by {d.approver}" if d.approver else ""
    at = f" at {d.decided_at:%Y-%m-%d %H:%M:%S}" if d.decided_at else ""
    worker = f" (worker {d.worker})" if d.worker else ""
    detail = f": {d.detail}" if d.detail else ""
    return shown(f"{d.phase} {d.outcome} {d.reason}{who}{at}{worker}{detail}")
