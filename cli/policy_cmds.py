"""``baton policy check``/``publish`` and ``baton schema export``: the contract's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from baton.cli.options import build_settings, read_policy, setting_options
from baton.cli.signer import CommandRefused, describe, load_key, signer_options
from baton.schemas.errors import PolicyError
from baton.schemas.export import write_json_schemas
from baton.schemas.policy import parse_policy

__all__ = ["register"]


@click.group("policy")
def policy_group() -> None:
    """Validate and inspect governance policy files."""


@policy_group.command("check")
@click.argument("file", type=click.Path(path_type=Path))
def policy_check(file: Path) -> None:
    """Validate FILE; exit 0 when valid, 2 naming each bad key (or why FILE is not a policy
    file: missing, a directory, not UTF-8 text) otherwise."""
    policy = read_policy(file)
    limits = policy.multi_agent
    click.echo(f"{file}: ok (policy version {policy.version})")
    for key in (
        "max_agents_per_run",
        "max_handoffs",
        "max_delegation_depth",
        "shared_max_usd",
        "shared_max_tool_calls",
        "max_run_seconds",
    ):
        value = getattr(limits, key)
        click.echo(f"  {key}: {'unlimited' if value is None else value}")
    if limits.require_approval_for:
        click.echo(f"  require_approval_for: {', '.join(limits.require_approval_for)}")
    if policy.tenants:
        click.echo(f"  tenant overrides: {', '.join(sorted(policy.tenants))}")
    if limits.shadow_mode:
        click.echo("  shadow_mode: on (decisions are recorded, never enforced)")


@policy_group.command("publish")
@click.argument("file", type=click.Path(path_type=Path))
@signer_options("operator", key_required=True)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=3600),
    default=30.0,
    show_default=True,
    help="seconds to wait for a worker's record of the update",
)
@setting_options("bootstrap", "topic_prefix", "partitions")
def policy_publish(file: Path, signer: str, key_file: Path, timeout: float, **opts: Any) -> None:
    """Publish FILE to every worker (hot reload) as operator NAME, signed with the private key
    in --key (with the SHA-256 of FILE's text); wait for a worker's policy_updated record and
    print it (exit 6 when the worker refused it: unsigned, unknown operator, forged, replayed).

    FILE is checked first as `baton policy check` does (exit 2 naming each bad key): a worker
    never sees a policy it cannot load. The update survives worker restarts (the control
    topic is kept) and wins over a worker's --policy file.
    """
    read_policy(file)  # the file's checks (a regular file, size, UTF-8) and the policy's
    # the text that is hashed, signed and sent, parsed once more: the file may have changed
    text = file.read_text(encoding="utf-8")
    policy = parse_policy(text, str(file))
    from baton.streams.client_publishers import MAX_POLICY_UPDATE_BYTES

    if len(text.encode()) > MAX_POLICY_UPDATE_BYTES:
        raise PolicyError(
            [f"{len(text.encode())} bytes: at most {MAX_POLICY_UPDATE_BYTES} can be published"],
            str(file),
        )
    key = load_key(key_file)
    settings = build_settings(**opts)
    from baton.schemas.decision import Reason
    from baton.streams.client import OperatorClient
    from baton.streams.net import check_reachable

    check_reachable(settings.bootstrap, settings.connect_timeout_s)
    with OperatorClient(
        settings=settings, key=key, timeout=timeout, connect_timeout=settings.connect_timeout_s
    ) as operator:
        record = operator.publish_policy(text, operator=signer, timeout=timeout)
    assert record is not None
    click.echo(f"{file} (policy version {policy.version}): {describe(record)}")
    if record.reason != Reason.POLICY_UPDATED:
        raise CommandRefused(
            f"the worker refused this policy update ({record.reason}): {record.detail}; "
            "the workers keep their policy"
        )


@click.group("schema")
def schema_group() -> None:
    """The wire contract as JSON Schema."""


@schema_group.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def schema_export(directory: Path) -> None:
    """Write a JSON Schema file for every event, the decision record and the policy."""
    for path in write_json_schemas(directory):
        click.echo(str(path))


def register(cli: click.Group) -> None:
    cli.add_command(policy_group)
    cli.add_command(schema_group)
