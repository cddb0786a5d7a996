"""The ``baton`` command line: one click group; each area registers its commands here."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

from baton.cli.help_listing import SentenceGroup, write_commands
from baton.cli.log_format import LOG_OUTPUT_KEY
from baton.schemas.errors import BatonError, Interrupted

__all__ = ["main"]

#: the Python loggers our confluent-kafka clients hand librdkafka's log lines to
_LIBRDKAFKA_LOGGERS = ("baton.kafka", "baton.client.kafka")
#: clickhouse-connect's HTTP stack: it logs a WARNING per failed attempt ("Retrying ...",
#: "Unexpected Http Driver Exception") before raising what Baton turns into one error line
#: urllib3.connectionpool by name: importing clickhouse-connect sets "urllib3" back to WARNING
#: (its driver/httputil.py), after this group set it, so `baton doctor` and `baton replay`
#: against a closed port printed urllib3's "Retrying ..." line above their error
_HTTP_LOGGERS = ("urllib3", "urllib3.connectionpool", "clickhouse_connect")
#: the exit status of a command ended by Ctrl-C (128 + SIGINT, as shells report it): not 1,
#: which says an alert fires (alerts check), a policy changes decisions (replay), a row was
#: tampered with (audit verify) or the demo differed from the seed policy
INTERRUPTED_EXIT = 130


#: which module registers each command: `baton tail ...` imports the tail's module only, not
#: every command's (policy models, clickhouse-connect, the SDK, the demo: 0.77 s of CPU for
#: all of them, 0.44 s for tail's; tests/unit/test_first_hour_session10.py keeps it whole)
_MODULES = {
    "policy": "policy_cmds",
    "schema": "policy_cmds",
    "alerts": "audit_cmds",
    "sink": "audit_cmds",
    "sql": "audit_cmds",
    "trace": "audit_cmds",
    "worker": "worker_cmd",
    "up": "up",
    "down": "down_cmd",
    "kill": "kill_cmd",
    "demo": "demo_cmds",
    "keys": "keys_cmds",
    "approvals": "people_cmds",
    "approve": "people_cmds",
    "deny": "people_cmds",
    "audit": "verify_cmds",
    "top": "top",
    "doctor": "doctor",
    "send": "send_cmds",
    "tail": "tail_cmds",
    "replay": "replay_cmds",
    "runs": "runs_cmds",
}


#: `baton --help` lists the commands in the order a newcomer meets them, not alphabetically
#: (tests/unit/test_first_hour_session24.py: every command in exactly one section)
_SECTIONS = (
    ("Start here", ("demo", "up", "down", "doctor")),
    ("Send events and watch decisions", ("send", "tail", "trace", "sql", "top")),
    ("People: approvals, kill switches, keys", ("approvals", "approve", "deny", "kill", "keys")),
    ("Policy and audit", ("policy", "replay", "audit", "alerts", "schema")),
    ("Run the parts yourself (on your own Kafka and ClickHouse)", ("worker", "sink", "runs")),
)


class _BatonGroup(SentenceGroup):
    """Turns a BatonError into one readable stderr line and its exit code, never a traceback;
    loads a command's module when the command is asked for (``_MODULES``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | (set(_MODULES) if self is cli else set()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and self is cli and cmd_name in _MODULES:
            importlib.import_module(f"baton.cli.{_MODULES[cmd_name]}").register(self)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self is not cli:
            return super().format_commands(ctx, formatter)
        names = self.list_commands(ctx)
        listed = [n for _, group in _SECTIONS for n in group]
        sections = [*_SECTIONS, ("Other", tuple(n for n in names if n not in listed))]
        width = max(map(len, names))  # one column for every section
        with formatter.section("Commands"):
            for title, group in sections:
                rows = [(n.ljust(width), self.get_command(ctx, n)) for n in group if n in names]
                if any(c is not None and not c.hidden for _, c in rows):
                    with formatter.section(title):
                        write_commands(formatter, rows)
        return None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatonError as exc:
            output = ctx.meta.get(LOG_OUTPUT_KEY)  # a long-running command's --log-format
            if output is not None:
                output.say(f"baton: error: {exc}", logging.ERROR)
            else:
                click.echo(f"baton: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except click.BadParameter as exc:
            try:
                named = _from_environment(exc)
            except Exception:  # a diagnostic: its failure never hides click's own message
                named = None
            if named:  # the flag's name alone sent the user looking for a flag they never typed
                exc.message = f"{exc.message} (the value came from the environment: {named})"
            raise
        except KeyboardInterrupt as exc:
            # click's own answer is "Aborted!" and exit 1, which reads as the command's verdict
            what = exc.what if isinstance(exc, Interrupted) else "Ctrl-C"
            click.echo(f"\nbaton: interrupted ({what})", err=True)
            sys.exit(INTERRUPTED_EXIT)


def _from_environment(exc: click.BadParameter) -> str | None:
    """The variable a refused option's value was read from, None when it was not read from one
    (typed, or a default)."""
    ctx, param = exc.ctx, exc.param
    if ctx is None or not isinstance(param, click.Option) or param.name is None:
        return None
    if ctx.get_parameter_source(param.name) is not click.core.ParameterSource.ENVIRONMENT:
        return None
    names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
    if ctx.auto_envvar_prefix is not None:
        names.append(f"{ctx.auto_envvar_prefix}_{param.name.upper()}")
    return next((n for n in names if os.environ.get(n)), None)


#: every command's exit codes in `baton --help` (tests/unit/test_wording.py holds them to
#: schemas/errors.py)
EXIT_CODES = """Exit codes:

\b
  0    done (a check passed, nothing changes)
  1    the command's verdict is no (a failed check, a chain that does not
       hold, a replay that changes decisions), or an unexpected error
  2    a bad option, argument, setting or policy (the line says which)
  3    an optional package is not installed (the line names the extra)
  4    Kafka cannot be reached, or no worker answered in time
  5    ClickHouse (the audit) cannot be reached
  6    a worker refused the command and recorded why
  7    replay cannot say what a policy would change
  130  interrupted (Ctrl-C)

A command's own --help says what its codes mean there."""


@click.group(
    cls=_BatonGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES
)
@click.option("-v", "--verbose", count=True, help="more logging (-v info, -vv debug)")
@click.version_option(package_name="baton")
def cli(verbose: int) -> None:
    """Baton: central governance for multi-agent AI systems on Kafka.

    Every setting can also come from an environment variable BATON_<NAME>
    (e.g. BATON_BOOTSTRAP, BATON_POLICY, BATON_CLICKHOUSE_DSN), every option
    from BATON_<COMMAND>_<OPTION>; a BATON_ variable Baton does not read is
    warned about. docs/deploy.md "Configuration" lists them.
    """
    level = logging.WARNING - 10 * min(verbose, 2) if verbose else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # librdkafka logs every failed connection attempt (every 50 ms to 1 s while a broker is
    # down); the failure that matters reaches the user as one BrokerUnavailable line. Its
    # lines are shown from -v on.
    for name in _LIBRDKAFKA_LOGGERS:
        logging.getLogger(name).setLevel(level if verbose else logging.CRITICAL + 1)
    for name in _HTTP_LOGGERS:
        logging.getLogger(name).setLevel(level if verbose else logging.ERROR)


def _register() -> None:
    """Every command registered now (tests, and whoever walks ``cli.commands``); ``baton``
    itself loads each when it is asked for."""
    for module in dict.fromkeys(_MODULES.values()):
        importlib.import_module(f"baton.cli.{module}").register(cli)


def main() -> None:
    # before click reads a variable: `baton --help` and a command that fails to parse warn too
    if any(name.upper().startswith("BATON_") for name in os.environ):
        from baton.cli.env_check import warn_unknown

        try:
            warn_unknown(os.environ, cli)
        except Exception as exc:  # a diagnostic: its own failure never stops the command
            print(f"baton: warning: the BATON_* variables were not checked: {exc}", file=sys.stderr)
    cli(auto_envvar_prefix="BATON")


if __name__ == "__main__":
    main()
