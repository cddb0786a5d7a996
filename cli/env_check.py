"""A warning on stderr for each set ``BATON_*`` variable that no part of Baton reads.

A mistyped variable (a tombstone retention spelt RETENTON) was silently ignored: the operator
believed a retention set and ran on the default. Each ``baton`` process now says so once, at
its start, with the closest name Baton reads (Kafka clients warn "supplied but isn't a known
config" the same way). It warns, it does not refuse: one env file is often shared by the
workers, the sink and the SDK's orchestrators, and across versions during a rolling upgrade
or a rollback; a refusal would stop an older worker for a variable only a newer one reads,
and with no worker every client fails closed.

The variables Baton reads (``known``), from four sources, each asked only while a set name
is still unexplained, cheapest first: the registry (``schemas.env_names``, no import), the
root command's automatic names, the Settings models' fields (pydantic, imported by almost
every command anyway), and the click command tree (``BATON_<COMMAND>_<OPTION>``: the named
command's module only, all of them only when a name is still unknown and a close one is
looked for). Measured (session 25, bench/RESULTS.md) after what `baton worker` imports: Settings
names only 0.2-0.3 ms; a ``BATON_CLIENT_*`` set ~90 ms (the SDK's module); an unknown name
~0.3 s, once (every command's module, for the closest name). `baton --help`: within noise.

Not guaranteed: only names spelt ``BATON_`` in capitals are checked (pydantic-settings also
reads ``baton_bootstrap``; click does not); a variable's value is never checked here, nor
printed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import TextIO

import click

from baton.schemas.env_names import (
    PREFIX,
    REGISTERED,
    WARNED,
    closest,
    model_variables,
    warning_text,
)

__all__ = [
    "PREFIX",
    "client_settings_variables",
    "closest",
    "command_variables",
    "known_variables",
    "model_variables",
    "settings_variables",
    "unknown_variables",
    "warn_unknown",
    "warning_text",
]


def settings_variables() -> frozenset[str]:
    """The variables ``Settings`` reads (every command's)."""
    from baton.schemas.settings import Settings

    return model_variables(Settings)


def client_settings_variables() -> frozenset[str]:
    """The variables the SDK's ``ClientSettings`` reads (``BATON_CLIENT_*`` besides
    Settings'): an env file an orchestrator shares with the workers holds them."""
    from baton.streams.sdk.options import ClientSettings

    return model_variables(ClientSettings)


def command_variables(command: click.Command, prefix: str) -> frozenset[str]:
    """Every variable click reads for ``command`` run under the automatic prefix ``prefix``
    (``BATON_UP_``) and for its subcommands: an option's ``envvar=`` and, since click 8.3
    also when that is unset, ``<PREFIX>_<OPTION NAME>`` (``--help`` included: click reads
    ``BATON_UP_HELP``); a subcommand's prefix adds its name (``BATON_AUDIT_VERIFY_``)."""
    ctx = click.Context(command, info_name=command.name, auto_envvar_prefix=prefix)
    names: set[str] = set()
    for param in command.get_params(ctx):
        envvar = param.envvar
        names.update([envvar] if isinstance(envvar, str) else envvar or ())
        if isinstance(param, click.Option) and param.allow_from_autoenv and param.name:
            names.add(f"{prefix}_{param.name.upper()}")
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None:
                names |= command_variables(sub, _sub_prefix(prefix, name))
    return frozenset(names)


def _sub_prefix(prefix: str, name: str) -> str:
    # click.Context: f"{parent.auto_envvar_prefix}_{info_name.upper()}", '-' made '_'
    return f"{prefix}_{name.upper()}".replace("-", "_")


def _named_commands(root: click.Group, names: Iterable[str]) -> frozenset[str]:
    """The variables of the commands whose automatic prefix starts one of ``names``
    (``BATON_UP_DATA_DIR``: `baton up`'s), importing only those commands' modules."""
    ctx = click.Context(root, info_name=root.name)
    found: set[str] = set()
    for command_name in root.list_commands(ctx):
        prefix = _sub_prefix(PREFIX.rstrip("_"), command_name)
        if any(n.startswith(f"{prefix}_") for n in names):
            command = root.get_command(ctx, command_name)
            if command is not None:
                found |= command_variables(command, prefix)
    return frozenset(found)


def known_variables(root: click.Group, names: Iterable[str]) -> tuple[set[str], set[str]]:
    """``(unknown, known)``: which of ``names`` no part of Baton reads, and the known
    variables the sources asked so far hold (all of them when one name is unknown, for
    :func:`closest`). A source is asked only while a name is unexplained."""
    unknown = set(names)
    known: set[str] = set()
    sources: list[Callable[[], Iterable[str]]] = [
        lambda: REGISTERED,
        lambda: _root_variables(root),
        settings_variables,
        client_settings_variables,
        lambda: _named_commands(root, unknown),
        lambda: command_variables(root, PREFIX.rstrip("_")),
    ]
    for source in sources:
        if not unknown:
            break
        try:
            known.update(source())
        except ImportError:  # a command's module that cannot load: `baton --help` says so
            continue
        unknown -= known
    return unknown, known


def _root_variables(root: click.Group) -> frozenset[str]:
    """The root command's own options' variables (``BATON_VERBOSE``), no subcommand's."""
    ctx = click.Context(root, info_name=root.name, auto_envvar_prefix=PREFIX.rstrip("_"))
    return frozenset(
        f"{PREFIX}{p.name.upper()}"
        for p in root.get_params(ctx)
        if isinstance(p, click.Option) and p.allow_from_autoenv and p.name
    )


def unknown_variables(
    environ: Mapping[str, str], root: click.Group
) -> list[tuple[str, str | None]]:
    """Each set ``BATON_*`` variable of ``environ`` no part of Baton reads, sorted, with
    the closest one Baton reads; those in ``BATON_WARNED_VARIABLES`` (the parent process
    said them) left out."""
    already = set(environ.get(WARNED, "").split(","))
    names = [n for n in environ if n.upper().startswith(PREFIX) and n not in already]
    if any(n != n.upper() for n in names):
        # pydantic reads a setting's variable in any case (`baton_partitions`); click reads
        # an option's in capitals only, so `baton_sql_fmt` is read by nothing
        read = settings_variables() | client_settings_variables()
        names = [n for n in names if n == n.upper() or n.upper() not in read]
    if not names:
        return []
    unknown, known = known_variables(root, names)
    return [(n, closest(n, known)) for n in sorted(unknown)]


def warn_unknown(
    environ: MutableMapping[str, str], root: click.Group, stream: TextIO | None = None
) -> list[str]:
    """Warn on ``stream`` (stderr) once per unknown variable, and record them in
    ``environ``'s ``BATON_WARNED_VARIABLES`` so that the processes this one starts (with a
    copy of its environment) do not say them again. Returns the unknown names."""
    found = unknown_variables(environ, root)
    if not found:
        return []
    out = sys.stderr if stream is None else stream
    json_lines = environ.get("BATON_LOG_FORMAT") == "json"  # a log reader parses every line
    for name, suggestion in found:
        text = warning_text(name, suggestion)
        if json_lines:
            from baton.cli.log_format import JsonFormatter

            record = logging.LogRecord("baton", logging.WARNING, "", 0, text, None, None)
            text = JsonFormatter("baton").format(record)
        print(text, file=out, flush=True)
    names = [n for n, _ in found]
    before = [n for n in environ.get(WARNED, "").split(",") if n]
    environ[WARNED] = ",".join(dict.fromkeys([*before, *names]))
    return names
