"""What every command builds from its options: the Settings (one ``--name`` option and
``BATON_NAME`` variable per field) and the policy file they name."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from baton.schemas.errors import ConfigError, PolicyError
from baton.schemas.policy import Policy, load_policy, parse_policy
from baton.schemas.settings import Settings

__all__ = ["MAX_POLICY_BYTES", "build_settings", "read_policy", "setting_options"]

#: a policy is a YAML document of a few KB; a bigger file is a wrong path, not a policy
MAX_POLICY_BYTES = 4 * 1024 * 1024

F = TypeVar("F", bound=Callable[..., Any])


def setting_options(*names: str) -> Callable[[F], F]:
    """Add ``--name`` options for the given Settings fields (env BATON_NAME, shown in --help)."""

    def decorate(fn: F) -> F:
        for name in reversed(names):
            info = Settings.model_fields[name]
            default = info.default
            shown = "unset" if default is None else str(default)
            env = f"BATON_{name.upper()}"
            help_text = f"{info.description or name.replace('_', ' ')} [env {env}; default {shown}]"
            kind: Any = None
            ann = str(info.annotation)
            if "Path" in ann:
                kind = click.Path(path_type=Path)
            elif "int" in ann and "float" not in ann:
                kind = int
            elif "float" in ann:
                kind = float
            fn = click.option(
                f"--{name.replace('_', '-')}", name, type=kind, default=None, help=help_text
            )(fn)
        return fn

    return decorate


def build_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the command-line values that were given on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except Exception as exc:  # pydantic ValidationError: name the setting and its variable
        errors = getattr(exc, "errors", None)
        if errors is None:
            raise
        lines = []
        for err in errors():
            field = ".".join(str(p) for p in err["loc"])
            lines.append(f"{field} (BATON_{field.upper()}): {err['msg']}, got {err.get('input')!r}")
        raise ConfigError("invalid settings: " + "; ".join(lines)) from None


def read_policy(path: str | Path | None) -> Policy:
    """The policy in ``path`` (the seed policy for None); any problem is a ``PolicyError``
    naming the file and what is wrong with it, never a traceback.

    Checked before parsing: the path is a regular file (a FIFO or device would block or never
    end), at most ``MAX_POLICY_BYTES``, UTF-8 text without NUL bytes.
    """
    if path is None:
        return load_policy(None)
    p = Path(path)

    def refuse(problem: str) -> PolicyError:
        return PolicyError([problem], str(p))

    try:
        mode = p.stat().st_mode
        if stat.S_ISDIR(mode):
            raise refuse("is a directory, expected a policy YAML file")
        if not stat.S_ISREG(mode):
            raise refuse("is not a regular file (a device, FIFO or socket), expected a YAML file")
        with p.open("rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise refuse(f"cannot read policy file: {exc.strerror or exc}") from None
    if len(data) > MAX_POLICY_BYTES:
        raise refuse(
            f"is larger than {MAX_POLICY_BYTES} bytes, expected a policy YAML file (a few KB)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "a policy is a UTF-8 YAML file"
        ) from None
    if "\x00" in text:
        raise refuse(
            f"holds a NUL byte at offset {data.index(0)} (a binary file?); "
            "a policy is a UTF-8 YAML file"
        )
    return parse_policy(text, os.fspath(p))
