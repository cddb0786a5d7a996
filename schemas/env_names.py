"""The ``BATON_*`` variables Baton reads besides its Settings fields and click's automatic ones.

Three sources make the variables Baton reads (docs/deploy.md "Configuration"): the fields of
``schemas.settings.Settings`` (and the SDK's ``ClientSettings``), the click options
(``envvar=`` and click's automatic ``BATON_<COMMAND>_<OPTION>``), and the names below. Every
direct ``os.environ`` read of a ``BATON_*`` name, every option's ``envvar=`` and every
variable only the build or the test suite reads is named here, once: ``cli/env_check.py``
warns about a set ``BATON_*`` variable that is in none of them, and
tests/unit/test_env_check.py finds each ``BATON_*`` name of the source tree in one of them.
The pure helpers both that check and the SDK's (``streams/sdk/options.py``: an orchestrator's
mistyped ``BATON_CLIENT_*``) use are here too: a settings model's variables, the closest
known name, the warning's text, and a settings error worded by its variables
(:func:`settings_problems`, the CLI's and the SDK's alike).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pydantic_settings import BaseSettings

__all__ = [
    "BROKER_MEMORY_MAX",
    "BUILD_AND_TESTS",
    "DATA_DIR",
    "METRICS_URL",
    "OPTION_VARIABLES",
    "PREFIX",
    "READ_DIRECTLY",
    "REGISTERED",
    "REPLAY_TIMELINE",
    "RESTART_BACKOFF_S",
    "RESTART_LIMIT",
    "RESTART_WINDOW_S",
    "SECRET_FIELDS",
    "SQL_PORT",
    "WARNED",
    "closest",
    "model_variables",
    "settings_problems",
    "unknown_text",
    "warning_text",
]

#: every variable Baton reads starts so (in capitals)
PREFIX: Final = "BATON_"

#: the data dir of `baton up`, and the stack the client commands find (cli/stack_record.py)
DATA_DIR: Final = "BATON_DATA_DIR"
#: a file each process of `baton replay` appends its timeline to (processors/replay_pool.py)
REPLAY_TIMELINE: Final = "BATON_REPLAY_TIMELINE"
#: the variables a process's parent already warned about (cli/env_check.py): `baton up`'s
#: children and the demo's `baton up` inherit the environment, and say nothing twice
WARNED: Final = "BATON_WARNED_VARIABLES"

#: `baton up`'s options that name their variable (``envvar=``), and `baton top`'s
SQL_PORT: Final = "BATON_SQL_PORT"
RESTART_LIMIT: Final = "BATON_RESTART_LIMIT"
RESTART_WINDOW_S: Final = "BATON_RESTART_WINDOW_S"
RESTART_BACKOFF_S: Final = "BATON_RESTART_BACKOFF_S"
BROKER_MEMORY_MAX: Final = "BATON_BROKER_MEMORY_MAX"
METRICS_URL: Final = "BATON_METRICS_URL"

#: read by ``os.environ`` where they are used, not through Settings
READ_DIRECTLY: Final = frozenset({DATA_DIR, REPLAY_TIMELINE, WARNED})
#: the ``envvar=`` of click options (the command tree's own list, cheap to check against:
#: tests/unit/test_env_check.py walks the tree and finds each here); BATON_DATA_DIR and
#: BATON_METRICS_PORT are also read elsewhere (stack_record, Settings)
OPTION_VARIABLES: Final = frozenset(
    {
        DATA_DIR,
        SQL_PORT,
        RESTART_LIMIT,
        RESTART_WINDOW_S,
        RESTART_BACKOFF_S,
        BROKER_MEMORY_MAX,
        METRICS_URL,
    }
)
#: read by the build (setup.py: compile the replay core with mypyc) and by the test suite
#: (tests/): a shell that builds Baton or runs its tests may hold them when it runs `baton`
BUILD_AND_TESTS: Final = frozenset(
    {
        "BATON_COMPILE",
        "BATON_COMPILED_ALL",
        "BATON_FAST_EXAMPLES",
        "BATON_TEST_SLOW_RUN",
        "BATON_TEST_SLOW_S",
        "BATON_TEST_RELEASE",
    }
)
#: every name above: known without importing anything
REGISTERED: Final = READ_DIRECTLY | OPTION_VARIABLES | BUILD_AND_TESTS


def model_variables(model: type[BaseSettings]) -> frozenset[str]:
    """``<PREFIX><FIELD>`` of each field of a pydantic-settings model, or the field's own
    aliases: pydantic-settings reads an aliased field by its alias alone, unprefixed."""
    prefix = str(model.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, info in model.model_fields.items():
        aliases = _aliases(info.validation_alias) or _aliases(info.alias)
        names.update(a.upper() for a in aliases or [f"{prefix}{field_name}"])
    return frozenset(names)


def _aliases(alias: object) -> list[str]:
    """The names of a pydantic alias: a string, or AliasChoices of strings and AliasPaths
    (a path's first element is the variable)."""
    if alias is None:
        return []
    if isinstance(alias, str):
        return [alias]
    choices = getattr(alias, "choices", None)
    if choices is not None:
        return [n for c in choices for n in _aliases(c)]
    path = getattr(alias, "path", None)
    return [str(path[0])] if path else []


#: an unknown variable's name is shown up to this many characters (an environment may hold a
#: name of kilobytes: one warning line, not a screenful)
SHOWN_NAME_CHARS = 100


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known variable closest to ``name``, or None. Compared without the common
    ``BATON_``, which would make every pair look alike; click's ``BATON_<COMMAND>_HELP``
    is never the setting someone meant."""
    import difflib

    tails = {k[len(PREFIX) :]: k for k in known if k.startswith(PREFIX) and not k.endswith("_HELP")}
    # (a name in lowercase is compared in capitals: the suggestion is the spelling click reads)
    match = difflib.get_close_matches(name[len(PREFIX) :].upper(), list(tails), n=1)
    return tails[match[0]] if match else None


def unknown_text(name: str, suggestion: str | None) -> str:
    """What is said of one unknown variable (a log line's message); a name that is not
    printable is shown escaped, one longer than :data:`SHOWN_NAME_CHARS` cut."""
    cut = name[:SHOWN_NAME_CHARS]
    shown = cut if cut.isprintable() else ascii(cut)[1:-1]
    if len(name) > SHOWN_NAME_CHARS:
        shown += f"... ({len(name)} characters)"
    hint = f" (did you mean {suggestion}?)" if suggestion else ""
    return f"{shown} is not a Baton setting, ignored{hint}"


def warning_text(name: str, suggestion: str | None) -> str:
    """The stderr line a ``baton`` command prints for one unknown variable."""
    return f"baton: warning: {unknown_text(name, suggestion)}"


#: the settings whose value a message never repeats (Settings' SecretStr fields: a test holds
#: the two lists equal)
SECRET_FIELDS = frozenset({"sasl_password", "ssl_key_password", "audit_chain_key", "webhook_url"})


def settings_problems(exc: Any) -> str:
    """A settings model's pydantic ``ValidationError`` as one line a setting at a time, each
    named with its environment variable: ``client_timeout_s (BATON_CLIENT_TIMEOUT_S): Input
    should be greater than 0, got '0'`` (a credential in the value masked, never repeated
    in a bootstrap)."""
    from baton.schemas.redact import mask_credentials

    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        got = mask_credentials(repr(err.get("input")))
        if field == "bootstrap" and ("@" in got or "USER:PASSWORD" in str(err["msg"])):
            # USER:PASSWORD@HOST (or its '@' escaped, of another code point): not repeated
            got = "(not repeated: it may hold a password)"
        elif field in SECRET_FIELDS:  # (a chain key 65 bytes long was printed whole)
            got = "(not repeated: a secret)"
        elif "ed25519-private:" in got:  # a private key where a public one goes (h48b F8)
            got = "(not repeated: a private key; give its public key, `baton keys show FILE`)"
        said = str(err["msg"])
        shown = "" if ", got " in said else f", got {got}"  # (its own words name the value)
        lines.append(f"{field} (BATON_{field.upper()}): {said}{shown}")
    return "; ".join(lines)
