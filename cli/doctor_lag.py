"""How far behind `baton doctor` finds the workers (the events' lag) and the audit sink
(the decisions' lag), read from the groups' committed offsets against the partitions' ends.

Not guaranteed: lag is what the committed offsets say (a decided event counts until the next
commit), and Tansu's ListOffsets can be off by the records of one batch (``streams/kafka.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from baton.cli.doctor_checks import Check, fail, gist, ok
from baton.schemas.settings import Settings
from baton.streams.topics import TopicCatalog

if TYPE_CHECKING:
    from baton.cli.doctor_kafka import KafkaView

__all__ = ["audit_lag_check", "group_behind", "lag_check"]

log = logging.getLogger("baton.doctor")

#: (topic, partition) -> (committed offset or -1, records behind), or why it is unknown
Behind = dict[tuple[str, int], tuple[int, int]] | str


def lag_check(
    admin: Any, consumer: Any, settings: Settings, view: KafkaView, max_lag: int, timeout: float
) -> Check:
    """Events on the input topics the workers' group has not committed past."""
    catalog = TopicCatalog.from_settings(settings)
    name = "lag"
    behind = _settled(
        view,
        lambda: _behind(
            admin,
            consumer,
            settings.app_id,
            [catalog.requests, catalog.approvals],
            view,
            timeout,
            settings.kafka_config(),
        ),
    )
    if isinstance(behind, str):
        return fail(name, behind, "see the topic lines above, or `baton -v doctor`")
    total, detail = _lag_detail(behind, "event(s) past the workers' committed offsets")
    if total > max_lag:
        return fail(
            name,
            detail + f", over --max-lag {max_lag}",
            "the workers fall behind: add workers (up to the partition count) or look for a "
            "stuck one in their logs; `baton doctor` again shows whether it shrinks",
        )
    return ok(name, detail if total else "0: the workers have committed every event")


def audit_lag_check(
    admin: Any, consumer: Any, settings: Settings, view: KafkaView, max_lag: int, timeout: float
) -> Check:
    """Decisions on gov.decisions the audit sink's group (``<app id>-audit``) has not
    written yet; a group that never committed while decisions exist is a sink that never ran."""
    catalog = TopicCatalog.from_settings(settings)
    group, name = f"{settings.app_id}-audit", "audit lag"
    behind = _settled(
        view,
        lambda: _behind(
            admin, consumer, group, [catalog.decisions], view, timeout, settings.kafka_config()
        ),
    )
    if isinstance(behind, str):
        return fail(name, behind, "see the topic lines above, or `baton -v doctor`")
    total, detail = _lag_detail(behind, "decision(s) past the sink's committed offsets")
    hint = (
        f"is `baton sink` running with BATON_APP_ID={settings.app_id} (group {group})? its "
        "log says why it stopped or what ClickHouse answers"
    )
    if total and all(committed < 0 for committed, _ in behind.values()):
        return fail(name, f"group {group} never committed: {detail}", hint)
    if total > max_lag:
        return fail(name, detail + f", over --max-lag {max_lag}", hint)
    return ok(name, detail if total else "0: the sink has committed every decision")


def _behind(
    admin: Any,
    consumer: Any,
    group: str,
    topics: list[str],
    view: KafkaView,
    timeout: float,
    kafka_config: dict[str, Any] | None = None,
) -> Behind:
    """:func:`group_behind` for ``topics`` as the view found them; a string saying why when
    it cannot be read. An end that a read cannot find is the watermark's, not the check's end."""
    from confluent_kafka import TopicPartition

    parts = [TopicPartition(t, p) for t in topics for p in range(view.partitions.get(t, 0))]
    if not parts:
        return f"no {' or '.join(topics)} to measure"
    try:
        return group_behind(
            admin, consumer, group, parts, timeout, kafka_config, hold_s=min(3.0, timeout / 2)
        )
    except Exception as exc:
        return f"cannot read the offsets of group {group}: {gist(exc)}"


def group_behind(
    admin: Any,
    consumer: Any,
    group: str,
    parts: list[Any],
    timeout: float,
    kafka_config: dict[str, Any] | None = None,
    *,
    hold_s: float,
    exact: bool = False,
) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> (committed offset or -1, records behind) for ``group`` on
    ``parts`` (``TopicPartition``s); raises when the offsets cannot be read.

    With ``kafka_config``, each partition's end is the one a read finds
    (``transactions.committed_ends``, holding ``hold_s``): Tansu's ListOffsets, which the
    watermarks ask, answers the first offset of the last record batch + 1, so a batch of 20
    decisions counted as one behind, and a sink whose commit sat inside the last batch read
    "0: the sink has committed every decision" (session 29, H3). When that read fails the
    watermarks' ends are used, unless ``exact`` (``baton up``'s stop, which would rather say
    it could not tell than count short): then it raises."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    request = [ConsumerGroupTopicPartitions(group, parts)]
    answer = admin.list_consumer_group_offsets(request, request_timeout=timeout)[group]
    committed = {
        (tp.topic, tp.partition): tp.offset
        for tp in answer.result(timeout=timeout).topic_partitions
    }
    marks = {
        (tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
        for tp in parts
    }
    ends = {tp: high for tp, (_low, high) in marks.items()}
    if kafka_config is not None:
        from baton.streams.transactions import committed_ends

        try:
            ends.update(
                committed_ends(
                    kafka_config, ends, timeout_s=timeout, total_timeout_s=timeout, hold_s=hold_s
                )
            )
        except Exception as exc:
            if exact:
                raise
            log.debug("doctor: reading the partitions' ends failed (%s); watermarks used", exc)
    behind = {}
    for tp, (low, _high) in marks.items():
        start = committed.get(tp, -1)
        behind[tp] = (start, max(ends[tp] - max(start, low), 0))
    return behind


#: seconds a lag of 1 is measured again after this doctor's own probe (the worker commits
#: every second by default, the sink after each insert)
_PROBE_SETTLE_S = 4.0


def _settled(view: KafkaView, measure: Callable[[], Behind]) -> Behind:
    """``measure()``; after this doctor's probe, again until a lag of 1 (the probe's event or
    decision, decided but not yet committed) is gone or :data:`_PROBE_SETTLE_S` passed. An
    idle stack read `lag: 1` and `audit lag: 1` at every doctor: its own probe (H2, s. 33)."""
    behind = measure()
    deadline = time.monotonic() + _PROBE_SETTLE_S
    while (
        view.probed
        and not isinstance(behind, str)
        and sum(n for _, n in behind.values()) == 1
        and time.monotonic() < deadline
    ):
        time.sleep(0.5)
        behind = measure()
    return behind


def _lag_detail(behind: dict[tuple[str, int], tuple[int, int]], what: str) -> tuple[int, str]:
    total = sum(n for _, n in behind.values())
    (topic, partition), (_, worst) = max(behind.items(), key=lambda item: item[1][1])
    return total, f"{total} {what} (most on {topic}[{partition}]: {worst})"
