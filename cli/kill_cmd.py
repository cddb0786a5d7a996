"""``baton kill``: publish a signed kill switch or its release; wait for a worker to apply it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from baton.cli.options import FiniteFloatRange, setting_options
from baton.cli.signer import (
    CommandRefused,
    current_user,
    describe,
    load_key,
    shown,
    signer_options,
)
from baton.cli.stack_record import data_dir_option, stack_settings
from baton.cli.waiting import with_progress
from baton.schemas.decision import Reason

__all__ = ["kill_cmd", "register"]


@click.command("kill")
@click.option("--run", "run_id", help="stop every handoff of this run")
@click.option("--tenant", help="stop every handoff of this tenant")
@click.option("--global", "everything", is_flag=True, help="stop every handoff of every run")
@click.option("--release", is_flag=True, help="lift the kill switch instead")
@click.option("--reason", default="", help="why (recorded in the audit)")
@signer_options("operator", key_required=False, as_default=current_user)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="wait until a worker has applied it (its control record is on gov.decisions)",
)
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0, min_open=True, max=3600),
    default=30.0,
    show_default=True,
    help="seconds to wait for a worker to apply it (exit 4 when none did)",
)
@setting_options("bootstrap", "topic_prefix", "partitions", "decision_keys")
@data_dir_option
def kill_cmd(
    run_id: str | None,
    tenant: str | None,
    everything: bool,
    release: bool,
    reason: str,
    signer: str,
    key_file: Path | None,
    wait: bool,
    timeout: float,
    data_dir: Path | None,
    **opts: Any,
) -> None:
    """Publish a kill switch (or its release) for a run, a tenant, or everything, signed as
    operator NAME with --key FILE (required when the policy lists operators).

    By default it returns once a worker has applied the switch, so every handoff decided
    afterwards is decided under it; exit 4 when Kafka or no worker answers in time, 6 when
    the worker refused it (unsigned, forged, replayed: the reason is printed).
    """
    if len([x for x in (run_id, tenant, everything or None) if x]) != 1:
        raise click.UsageError("give exactly one of --run RUN_ID, --tenant T, --global")
    _check_command(run_id, tenant, signer, reason)
    key = load_key(key_file)
    settings = stack_settings(opts, data_dir)
    from baton.streams.net import check_reachable
    from baton.streams.sdk import OperatorClient

    check_reachable(settings.bootstrap, settings.connect_timeout_s)

    client = OperatorClient(
        settings=settings, key=key, timeout=timeout, connect_timeout=settings.connect_timeout_s
    )
    try:
        switch = client.release if release else client.kill
        record = with_progress(
            lambda: switch(
                run_id=run_id,
                tenant=tenant,
                everything=everything,
                operator=signer,
                reason=reason,
                wait=wait,
            ),
            "a worker to apply it",
            timeout,
        )
    finally:
        client.close()
    scope = "run" if run_id else "tenant" if tenant else "global"
    target = shown(run_id or tenant or "*")
    what = "released" if release else "engaged"
    if record is not None and record.reason not in (
        Reason.KILL_SWITCH,
        Reason.KILL_SWITCH_RELEASED,
    ):
        click.echo(f"kill switch NOT {what}: scope={scope} target={target}: {describe(record)}")
        raise CommandRefused(
            f"the worker refused this {'release' if release else 'kill'} ({record.reason}): "
            f"{shown(record.detail)}"
        )
    if record is None:  # --no-wait: Kafka has it; whether a worker applies it is unknown
        click.echo(
            f"kill switch{' release' if release else ''} published, not confirmed "
            f"(--no-wait): scope={scope} target={target}"
        )
        return
    click.echo(
        f"kill switch {what}: scope={scope} target={target} "
        f"(applied by worker {shown(record.worker)})"
    )


#: the option a field of the kill switch event comes from
_OPTION_OF = {"run_id": "--run", "tenant": "--tenant", "operator": "--as", "reason": "--reason"}


def _check_command(run_id: str | None, tenant: str | None, operator: str, reason: str) -> None:
    """The event this command will publish, checked before connecting: a value the events'
    bounds refuse (a 300-character run id, a tenant with a newline) is a usage error naming
    its option, never a traceback from the SDK."""
    from datetime import UTC, datetime

    from pydantic import ValidationError

    from baton.schemas.events import KillSwitch

    scope = "run" if run_id is not None else "tenant" if tenant is not None else "global"
    fields = {"run_id": run_id, "tenant": tenant, "operator": operator, "reason": reason}
    try:
        KillSwitch(scope=scope, **fields, event_time=datetime.now(UTC))
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        value = fields.get(name) or ""
        cut = f"{shown(value[:60])}{'…' if len(value) > 60 else ''}"
        if error["type"] == "string_too_long":  # pydantic's message omits the value
            problem = f"at most {error['ctx']['max_length']} characters, got {len(value)}: {cut}"
        else:
            problem = f"{error['msg']} ({len(value)} characters)"
        hint = _OPTION_OF.get(name, "--run/--tenant")
        raise click.BadParameter(problem, param_hint=hint) from None


def register(cli: click.Group) -> None:
    cli.add_command(kill_cmd)
