"""The Kafka checks of ``baton doctor``: topics as the catalog wants them, the workers'
group (and no other reading the events), and how far the workers and the audit sink are behind.

They list, describe and read, and never create a topic (a topic asked for by name is
auto-created on Tansu and on Kafka with ``auto.create.topics.enable``, so topics are only
ever listed all at once) or commit an offset. One exception: where the broker lists no
consumer-group members (Tansu), the workers check sends a readiness probe (a
``run_finished`` of a ``__probe_`` run, tenant ``__baton__``) and waits for its decision.

The lags are measured in ``doctor_lag``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from baton.cli.doctor_checks import Check, Status, fail, gist, ok
from baton.cli.doctor_lag import lag_check
from baton.schemas.errors import BatonError
from baton.schemas.settings import Settings
from baton.streams.topics import TopicCatalog, TopicSpec, changelog_topic

log = logging.getLogger("baton.doctor")


__all__ = [
    "KafkaView",
    "group_checks",
    "other_groups_check",
    "topic_checks",
]

#: Faust creates changelogs compacted: the latest state of each run is all a restart needs
_CHANGELOG_CONFIG = {"cleanup.policy": "compact"}


@dataclass
class KafkaView:
    """What the broker said once: topics with partition/replica counts, and their configs."""

    partitions: dict[str, int]
    replicas: dict[str, int]
    configs: dict[str, dict[str, str]]
    #: this doctor sent a readiness probe (Tansu): its event and decision count as lag 1
    #: until the worker's and the sink's next commits
    probed: bool = False

    @classmethod
    def read(cls, admin: Any, names: list[str], timeout: float) -> KafkaView:
        """List every topic (never one by name: that may create it) and describe ``names``."""
        from confluent_kafka.admin import ConfigResource, ResourceType

        metadata = admin.list_topics(timeout=timeout)
        partitions = {n: len(t.partitions) for n, t in metadata.topics.items() if t.error is None}
        replicas = {
            n: min((len(p.replicas) for p in t.partitions.values()), default=0)
            for n, t in metadata.topics.items()
            if t.error is None
        }
        present = [n for n in names if n in partitions]
        configs: dict[str, dict[str, str]] = {}
        if present:
            futures = admin.describe_configs(
                [ConfigResource(ResourceType.TOPIC, n) for n in present], request_timeout=timeout
            )
            for resource, future in futures.items():
                try:
                    entries = future.result(timeout=timeout)
                except Exception:  # a broker without DescribeConfigs: counts are still checked
                    continue
                configs[resource.name] = {k: str(v.value) for k, v in entries.items()}
        return cls(partitions, replicas, configs)


def _expected(catalog: TopicCatalog, app_id: str, partitions: int) -> list[TopicSpec]:
    changelog = TopicSpec(
        changelog_topic(app_id),
        partitions,
        catalog.replication,
        _CHANGELOG_CONFIG,
        "a run's state lives in the changelog partition of its requests partition",
    )
    return [*catalog.specs(), changelog]


def topic_checks(view: KafkaView, settings: Settings) -> list[Check]:
    """Every topic of the catalog and the worker's changelog: present, partitions, replicas,
    cleanup and retention as ``streams/topics.py`` creates them."""
    catalog = TopicCatalog.from_settings(settings)
    agreed = _agreed_count(view, catalog)
    checks = []
    for spec in _expected(catalog, settings.app_id, settings.partitions):
        checks.append(_topic_check(view, spec, settings, agreed))
    return checks


def _agreed_count(view: KafkaView, catalog: TopicCatalog) -> int | None:
    """The one partition count the existing run-keyed topics share, if they share one."""
    run_keyed = [catalog.requests, catalog.approvals, catalog.decisions, catalog.stops]
    counts = {view.partitions[n] for n in run_keyed if n in view.partitions}
    return counts.pop() if len(counts) == 1 else None


def _topic_check(view: KafkaView, spec: TopicSpec, settings: Settings, agreed: int | None) -> Check:
    name = f"topic {spec.name}"
    if spec.name not in view.partitions:
        return fail(name, "missing", _create_hint(spec, settings))
    count, problems = view.partitions[spec.name], []
    if spec.partitions_reason is not None and count != spec.partitions:
        problems.append(f"{count} partitions, expected {spec.partitions}")
    if view.replicas.get(spec.name, 0) < spec.replication:
        problems.append(f"{view.replicas.get(spec.name, 0)} replicas, expected {spec.replication}")
    configs = view.configs.get(spec.name)
    for key, want in spec.config.items():
        have = None if configs is None else configs.get(key)
        if configs is not None and have != want:
            problems.append(f"{key}={have}, expected {want}")
    if problems:
        return fail(name, "; ".join(problems), _topic_fix(spec, count, agreed, problems))
    shown = ", ".join(f"{k}={v}" for k, v in spec.config.items() if k != "min.insync.replicas")
    unread = "" if configs is not None else " (the broker did not describe its configs)"
    return ok(name, f"{count} partitions, {shown}{unread}")


def _create_hint(spec: TopicSpec, settings: Settings) -> str:
    if spec.name == changelog_topic(settings.app_id):
        return (
            f"the first `baton worker` of BATON_APP_ID={settings.app_id} creates it; is one "
            "running against this broker with this app id?"
        )
    configs = " ".join(f"--config {k}={v}" for k, v in spec.config.items())
    return (
        f"`baton worker` creates missing topics at start, or: kafka-topics.sh --create --topic "
        f"{spec.name} --partitions {spec.partitions} --replication-factor {spec.replication} "
        f"{configs}"
    )


def _topic_fix(spec: TopicSpec, count: int, agreed: int | None, problems: list[str]) -> str:
    if any("partitions" in p for p in problems):
        if agreed is not None and agreed == count and agreed != spec.partitions:
            return (
                f"the existing run-keyed topics agree on {agreed} partitions: set "
                f"BATON_PARTITIONS={agreed} (or --partitions) to match them"
            )
        return (
            f"partition counts cannot be changed in place ({spec.partitions_reason}): recreate "
            "the topics, or use another BATON_TOPIC_PREFIX"
        )
    wrong = " ".join(f"{k}={v}" for k, v in spec.config.items())
    return (
        f"kafka-configs.sh --alter --entity-type topics --entity-name {spec.name} "
        f"--add-config {wrong.replace(' ', ',')}"
    )


def group_checks(
    admin: Any, consumer: Any, settings: Settings, view: KafkaView, max_lag: int, timeout: float
) -> list[Check]:
    """The workers' consumer group (BATON_APP_ID): someone is in it, how far behind, and no
    other group reads the events."""
    return [
        _members_check(admin, settings, view, timeout),
        lag_check(admin, consumer, settings, view, max_lag, timeout),
        other_groups_check(admin, settings, view, timeout),
    ]


#: at most this many consumer groups are asked for their offsets (a shared cluster can hold
#: thousands; the ones past it are named as not checked)
MAX_GROUPS_ASKED = 200


def _not_allowed(exc: Exception) -> bool:
    """``exc`` is the broker refusing this principal (an ACL), not a failure to answer."""
    from confluent_kafka import KafkaError

    error = exc.args[0] if exc.args else None
    code = error.code() if isinstance(error, KafkaError) else None
    return code in (
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
    )


def other_groups_check(admin: Any, settings: Settings, view: KafkaView, timeout: float) -> Check:
    """Any consumer group but BATON_APP_ID with offsets on the requests topic: a second fleet
    (another app id: a rename, a staging fleet on this cluster) deciding the same events from
    run states of its own, whose allow an SDK client takes as readily as this fleet's stop."""
    from urllib.parse import unquote

    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    requests = TopicCatalog.from_settings(settings).requests
    name = f"other groups on {requests}"
    if requests not in view.partitions:
        return fail(name, f"no {requests} to check", "see the topic lines above")
    try:
        listed = admin.list_consumer_groups(request_timeout=timeout).result(timeout=timeout)
    except Exception as exc:
        if _not_allowed(exc):  # listing groups needs Describe on the cluster: often not granted
            return Check(
                name,
                Status.SKIP,
                f"not allowed to list the consumer groups ({gist(exc)}): not checked",
            )
        return fail(name, f"cannot list the consumer groups: {gist(exc)}", "`baton -v doctor`")
    # Tansu lists a group whose name holds other characters than [A-Za-z0-9._-] percent-encoded
    # ("evil%0A") and finds its offsets only under the name as written: that one is asked too
    names = {g.group_id for g in listed.valid} | {
        unquote(g.group_id) for g in listed.valid if "%" in g.group_id
    }
    groups = sorted(n for n in names if n != settings.app_id)
    parts = [TopicPartition(requests, p) for p in range(view.partitions[requests])]
    asked, readers, denied = {}, [], 0
    for group in groups[:MAX_GROUPS_ASKED]:
        try:
            request = [ConsumerGroupTopicPartitions(group, parts)]
            asked[group] = admin.list_consumer_group_offsets(request, request_timeout=timeout)
        except Exception:  # a name the client will not send (""): not asked
            denied += 1
    for group, futures in asked.items():
        try:
            found = futures[group].result(timeout=timeout).topic_partitions
        except Exception as exc:
            if not _not_allowed(exc):
                return fail(
                    name,
                    f"cannot read group {group[:100]!r}'s offsets: {gist(exc)}",
                    "`baton -v doctor`",
                )
            denied += 1  # a group this principal may not describe: counted as not asked
            continue
        if any(tp.offset >= 0 for tp in found):
            readers.append(group)
    asked_n = len(groups[:MAX_GROUPS_ASKED]) - denied
    unchecked = len(groups) - asked_n
    more = f" ({unchecked} more group(s) not asked or not allowed)" if unchecked else ""
    if not readers:
        return ok(name, f"none: {asked_n} other group(s) asked{more}")
    shown = ", ".join(repr(g[:100]) for g in readers[:5])
    shown += f" and {len(readers) - 5} more" if len(readers) > 5 else ""
    return fail(
        name,
        f"{len(readers)} group(s) besides {settings.app_id!r} have read it: {shown}{more}; "
        "each is a fleet deciding the same events from run states of its own (its allow "
        "answers a request as readily as this fleet's stop)",
        "stop that fleet, or point it at BATON_APP_ID="
        f"{settings.app_id}; a group left by a renamed app id: delete it "
        f"(kafka-consumer-groups.sh --delete --group NAME) or it decides again when started",
    )


