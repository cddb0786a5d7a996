"""What every command builds from its options: the Settings (one ``--name`` option and
``BATON_<NAME>`` variable per field) and the policy file they name."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import click

from baton.schemas.errors import ConfigError, PolicyError
from baton.schemas.files import FileProblem, read_small_text
from baton.schemas.policy import Policy, load_policy, parse_policy
from baton.schemas.settings import Settings

__all__ = [
    "AUDIT_CONNECTION",
    "KAFKA_CONNECTION",
    "MAX_POLICY_BYTES",
    "FiniteFloatRange",
    "PortOrOff",
    "build_settings",
    "click_type",
    "group_variables",
    "read_policy",
    "read_policy_text",
    "setting_help",
    "setting_options",
    "with_connection_groups",
]

#: a policy is a YAML document of a few KB; a bigger file is a wrong path, not a policy
MAX_POLICY_BYTES = 4 * 1024 * 1024

F = TypeVar("F", bound=Callable[..., Any])


#: settings every Kafka client reads (connection and security); a command that talks to Kafka
#: lists them all in its --help. The two passwords are no flags: BATON_SASL_PASSWORD and
#: BATON_SSL_KEY_PASSWORD only (a flag's value is in every local user's `ps`: H2, session 27)
KAFKA_CONNECTION = (
    "bootstrap",
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "connect_timeout_s",
)
#: settings every ClickHouse client reads
AUDIT_CONNECTION = ("clickhouse_dsn", "clickhouse_ca", "clickhouse_verify", "clickhouse_timeout_s")


def click_type(name: str) -> Any:
    """The click parameter type of Settings field ``name``: its choices, its range, a path."""
    info = Settings.model_fields[name]
    kind = _unwrap_optional(info.annotation)
    bounds = {type(m).__name__: m for m in info.metadata}
    if get_origin(kind) is Literal:
        return click.Choice([str(v) for v in get_args(kind)])
    if kind is bool:
        return click.BOOL
    if kind in (int, float):
        low = bounds.get("Ge") or bounds.get("Gt")
        high = bounds.get("Le") or bounds.get("Lt")
        limits: dict[str, Any] = {
            "min": getattr(low, "ge", getattr(low, "gt", None)),
            "max": getattr(high, "le", getattr(high, "lt", None)),
            "min_open": "Gt" in bounds,
            "max_open": "Lt" in bounds,
        }
        if kind is int:
            return click.IntRange(**limits)
        return FiniteFloatRange(**limits)
    if kind is Path:
        return click.Path(path_type=Path)
    return click.STRING  # str and SecretStr (pydantic wraps the secret)


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange refusing nan and inf: nan passes any bound (every comparison with it
    is False), so `baton doctor --timeout nan` reached threading's join, a ValueError traceback."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        # finite first: with an upper bound, inf would be named as out of range instead
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


def _unwrap_optional(annotation: Any) -> Any:
    """``X`` for ``X | None``; the annotation itself otherwise."""
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


#: defaults that depend on the command: a client finds the `baton up` of its data dir
_DEFAULT_SHOWN = {
    "bootstrap": "the `baton up` of --data-dir for client commands, 127.0.0.1:9092 for "
    "worker and sink",
    "clickhouse_dsn": "the `baton up` of --data-dir for client commands, chdb:.baton/chdb "
    "for the sink",
}


def setting_help(name: str, own_default: Any = None) -> str:
    """The --help text of Settings field ``name``: its description, variable and default
    (``own_default``: the command's own, see :func:`setting_options`)."""
    info = Settings.model_fields[name]
    default = info.default if own_default is None else own_default
    shown = _DEFAULT_SHOWN.get(name) or ("unset" if default is None else str(default))
    env = f"BATON_{name.upper()}"
    return f"{info.description or name.replace('_', ' ')} [env {env}; default {shown}]"


def group_variables(group: tuple[str, ...]) -> str:
    """``BATON_<X>, BATON_<Y> ...`` of a connection group after its first setting, for the help
    of an option that takes the first one itself (``--bootstrap``, ``--dsn``)."""
    return ", ".join(f"BATON_{name.upper()}" for name in group[1:])


def with_connection_groups(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` and, after ``bootstrap``, the rest of ``KAFKA_CONNECTION`` (a Kafka client
    reads its security settings too); after ``clickhouse_dsn``, the rest of
    ``AUDIT_CONNECTION``. Each name once."""
    expanded: list[str] = []
    for name in names:
        if name == "bootstrap":
            expanded += KAFKA_CONNECTION
        elif name == "clickhouse_dsn":
            expanded += AUDIT_CONNECTION
        else:
            expanded.append(name)
    return tuple(dict.fromkeys(expanded))


def setting_options(*names: str, defaults: dict[str, Any] | None = None) -> Callable[[F], F]:
    """Add ``--name`` options for the given Settings fields (env BATON_<NAME>, shown in --help);
    ``bootstrap`` brings the whole Kafka connection group (security, SASL, SSL, timeout) and
    ``clickhouse_dsn`` the audit connection group (``with_connection_groups``).

    ``defaults``: the command's own default of a setting, taken when neither its flag nor its
    variable is given (and shown in --help), e.g. ``baton up``'s shorter session timeout.
    A name given twice (a group and a command's own list) gets one option."""
    own = defaults or {}

    def decorate(fn: F) -> F:
        present = {p.name for p in getattr(fn, "__click_params__", [])}
        for name in reversed(with_connection_groups(names)):
            if name in present:
                continue
            fn = click.option(
                f"--{name.replace('_', '-')}",
                name,
                type=click_type(name),
                default=None,
                help=setting_help(name, own.get(name)),
            )(fn)
        return _with_own_defaults(fn, own) if own else fn

    return decorate


def _with_own_defaults(fn: F, defaults: dict[str, Any]) -> F:
    """``fn`` called with ``defaults`` for the settings given neither as a flag nor as a
    ``BATON_`` variable (pydantic-settings reads those in any case)."""

    @functools.wraps(fn)
    def call(**opts: Any) -> Any:
        variables = {key.upper() for key in os.environ}
        for name, value in defaults.items():
            if opts.get(name) is None and f"BATON_{name.upper()}" not in variables:
                opts[name] = value
        return fn(**opts)

    return call  # type: ignore[return-value]


class PortOrOff(click.ParamType):
    """A TCP port 0-65535 (0: any free one) or ``off`` (None: do not serve)."""

    name = "PORT|off"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text in ("off", "none"):
            return None
        if text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535:
            return int(text)
        self.fail(f"expected a port 0-65535 (0: a free one) or off, got {str(value)[:40]!r}")


def build_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the command-line values that were given on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except Exception as exc:  # pydantic ValidationError: name the setting and its variable
        if getattr(exc, "errors", None) is None:
            raise
        from baton.schemas.env_names import settings_problems

        raise ConfigError(f"invalid settings: {settings_problems(exc)}") from None


def read_policy(path: str | Path | None) -> Policy:
    """The policy in ``path`` (the seed policy for None); any problem is a ``PolicyError``
    naming the file and what is wrong with it, never a traceback.

    Checked before parsing: the path is a regular file (a FIFO or device would block or never
    end), at most ``MAX_POLICY_BYTES``, UTF-8 text without NUL bytes.
    """
    if path is None:
        return load_policy(None)
    return parse_policy(read_policy_text(path), os.fspath(Path(path)), file=True)


def read_policy_text(path: str | Path) -> str:
    """The text of the policy file ``path``, read once after the checks ``read_policy``
    names (a caller that hashes and sends it must not read the file again: it may have been
    swapped for a FIFO or other bytes since)."""
    p = Path(path)

    def refuse(problem: str) -> PolicyError:
        return PolicyError([problem], str(p))

    try:
        text = read_small_text(p, MAX_POLICY_BYTES)
    except FileNotFoundError as exc:
        raise refuse(f"cannot read policy file: {exc.strerror or exc}") from None
    except FileProblem as exc:
        raise refuse(f"{exc}, expected a policy YAML file (a few KB)") from None
    if "\x00" in text:
        raise refuse(
            f"holds a NUL byte at offset {len(text[: text.index(chr(0))].encode())} "
            "(a binary file?); a policy is a UTF-8 YAML file"
        )
    return text
