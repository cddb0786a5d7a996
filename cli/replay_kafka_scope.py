"""Which records of the topics `baton replay --from-kafka` takes for ``--run`` and ``--tenant``.

A run is taken whole or not at all: by its id (the records under its key) or by its tenant,
the tenant of its first record that is its run's event, as the worker took it
(:func:`in_scope`). Not guaranteed: "first" is in the order the records were read from
Kafka (each partition in offset order, the partitions as they came), not the workers'.
"""

from __future__ import annotations

from baton.processors.replay_read_order import Stamped
from baton.schemas.events import parse_event

__all__ = ["in_scope", "run_of", "tenant_of"]


def run_of(key: bytes | None) -> str:
    """The run a record's key names (a key that is not UTF-8: its run is a dead letter)."""
    return (key or b"").decode("utf-8", "replace")


def in_scope(
    records: list[Stamped],
    before: dict[str, str | None],
    run_id: str | None,
    tenant: str | None,
) -> list[Stamped]:
    """The records of the runs in scope: ``run_id``'s, and with ``tenant`` (folded, as the
    audit replay reads it) every record of each run whose tenant is that one, the tenant of
    its first record that is its run's event (``before``'s, else the first read: the worker
    took the run's tenant from it). A record's own tenant field scoped it: a completion
    naming another tenant, which the worker counts under the run's key, was dropped, and a
    record naming the tenant under another tenant's run (refused by the worker) replayed as
    a run of its own. Without ``tenant``, the readiness probes of `baton up` and `doctor`
    (a ``__probe_`` run of tenant ``__baton__``: the audit replay has none) are left out,
    whole."""
    from baton.processors.probe import PROBE_TENANT
    from baton.schemas.names import fold

    if run_id is not None:
        records = [r for r in records if r[2].key == run_id.encode()]
    wanted = fold(tenant) if tenant is not None else PROBE_TENANT
    runs = dict(before)
    for _, _, rec in records:  # in the order read: each partition's, as the worker read it
        key = rec.key or b""
        run = run_of(key)
        if runs.get(run) is None and (tenant is not None or key.startswith(b"__probe_")):
            runs[run] = tenant_of(rec.key, rec.value)
    if tenant is not None:
        return [r for r in records if runs.get(run_of(r[2].key)) == wanted]
    return [
        r
        for r in records
        if not ((r[2].key or b"").startswith(b"__probe_") and runs.get(run_of(r[2].key)) == wanted)
    ]


def tenant_of(key: bytes | None, value: bytes | None) -> str | None:
    """The tenant of a record that is its run's event (its key the run's id), else None."""
    try:
        event = parse_event(value or b"", key or b"")
    except Exception:
        return None
    return getattr(event, "tenant", None)
