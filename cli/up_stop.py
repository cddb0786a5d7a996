"""How ``baton up`` stops its children: in order, and saying what the audit did not get.

The embedded broker forgets every decision when it stops, so the sink must have stored them
before: the worker and the alerter stop first, then the sink reads gov.decisions to its end
(``baton sink --drain-s``) and stores it, then the broker. A sink that was down at the stop
(crashed, waiting out its restart backoff) is started again for it: a stop in its backoff
left thousands of decisions clients had received out of the audit, with no word (H2,
session 35). What still did not reach the audit (a sink that cannot start, a drain past its
bound) is counted before the broker goes and said in a WARNING.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from baton.cli.stack_file import StackRecord, update_record
from baton.cli.supervisor import Supervisor
from baton.cli.up_children import SINK_DRAIN_S

__all__ = ["stop_children", "unaudited"]

#: how long the count of unaudited decisions may take (the broker is still up)
_COUNT_TIMEOUT_S = 5.0


def stop_children(
    supervisor: Supervisor,
    broker_running: bool,
    settings: Any,
    say: Callable[[str], None],
    record: StackRecord | None = None,
    broker_pid: int = 0,
) -> None:
    """Stop the workers and the alerter, then the sink, which reads what they published to
    its end first (:data:`SINK_DRAIN_S`), started again if it was down; then say how many
    decisions the audit lacks. With the broker gone a worker's graceful stop only waits for
    it and the sink has nothing to read: short graces, the sink told to stop at once."""
    if not broker_running:
        supervisor.stop(3.0, None)
        return
    if supervisor.revive("sink"):
        say("the audit sink was down: started again to store the decisions before the broker stops")
    if record is not None:
        # the broker's guard reads the pids there if this process dies now (kill -9 of a stop
        # that takes a while): a sink started again (here, or by the supervisor's last tick)
        # not named, it stopped the broker at once and the drain was lost (session 39)
        pids = {name: proc.pid for name, proc in supervisor.processes().items()}
        update_record(record, pids={"broker": broker_pid} | pids)
    supervisor.stop(15.0, SINK_DRAIN_S)
    if "sink" not in supervisor.processes():
        return  # --no-audit
    try:
        lost = unaudited(settings)
    except Exception as exc:  # a report: the stop goes on
        say(f"WARNING: could not tell whether every decision reached the audit: {exc}")
        return
    if lost:
        say(
            f"WARNING: {lost} decision(s) on gov.decisions are not in the audit (the sink did "
            "not store them before the broker stopped, which forgets them): a restart "
            "restores their runs without them; see DATA_DIR/logs/sink.log"
        )


def unaudited(settings: Any) -> int:
    """Decisions on gov.decisions past the audit sink group's committed offsets, each
    partition's end as a read finds it (Tansu's ListOffsets reads a batch's end short);
    raises rather than count short when that read fails."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    from baton.cli.doctor_lag import group_behind
    from baton.streams.topics import TopicCatalog

    topic = TopicCatalog.from_settings(settings).decisions
    group = f"{settings.app_id}-audit"
    config = settings.kafka_config()
    admin = AdminClient(config)
    metadata = admin.list_topics(topic, timeout=_COUNT_TIMEOUT_S).topics[topic]
    parts = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
    consumer = Consumer({**config, "group.id": f"{group}-stop-count", "enable.auto.commit": False})
    try:
        behind = group_behind(
            admin, consumer, group, parts, _COUNT_TIMEOUT_S, config, hold_s=1.0, exact=True
        )
    finally:
        consumer.close()
    return sum(n for _, n in behind.values())
