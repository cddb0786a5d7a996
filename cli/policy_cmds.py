"""``baton policy check`` and ``baton schema export``: the contract-facing commands."""

from __future__ import annotations

from pathlib import Path

import click

from baton.cli.options import read_policy
from baton.schemas.export import write_json_schemas

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
