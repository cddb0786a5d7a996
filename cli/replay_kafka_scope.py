"""Which records of the topics `baton replay --from-kafka` takes for ``--run`` and ``--tenant``.

A run is taken whole or not at all: by its id (the records under its key) or by its tenant,
the tenant of its first request-topic record the worker decided as its event (on the run's
own partition: in offset order, as the worker read it), else of its first grant or denial
(:func:`in_scope`). Not guaranteed: a run whose first event the worker read was a grant
naming another tenant than its requests is taken by its requests' tenant (such a run is
listed broken in that scope: which topic the worker read first is unknown).
"""

from __future__ import annotations

from baton.processors.batch import InputRecord, Outputs
from baton.processors.batch_routing import route
from baton.processors.replay_read_order import Stamped
from baton.schemas.events import ApprovalDenied, ApprovalGranted, RunEvent

__all__ = ["ANSWERS", "decided_here", "in_scope", "run_of", "run_tenants"]

#: the events that answer an approval (gov.approvals' only run events)
ANSWERS = (ApprovalGranted, ApprovalDenied)


def run_of(key: bytes | None) -> str:
    """The run a record's key names (a key that is not UTF-8: its run is a dead letter)."""
    return (key or b"").decode("utf-8", "replace")


def decided_here(rec: InputRecord, partitions: int, approvals: str | None) -> RunEvent | None:
    """The run event the worker decided ``rec`` as where it was read (``route``, the worker's
    own step); None for a record it decided nothing for there: a dead letter (no key, not an
    event, another run's event under this key, an event on the wrong topic) or an event on
    another run's partition (forwarded: decided where its copy is read)."""
    try:
        routed = route(rec, partitions, approvals, Outputs())
    except Exception:
        return None
    return routed[1] if routed is not None else None


def in_scope(
    records: list[Stamped],
    before: dict[str, str | None],
    run_id: str | None,
    tenant: str | None,
    partitions: int = 1,
    approvals: str | None = None,
) -> list[Stamped]:
    """The records of the runs in scope: ``run_id``'s, and with ``tenant`` (folded, as the audit
    replay reads it) every record of each run whose tenant is that one, the tenant of its first
    request-topic event (``before``'s, else the first read: the worker took the run's tenant
    from it; each partition is read in offset order, but the partitions and topics as they
    came), else of its first answer (a grant or denial, read before any request: decide_topics
    finds the run undecidable). Only a record the worker decided as the run's event where it was
    read counts (``decided_here``; ``partitions``, ``approvals`` as the workers'): one naming
    another tenant where the worker dead-lettered or forwarded it, or a grant polled first, took
    the run out of its tenant's scope, its change hidden. A record's own tenant field scoped it:
    a completion naming another tenant, which the worker counts under the run's key, was
    dropped, and a record naming the tenant under another tenant's run (refused by the worker)
    replayed as a run of its own. Without ``tenant``, the readiness probes of `baton up` and
    `doctor` (a ``__probe_`` run of tenant ``__baton__``: the audit replay has none) are left
    out, whole."""
    from baton.processors.probe import PROBE_TENANT
    from baton.schemas.names import fold

    if run_id is not None:
        records = [r for r in records if r[2].key == run_id.encode()]
    wanted = fold(tenant) if tenant is not None else PROBE_TENANT
    runs = run_tenants(records, before, partitions, approvals, probes=tenant is None)
    if tenant is not None:
        return [r for r in records if runs.get(run_of(r[2].key)) == wanted]
    return [
        r
        for r in records
        if not ((r[2].key or b"").startswith(b"__probe_") and runs.get(run_of(r[2].key)) == wanted)
    ]


def run_tenants(
    records: list[Stamped],
    before: dict[str, str | None],
    partitions: int = 1,
    approvals: str | None = None,
    probes: bool = False,
) -> dict[str, str | None]:
    """Run -> its tenant as :func:`in_scope` takes it (``before``'s, else of its first
    request-topic event in ``records``, else of its first answer); a run of ``before`` with
    no tenant known and no such record: None (``probes``: the tenants of the ``__probe_``
    runs only, the others as ``before`` has them)."""
    runs = dict(before)
    answered: dict[str, str] = {}  # run -> the tenant of its first answer
    for _, _, rec in records:  # in the order read: each partition's, as the worker read it
        key = rec.key or b""
        run = run_of(key)
        if runs.get(run) is None and (not probes or key.startswith(b"__probe_")):
            event = decided_here(rec, partitions, approvals)
            if event is not None and type(event) in ANSWERS:
                answered.setdefault(run, event.tenant)
            elif event is not None:
                runs[run] = event.tenant
    for run, named in answered.items():
        if runs.get(run) is None:
            runs[run] = named
    return runs
