"""The children ``baton up`` supervises: their command lines, metrics ports and spawning."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from baton.cli.supervisor import (
    ChildSpec,
    Supervisor,
    WarningEcho,
    copy_lines,
    follow_lines,
    open_child_log,
)

if TYPE_CHECKING:
    from baton.schemas.settings import Settings

__all__ = [
    "SINK_DRAIN_S",
    "UP_DEFAULTS",
    "WORKER_DATA_DIR",
    "audit_children",
    "frozen_keys",
    "metrics_url_of",
    "spawner",
    "start_children",
    "with_metrics_ports",
    "without_overrides",
]


def spawner(
    env: dict[str, str], say: Callable[[str], None] | None = None
) -> Callable[[ChildSpec], subprocess.Popen[bytes]]:
    """Starts each child with its output in its log; the alerter's stdout echoed, and with
    ``say``, the WARNING and ERROR lines of a child whose spec asks (``echo_warnings``)."""
    from baton.streams.embedded import kill_when_parent_dies, orphaned_when_parent_dies

    def spawn(spec: ChildSpec) -> subprocess.Popen[bytes]:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        warnings = spec.echo_warnings and say is not None and not spec.echo
        with open_child_log(spec.log_path) as out:  # the child holds its own copy of the fd
            start = out.seek(0, 2)
            proc = subprocess.Popen(
                [sys.executable, "-m", "baton.cli", *spec.args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if spec.echo else out,
                stderr=out if spec.echo else subprocess.STDOUT,
                # the sink, stopped last, drains when the broker's guard says (baton up gone)
                preexec_fn=orphaned_when_parent_dies if spec.stop_last else kill_when_parent_dies,
                # not in up's process group: a terminal's Ctrl-C reaches up alone, which stops
                # them in order (the workers, then the sink reading to the end, the broker last)
                process_group=0,
            )
        if spec.echo:  # the alert lines: to the log and the terminal
            assert proc.stdout is not None
            target: Callable[..., None] = copy_lines
            args: tuple[object, ...] = (proc.stdout, spec.log_path, _echo_stdout)
        elif warnings:  # the child writes its log; its warnings read from there
            target = follow_lines
            echo = WarningEcho(spec.name, say)  # type: ignore[arg-type]
            args = (spec.log_path, start, echo, lambda: proc.poll() is not None)
        else:
            return proc
        copier = threading.Thread(
            target=target, args=args, name=f"baton-up-{spec.name}-output", daemon=True
        )
        copier.start()
        proc.copier = copier  # type: ignore[attr-defined]  # joined when it exits
        return proc

    return spawn


def _echo_stdout(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


def with_metrics_ports(
    children: list[tuple[str, tuple[str, ...]]], worker_port: int | None
) -> tuple[list[tuple[str, tuple[str, ...]]], str | None]:
    """Each child with its own /metrics port (the worker's ``worker_port``, 0 = a free one;
    the others free ones), and the worker's URL; None: no metrics anywhere. A restarted
    child keeps its port: the old process is gone by then."""
    from baton.streams.net import free_port

    if worker_port is None:
        return [(name, (*args, "--metrics-port", "off")) for name, args in children], None
    given: list[tuple[str, tuple[str, ...]]] = []
    url = None
    for name, args in children:
        port = worker_port if name == "worker" and worker_port else free_port()
        if name == "worker":
            url = f"http://127.0.0.1:{port}/metrics"
        given.append((name, (*args, "--metrics-port", str(port))))
    return given, url


def metrics_url_of(children: list[tuple[str, tuple[str, ...]]], name: str) -> str | None:
    """The /metrics URL ``with_metrics_ports`` gave the child ``name`` (None: none, or off)."""
    for child, args in children:
        if child == name and "--metrics-port" in args:
            port = args[args.index("--metrics-port") + 1]
            return None if port == "off" else f"http://127.0.0.1:{port}/metrics"
    return None


#: ``baton up``'s own defaults (its flag or BATON_ variable still wins): a 6 s session, not a
#: worker's 10 s. Tansu answers a group's JoinGroup after half the session timeout, and every
#: start of the stack joins three groups (worker, sink, alerter): ready ~2 s sooner (session
#: 37, 5.8 s against 7.8 s), a killed worker's partitions back 4 s sooner. 6 s is Kafka's own
#: floor (group.min.session.timeout.ms), which the tests' stacks have used all along.
UP_DEFAULTS = {"session_timeout_s": 6.0}
#: in DATA_DIR: the workers' data directory (BATON_WORKER_DATA_DIR), where a restart leaves
#: the kill switches they must hold (processors.held_kills)
WORKER_DATA_DIR = "worker"
#: how long a stopping sink may read what the stopped workers published: the embedded broker
#: forgets it when it stops (a stop at 3,000 decisions/s left 294-425 out of the audit: s. 35);
#: one started again at the stop (it was down) joins its group first (~half a session timeout)
SINK_DRAIN_S = 20.0


def audit_children(
    sql_port: int | None, app_id: str, alerts_dir: Path | None = None
) -> list[tuple[str, tuple[str, ...]]]:
    """The sink (which also serves SQL over chDB, unless ``sql_port`` is None; stopped last,
    it reads the decisions to their end first) and the alerter, in a consumer group of its
    own: a `baton alerts` started next to it (group APP_ID-alerts) sees every stop too. The
    alerter keeps the stops it announced in ``alerts_dir`` (DATA_DIR/alerts): a copy of one
    written to gov.stops again after a restart is not announced again (h44b F1)."""
    port = "off" if sql_port is None else str(sql_port)
    alerts: tuple[str, ...] = ("alerts", "--group", f"{app_id}-up-alerts")
    if alerts_dir is not None:
        alerts += ("--state-dir", str(alerts_dir))
    sink = ("sink", "--sql-port", port, "--drain-s", f"{SINK_DRAIN_S:g}")
    return [("sink", sink), ("alerts", alerts)]


def start_children(
    supervisor: Supervisor, children: list[tuple[str, tuple[str, ...]]], logs: Path
) -> None:
    """Start ``children``, each logging into ``logs``: the alerter's alert lines on the
    terminal, the others' warnings; the sink stopped last (:func:`stop_children`)."""
    for name, args in children:
        echo = name == "alerts"
        spec = ChildSpec(name, args, logs / f"{name}.log", echo, not echo, name == "sink")
        supervisor.start(spec)


