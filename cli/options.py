"""Click options generated from the Settings model, so every option has its BATON_* variable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from baton.schemas.errors import ConfigError
from baton.schemas.settings import Settings

__all__ = ["build_settings", "setting_options"]

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
