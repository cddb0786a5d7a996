"""The one exception tree of Baton: every error a user can meet, with a message that says why.

    BatonError
    ├── PolicyError          a policy file or value is wrong (names key path, value, expectation)
    ├── ConfigError          a setting is wrong (names the setting and the environment variable)
    ├── BadArgument          an argument names nothing the command can act on (an unknown run)
    ├── MissingExtra         an optional dependency is not installed (names the pip extra)
    ├── BrokerUnavailable    Kafka cannot be reached (names the bootstrap address)
    ├── TopicMismatch        an existing topic disagrees with the catalog (names topic and counts)
    ├── AuditUnavailable     ClickHouse cannot be reached or refused a query (names the target)
    ├── CommandRefused       the worker refused a person's answer or command and recorded why
    ├── ReplayFailed         `baton replay` cannot answer: history not replayable or not exact
    └── ChildFailed          a process `baton up` runs kept failing (exit code from its own)

Bad *events* are not exceptions: they become dead-letter records (see baton.schemas.events).
``encodable`` makes the text an error or a dead letter carries safe to write as UTF-8.
"""

from __future__ import annotations

__all__ = [
    "AuditUnavailable",
    "BadArgument",
    "BatonError",
    "BrokerUnavailable",
    "ChildFailed",
    "CommandRefused",
    "ConfigError",
    "Interrupted",
    "MissingExtra",
    "PolicyError",
    "ReplayFailed",
    "TopicMismatch",
    "encodable",
]


class BatonError(Exception):
    """Root of every error Baton raises on purpose; the CLI prints it and exits non-zero."""

    exit_code = 1


class PolicyError(BatonError):
    """A policy document is invalid; ``problems`` holds one line per bad key."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "policy") -> None:
        self.problems = problems
        self.source = source
        super().__init__(
            f"{source}: " + "; ".join(problems)
            if len(problems) == 1
            else f"{source}: {len(problems)} problems:\n  " + "\n  ".join(problems)
        )


class ConfigError(BatonError):
    exit_code = 2


class BadArgument(BatonError):
    """An argument names nothing the command can act on: a run or approval the audit does not
    hold, an approval answered already or expired. Bad input, exit 2: exit 1 is a command's
    verdict (``baton audit verify`` exits 1 on tampering, not on a mistyped run id)."""

    exit_code = 2


class MissingExtra(BatonError):
    exit_code = 3

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{module}' package, which is not installed; "
            f"install it with: pip install 'baton[{extra}]'"
        )


class BrokerUnavailable(BatonError):
    exit_code = 4


class TopicMismatch(BatonError):
    exit_code = 4


class AuditUnavailable(BatonError):
    exit_code = 5


class CommandRefused(BatonError):
    """The worker refused the answer or command and recorded why (the message says it)."""

    exit_code = 6


class ReplayFailed(BatonError):
    """`baton replay` cannot say what a policy would change: nothing in scope could be
    replayed from its start, or the recorded policy did not reproduce the audit."""

    exit_code = 7


class ChildFailed(BatonError):
    """A child of ``baton up`` kept failing; ``exit_code`` is derived from its own exit."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(KeyboardInterrupt):
    """A command stopped by a signal before it was done (exit 130, as Ctrl-C); ``what`` names
    it: a SIGTERM before ``baton up`` was ready read "interrupted (Ctrl-C)" (session 35)."""

    def __init__(self, what: str = "Ctrl-C") -> None:
        super().__init__(what)
        self.what = what


def encodable(text: str) -> str:
    """``text`` as UTF-8 can hold it (a stream, JSON, Kafka): lone surrogates shown as
    ``\\udXXX`` escapes, any other text as it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return str(text)
