"""``baton doctor``'s check for transactions left open on Baton's topics.

A transaction a producer never ends holds every read_committed reader of its partition at
its first record: the workers (their events, and their changelog at a restore: a worker
ends 78 there rather than restore short), SDK clients and `baton replay` (gov.decisions:
governance_unavailable, a stop), and under exactly_once the audit sink and `baton alerts`
(they read read_uncommitted under at_least_once: streams.kafka.output_isolation).
Kafka aborts such a transaction at its producer's ``transaction.timeout.ms``;
the embedded Tansu broker never does (session 30 H1). Each partition is read just before its
end (``streams.transactions.held_partitions``): one short read, and a wait of ``hold`` seconds
for a partition that looks held, so a transaction in flight is not named.
"""

from __future__ import annotations

from baton.cli.doctor_checks import Check, fail, gist, ok
from baton.schemas.settings import Settings

__all__ = ["held_check"]

NAME = "open transactions"


def held_check(settings: Settings, partitions: dict[str, int], timeout: float) -> Check:
    """FAIL naming each partition of ``partitions`` (topic -> partition count) a transaction
    left open holds; ok when none is."""
    from baton.streams.transactions import held_partitions

    tps = [(topic, p) for topic, count in sorted(partitions.items()) for p in range(count)]
    if not tps:
        return ok(NAME, "no topic of Baton to read")
    hold = min(3.0, timeout / 2)
    try:
        held, unread = held_partitions(settings.kafka_config(), tps, hold_s=hold, timeout_s=timeout)
    except Exception as exc:
        return fail(NAME, f"cannot read the partitions' ends: {gist(exc)}", "see the broker line")
    if held:
        named = ", ".join(
            f"{topic}[{p}] at offset {stable} ({high - stable} offsets behind it)"
            for (topic, p), (stable, high) in sorted(held.items())
        )
        return fail(
            NAME,
            f"{len(held)} partition(s) held by a transaction left open for {hold:g} s+: {named}; "
            "read_committed readers (workers, SDK clients; under exactly_once also the audit "
            "sink and alerter) get nothing past that offset",
            "the producer holding it must commit or abort it (a restart with its "
            "transactional.id aborts it); Kafka aborts it at its transaction.timeout.ms, the "
            "embedded Tansu broker never does: docs/security.md",
        )
    if unread:
        shown = ", ".join(f"{t}[{p}]" for t, p in unread[:5])
        return fail(
            NAME,
            f"{len(unread)} partition(s) not read to their end in {timeout:g} s: {shown}",
            "a slow broker, or a partition held long ago on Tansu (read from its start); "
            "try a longer --timeout",
        )
    return ok(NAME, f"none: {len(tps)} partitions read committed to their end")