#: a child command's options that pick another stack's settings (`--data-dir`: its record's
#: bootstrap beat the BATON_BOOTSTRAP baton up gives the alerter, session 39)
_STACK_OPTIONS = frozenset({"DATA_DIR"})


def frozen_keys(env: dict[str, str], settings: Settings) -> dict[str, str]:
    """``env`` with the chain key this start read from BATON_AUDIT_CHAIN_KEY_FILE given as
    BATON_AUDIT_CHAIN_KEY instead: a restarted child keeps the key the stack started with
    and stack.json names (one that read the file again after it changed split the stack:
    its decisions forged to the sink, its runs' states refused; h48a F1); and without
    BATON_DECISION_KEYS_FILE, which the stack's own public key (BATON_DECISION_KEYS, given)
    replaces (a child given both refused to start; h48b F6)."""
    key = settings.audit_chain_key
    dropped = {"BATON_DECISION_KEYS_FILE"}
    if settings.audit_chain_key_file is not None and key is not None:
        dropped.add("BATON_AUDIT_CHAIN_KEY_FILE")
    kept = {k: v for k, v in env.items() if k.upper() not in dropped}
    if "BATON_AUDIT_CHAIN_KEY_FILE" in dropped and key is not None:
        kept["BATON_AUDIT_CHAIN_KEY"] = key.get_secret_value()
    return kept


def without_overrides(
    given: dict[str, str],
    children: list[tuple[str, tuple[str, ...]]],
    say: Callable[[str], None],
) -> dict[str, str]:
    """The environment of the stack's children: this process's, with what `baton up` gives
    them (``given``), and without each variable a child's own command would read instead of
    one of those (``BATON_WORKER_POLICY`` beats ``BATON_POLICY`` for `baton worker`: a
    leftover one in the shell ran the worker under a looser policy than `--policy`, while the
    start named the strict one; session 39). Each one dropped is said."""
    import os

    import click

    env = {**os.environ, **given}
    root = click.get_current_context().find_root().command
    if not isinstance(root, click.Group):
        return env
    ctx = click.Context(root, info_name=root.name)
    dropped: set[str] = set()
    for command_name in {args[0] for _, args in children}:
        command = root.get_command(ctx, command_name)
        if command is None:
            continue
        prefix = f"BATON_{command_name.upper()}".replace("-", "_")
        sub = click.Context(command, info_name=command_name, auto_envvar_prefix=prefix)
        for param in command.get_params(sub):
            option = (param.name or "").upper()
            if not isinstance(param, click.Option):
                continue
            if f"BATON_{option}" not in given and option not in _STACK_OPTIONS:
                continue
            own = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
            for name in [f"{prefix}_{option}", *own]:
                if name not in given and name in env:
                    dropped.add(name)
                    del env[name]
    # the settings read variable names in any case: baton_policy beat the BATON_POLICY given
    for name in [n for n in env if n.upper() in given and n not in given]:
        dropped.add(name)
        del env[name]
    if dropped:
        say(
            f"WARNING: not passed to the stack's children: {', '.join(sorted(dropped))} (a "
            "child's own option variable would override what baton up gives it: use baton "
            "up's options or the BATON_ settings it passes on)"
        )
    return env
