"""``baton policy check``/``publish`` and ``baton schema export``: the contract's commands."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from baton.cli.help_listing import SentenceGroup
from baton.cli.options import FiniteFloatRange, read_policy, read_policy_text, setting_options
from baton.cli.signer import CommandRefused, describe, load_key, shown, signer_options
from baton.cli.stack_record import data_dir_option, stack_settings, uses_stack
from baton.schemas.errors import ConfigError, PolicyError
from baton.schemas.export import write_json_schemas
from baton.schemas.policy import Policy, parse_policy
from baton.schemas.policy_seed import seed_mapping
from baton.schemas.settings import Settings

__all__ = ["policy_in_force", "register"]

#: librdkafka's lines go to Python logging (quiet unless -v), not raw to stderr
_KAFKA_LOG = logging.getLogger("baton.kafka")


@click.group("policy", cls=SentenceGroup)
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
    for key in ("max_steps", "max_bounces", "reservation_ttl_seconds"):  # shown when set
        if getattr(limits, key) is not None:
            click.echo(f"  {key}: {getattr(limits, key)}")
    if limits.require_approval_for:
        click.echo(f"  require_approval_for: {', '.join(limits.require_approval_for)}")
    for seed_key, path, _ in seed_mapping(policy):
        click.echo(f"  {seed_key} -> multi_agent.{'.'.join(path)}")
    from baton.cli.policy_notes import policy_warnings, tenant_lines
    from baton.cli.policy_security import signing_lines

    for line in tenant_lines(policy):
        click.echo(f"  {line}")
    if limits.require_lineage:
        click.echo("  require_lineage: on (a handoff names a parent task its giver owns)")
    if limits.shadow_mode:
        click.echo("  shadow_mode: on (decisions are recorded, never enforced)")
    for line in signing_lines(policy):
        click.echo(f"  {line}")
    for warning in policy_warnings(policy):
        click.echo(f"  warning: {warning}")


@policy_group.command("publish")
@click.argument("file", type=click.Path(path_type=Path))
@signer_options("operator", key_required=True)
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0.1, max=3600),
    default=30.0,
    show_default=True,
    help="seconds to wait for a worker's record of the update",
)
@click.option(
    "--allow-unsigned",
    is_flag=True,
    help="publish although FILE drops every operator, or a scope's approval.keys, of the "
    "policy in force: from then on kill switches, releases and policy updates (or grants) "
    "count unsigned. Without it such a publish is refused (exit 2)",
)
@setting_options("bootstrap", "topic_prefix", "partitions", "policy", "decision_keys")
@data_dir_option
def policy_publish(
    file: Path,
    signer: str,
    key_file: Path,
    timeout: float,
    allow_unsigned: bool,
    data_dir: Path | None,
    **opts: Any,
) -> None:
    """Publish FILE to every worker (hot reload) as operator NAME, signed with the private key
    in --key (with the SHA-256 of FILE's text); wait for a worker's policy_updated record and
    print it (exit 6 when the worker refused it: unsigned, unknown operator, forged, replayed).

    FILE is checked first as `baton policy check` does (exit 2 naming each bad key): a worker
    never sees a policy it cannot load. The update survives worker restarts (the control
    topic is kept) and wins over a worker's --policy file.
    """
    # read once, after the file's checks (a regular file, size, UTF-8): the text parsed is
    # the text hashed, signed and sent (a second read met whatever was swapped in meanwhile)
    text = read_policy_text(file)
    policy = parse_policy(text, str(file), file=True)
    from baton.streams.sdk.operators import policy_update_problem

    problem = policy_update_problem(text, signer)
    if problem is not None:
        raise PolicyError([problem], str(file))
    from baton.cli.policy_notes import signer_not_an_operator

    lockout = signer_not_an_operator(policy, signer)
    if lockout is not None:
        click.echo(f"baton: warning: {lockout}", err=True)
    key = load_key(key_file)
    settings = stack_settings(opts, data_dir)
    from baton.schemas.decision import Reason
    from baton.streams.net import check_reachable
    from baton.streams.sdk import OperatorClient

    check_reachable(settings.bootstrap, settings.connect_timeout_s)
    # the workers' --policy file is known: given (--policy, BATON_POLICY), or the stack's (a
    # check of BATON_BOOTSTRAP alone passed BATON_bootstrap, which the settings read: H3 s. 34)
    known = settings.policy is not None or uses_stack("bootstrap", opts, data_dir)
    _say_security_changes(settings, policy, timeout, allow_unsigned, known)
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


def _say_security_changes(
    settings: Settings, policy: Policy, timeout: float, allow_unsigned: bool, known: bool
) -> None:
    """Against the policy in force: say what ``policy`` changes about signing and enforcement;
    refuse, before anything is sent, one that turns signing off unless ``allow_unsigned``.
    The policy in force is what the workers last recorded (``policy_workers``) and what
    `policy current` computes (the --policy file, else the seed, and the control topic);
    when the two differ, a drop against either is refused. ``known``: the workers' --policy
    file is known (given, or the `baton up` stack's); else a policy without operators is
    refused too."""
    from baton.cli.policy_security import security_changes, signing_dropped
    from baton.cli.policy_workers import workers_policy

    source = str(settings.policy) if settings.policy else "the seed policy"
    computed, _ = policy_in_force(settings, read_policy(settings.policy), source, timeout, _quiet)
    recorded = workers_policy(settings, timeout)
    befores = [computed]
    if recorded is not None and recorded.policy.version != computed.version:
        click.echo(
            f"baton: the workers recorded policy {recorded.policy.version} in force "
            f"({recorded.describe()}), not {computed.version} ({source} and the control "
            "topic): the changes below are against the workers', a drop of signing against "
            "either is refused",
            err=True,
        )
        befores.insert(0, recorded.policy)
    for line in security_changes(befores[0], policy):
        click.echo(f"baton: security change: {line}", err=True)
    if not policy.operators:
        click.echo(
            "baton: warning: this policy lists no operators: once applied, kill switches, "
            "releases and policy updates are taken unsigned from any writer of gov.control",
            err=True,
        )
    dropped = list(dict.fromkeys(d for before in befores for d in signing_dropped(before, policy)))
    if not known and not policy.operators:
        # a worker's record cannot vouch for the file: anyone who may write gov.decisions can
        # write one, and a forged copy of the seed's let a drop through (H2, session 34)
        dropped.append(
            "operators: unknown (addressed by --bootstrap with no --policy: the workers' "
            "--policy file may list operators, and a policy_in_force record on gov.decisions "
            "is no proof it does not) -> none"
        )
    if dropped and not allow_unsigned:
        raise ConfigError(
            f"refused: this policy turns signing off against the policy in force (version "
            f"{shown(befores[0].version)}): {'; '.join(dropped)}. Nothing was published. Add "
            "the block back (or pass --policy with the workers' file), or pass "
            "--allow-unsigned if that is what you mean"
        )


def _quiet(_line: str) -> None:
    """Lines of `policy current` not wanted here."""


@policy_group.command("current")
@setting_options("bootstrap", "topic_prefix", "policy")
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0, min_open=True, max=3600),
    default=15.0,
    show_default=True,
    help="seconds to read the control topic to its end before giving up (exit 4)",
)
@data_dir_option
def policy_current(timeout: float, data_dir: Path | None, **opts: Any) -> None:
    """Which policy the workers use, and why: the --policy file (BATON_POLICY, or the seed
    policy), replaced by every policy update on the control topic that the policy in force at
    the time accepts (signed by one of its operators, when it lists any). Prints each update
    applied or refused with its reason, then the policy in force and where it came from.
    Read from the control topic's start to its end, as every worker does when it starts."""
    from baton.streams.net import check_reachable

    settings = stack_settings(opts, data_dir)  # the stack's --policy file unless given
    policy = read_policy(settings.policy)
    source = str(settings.policy) if settings.policy else "the seed policy"
    check_reachable(settings.bootstrap, settings.connect_timeout_s)
    policy, source = policy_in_force(settings, policy, source, timeout, click.echo)
    label = f" ({shown(policy.label)})" if policy.label else ""
    click.echo(f"policy in force: {policy.version}{label}, from {source}")


def policy_in_force(
    settings: Settings, policy: Policy, source: str, timeout: float, say: Callable[[str], None]
) -> tuple[Policy, str]:
    """The policy the workers use and where it came from: ``policy`` (from ``source``)
    replaced by every update on the control topic that the policy in force at the time
    accepts; ``say`` gets one line per update (applied, refused, not a policy).
    Raises ``BrokerUnavailable`` when the topic is missing or not read to its end in time."""
    from datetime import UTC, datetime

    from confluent_kafka import (
        OFFSET_BEGINNING,
        Consumer,
        KafkaError,
        KafkaException,
        TopicPartition,
    )

    from baton.processors.engine import apply_policy_update
    from baton.schemas.errors import BrokerUnavailable
    from baton.schemas.events import EventError, PolicyUpdated, parse_control_event
    from baton.streams.kafka import consumer_config, kafka_said
    from baton.streams.topics import TopicCatalog

    topic = TopicCatalog(prefix=settings.topic_prefix).control
    from baton.processors.control import MAX_RECEIVE_BYTES

    # as the workers' follower: a fetch answer past 100 MB (one huge record) is still read,
    # and so is every record after a transaction a writer left open
    extra = {
        "logger": _KAFKA_LOG,
        "receive.message.max.bytes": MAX_RECEIVE_BYTES,
        "isolation.level": "read_uncommitted",
        # read to the end a fetch reports: Tansu's ListOffsets answers the first offset of the
        # partition's last record batch + 1, short of a restore's re-issued commands (H1,
        # session 27: the seed named in force while the workers used the published policy)
        "enable.partition.eof": True,
    }
    consumer = Consumer(consumer_config(settings.kafka_config(), "baton-policy-current", extra))
    signed_at: float | None = None
    try:
        try:  # a port that accepts and speaks no Kafka: librdkafka's _TRANSPORT was a traceback
            meta = consumer.list_topics(topic, timeout=settings.connect_timeout_s)
            if topic not in meta.topics or meta.topics[topic].error is not None:
                raise BrokerUnavailable(f"no control topic {topic} at {settings.bootstrap}")
            parts = sorted(meta.topics[topic].partitions)
            ends = {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in parts
            }
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"cannot read {topic} from Kafka at {settings.bootstrap} "
                f"({kafka_said(exc)}); is it a Kafka broker, and running?"
            ) from None
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        deadline = datetime.now(UTC).timestamp() + timeout
        at_end: set[int] = set()  # partitions a fetch said are read to their end
        while datetime.now(UTC).timestamp() < deadline:
            if at_end.issuperset(parts):
                break
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                # at the end a fetch reports, never short of the one ListOffsets gave
                eof = msg.error().code() == KafkaError._PARTITION_EOF
                if eof and msg.offset() >= ends.get(msg.partition(), 0):
                    at_end.add(msg.partition())
                continue
            try:
                event = parse_control_event(msg.value() or b"")
            except EventError:
                continue
            if not isinstance(event, PolicyUpdated):
                continue
            where = f"{topic}[{msg.partition()}]@{msg.offset()}"
            # a policy's own keys, values and label (in its error, its record's detail) are
            # whatever a writer of the control topic put there: escaped, never sent raw to
            # the terminal (an ESC sequence rewrote the line naming the policy in force)
            step = apply_policy_update(policy, signed_at, event, datetime.now(UTC))
            when = event.event_time.isoformat()
            if step.record is None:
                say(f"not a policy   {where} {when} by {event.operator}: {shown(step.error)}")
            elif not step.applied:
                say(
                    f"refused        {where} {when} by {event.operator}: "
                    f"{step.record.reason} ({shown(step.record.detail)})"
                )
            else:
                say(
                    f"applied        {where} {when} by {event.operator}: "
                    f"{policy.version} -> {step.policy.version}"
                )
                source = f"the policy update at {where} by {event.operator}"
            policy, signed_at = step.policy, step.signed_at
        else:
            raise BrokerUnavailable(
                f"could not read the control topic {topic} at {settings.bootstrap} to its end "
                f"within {timeout:g} s"
            )
    finally:
        consumer.close()
    return policy, source


@click.group("schema", cls=SentenceGroup)
def schema_group() -> None:
    """The wire contract as JSON Schema."""


@schema_group.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def schema_export(directory: Path) -> None:
    """Write a JSON Schema file for every event, the decision record and the policy."""
    try:
        written = write_json_schemas(directory)
    except OSError as exc:  # a read-only place, a missing parent on /proc, a file in the way
        said = exc.strerror or str(exc)
        if exc.filename and Path(exc.filename) != directory:  # one file of it
            said = f"{exc.filename}: {said}"
        raise ConfigError(
            f"cannot write the JSON Schemas into {directory}: {said}; expected a directory "
            "you may create and write"
        ) from None
    for path in written:
        click.echo(str(path))


def register(cli: click.Group) -> None:
    cli.add_command(policy_group)
    cli.add_command(schema_group)