def _members_check(admin: Any, settings: Settings, view: KafkaView, timeout: float) -> Check:
    group, name = settings.app_id, f"workers (group {settings.app_id})"
    try:
        found = admin.describe_consumer_groups([group], request_timeout=timeout)[group]
        description = found.result(timeout=timeout)
    except Exception as exc:
        return fail(name, f"cannot describe the group: {gist(exc)}", _WORKER_HINT.format(group))
    if description.members:
        hosts = sorted({f"{m.client_id}@{m.host}" for m in description.members})
        state = description.state.name.lower()
        return ok(name, f"{len(hosts)} member(s), {state}: {', '.join(hosts)}")
    # Tansu lists no members and calls a group "stable" long after its last worker died:
    # without a member list, only an answer proves a worker decides
    return _probe_check(settings, view, name, timeout)


def _probe_check(settings: Settings, view: KafkaView, name: str, timeout: float) -> Check:
    """A readiness probe (a run_finished of a ``__probe_`` run, tenant ``__baton__``, as
    `baton up` sends) must come back as a decision within ``timeout``."""
    from baton.processors.probe import wait_until_deciding
    from baton.schemas.decision_signing import decision_keys

    catalog = TopicCatalog.from_settings(settings)
    missing = [t for t in (catalog.requests, catalog.decisions) if t not in view.partitions]
    if missing:
        return fail(
            name,
            f"no member listed, and no {' or '.join(missing)} to probe a worker through",
            "see the topic lines above",
        )
    try:
        took = wait_until_deciding(
            settings.kafka_config(),
            catalog.requests,
            catalog.decisions,
            view.partitions[catalog.requests],  # where the probe's key really goes
            timeout_s=timeout,
            # a stack's (or BATON_DECISION_KEYS): only an answer its workers signed counts
            keys=decision_keys(settings.decision_keys, unset=""),
        )
    except BatonError as exc:
        return fail(name, f"no member listed, and {exc}", _WORKER_HINT.format(settings.app_id))
    view.probed = True
    return ok(name, f"a worker answered a probe in {took * 1000:.0f} ms (no member list here)")


_WORKER_HINT = (
    "start `baton worker` with BATON_APP_ID={} against this broker (its log says why one exited)"
)
