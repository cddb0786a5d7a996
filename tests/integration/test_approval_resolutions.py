"""An approval is resolved by its grant, denial or expiry, never by a refused answer (0007).

Session 29, H2: a refused answer (outcome ``recorded``: the requester approving its own
handoff, an unsigned grant) is an approval-phase decision too, and 0002's approval_latency
took the first one as the resolution: the approvals_waiting alert went quiet for an approval
``baton approvals`` still listed, and the turnaround query counted its real grant nowhere."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from baton.schemas.decision import Decision, Outcome, Phase, Reason
from baton.sinks.clickhouse import connect
from baton.sinks.rules import DEFAULT_RULES
from baton.sinks.schema import load_migrations, migrate
from baton.sinks.sink import AuditBatch, write_batch
from tests.audit_support import story_run

pytestmark = pytest.mark.integration


def _insert(client: Client, decisions: list[Decision], first_offset: int) -> None:
    batch = AuditBatch("gov.decisions")
    for i, decision in enumerate(decisions):
        batch.add(0, first_offset + i, decision.to_json())
    write_batch(client, batch)


def _refused(grant: Decision, at: timedelta) -> Decision:
    """The requester's own grant of ``grant``'s approval, refused, ``at`` after the request."""
    return replace(
        grant,
        decision_id=grant.decision_id + "-self",
        outcome=Outcome.RECORDED,
        reason=Reason.SELF_APPROVAL,
        decided_at=grant.decided_at - at,
    )


def _story(
    run_id: str, ago: timedelta = timedelta(hours=1)
) -> tuple[list[Decision], Decision, Decision]:
    """``run_id``'s decisions, and its approval's request and grant."""
    decisions = story_run(run_id, "acme", datetime.now(UTC).replace(microsecond=0) - ago)
    asked = next(d for d in decisions if d.outcome == Outcome.APPROVAL_REQUIRED)
    grant = next(d for d in decisions if d.phase == Phase.APPROVAL)
    assert grant.outcome == Outcome.ALLOW
    return decisions, asked, grant


def _latency(client: Client) -> dict[str, tuple[object, ...]]:
    rows = client.query(
        "SELECT run_id, resolved_at, resolution, resolution_reason FROM governance.approval_latency"
    ).result_rows
    # times compared in UTC without a zone (the driver gives them either way)
    return {
        str(r[0]): (r[1].replace(tzinfo=None) if r[1] is not None else None, *r[2:]) for r in rows
    }


def _utc(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(tzinfo=None)


@pytest.fixture
def audit(chdb_dir: Path) -> Iterator[Client]:
    client = connect(f"chdb://{chdb_dir}")
    try:
        yield client
    finally:
        client.close()


def test_a_refused_answer_neither_resolves_an_approval_nor_hides_its_grant(audit: Client) -> None:
    migrate(audit, ttl_days=3650)
    granted, _asked, grant = _story("granted_after_refusal")
    # the refusal 5 s before the grant, after the request
    _insert(audit, [*granted, _refused(grant, timedelta(seconds=5))], 0)
    pending, asked2, grant2 = _story("still_pending")
    # the run's decisions up to its approval, then only the refused answer
    upto = pending[: pending.index(asked2) + 1]
    _insert(audit, [*upto, _refused(grant2, timedelta(seconds=5))], 100)

    latency = _latency(audit)
    assert latency["granted_after_refusal"] == (_utc(grant.decided_at), "allow", "approval_granted")
    assert latency["still_pending"] == (None, None, None)

    # the alert on-call relies on lists the pending one (it had gone quiet)
    waiting = next(r for r in DEFAULT_RULES if r.name == "approvals_waiting")
    fired = audit.query(waiting.sql, parameters={"max_wait_minutes": 1}).result_rows
    assert [r[2] for r in fired] == ["still_pending"]


def test_migration_0007_remakes_the_resolutions_of_decisions_stored_before_it(
    audit: Client,
) -> None:
    before = [m for m in load_migrations() if m.version < 7]
    assert migrate(audit, ttl_days=3650, migrations=before) == [1, 2, 3, 4, 5, 6]
    decisions, _asked, grant = _story("stored_before")
    _insert(audit, [*decisions, _refused(grant, timedelta(seconds=5))], 0)
    # 0002's view took the refusal for the resolution
    assert _latency(audit)["stored_before"][1:] == ("recorded", "self_approval")

    assert migrate(audit, ttl_days=3650) == [7, 8, 9, 10, 11]
    assert _latency(audit)["stored_before"] == (_utc(grant.decided_at), "allow", "approval_granted")
    tables = {r[0] for r in audit.query("SHOW TABLES FROM governance").result_rows}
    assert "approval_latency_state" not in tables and "approval_latency_mv" not in tables
    # and rows stored after it are counted by the new view alone
    later, _asked, later_grant = _story("stored_after")
    _insert(audit, [*later, _refused(later_grant, timedelta(seconds=5))], 100)
    assert _latency(audit)["stored_after"][1:] == ("allow", "approval_granted")


def test_refused_answers_do_not_dilute_a_tenants_stop_rate(audit: Client) -> None:
    migrate(audit, ttl_days=3650)
    decisions, _asked, grant = _story("diluted")
    now = datetime.now(UTC)
    recent = [
        replace(d, decided_at=now - timedelta(seconds=60 - i)) for i, d in enumerate(decisions)
    ]
    refusals = [
        replace(_refused(grant, timedelta(0)), decision_id=f"refused-{i}", decided_at=now)
        for i in range(20)
    ]
    _insert(audit, [*recent, *refusals], 0)
    handoffs = [d for d in recent if d.phase in (Phase.PRE_HANDOFF, Phase.APPROVAL)]
    rate = next(r for r in DEFAULT_RULES if r.name == "tenant_stop_rate")
    rows = audit.query(
        rate.sql, parameters={"window_minutes": 5, "min_decisions": 1, "max_stop_rate": -1.0}
    ).result_rows
    assert [(r[0], r[2]) for r in rows] == [("acme", len(handoffs))]


def test_an_approval_pending_for_days_still_fires_the_alert(audit: Client) -> None:
    """approvals_waiting looked back one day; a policy's TTL may be up to 366 days."""
    migrate(audit, ttl_days=3650)
    decisions, asked, _grant = _story("waiting_two_days", ago=timedelta(days=2))
    _insert(audit, decisions[: decisions.index(asked) + 1], 0)
    waiting = next(r for r in DEFAULT_RULES if r.name == "approvals_waiting")
    fired = audit.query(waiting.sql, parameters={"max_wait_minutes": 15}).result_rows
    assert [r[2] for r in fired] == ["waiting_two_days"]


def _foreign_refusal(asked: Decision, run_id: str) -> Decision:
    """A grant of ``asked``'s approval sent keyed by another run of the tenant, refused: its
    row carries the approval id under that run."""
    return replace(
        asked,
        decision_id=f"{asked.decision_id}-{run_id}",
        run_id=run_id,
        phase=Phase.APPROVAL,
        outcome=Outcome.RECORDED,
        reason=Reason.UNKNOWN_APPROVAL,
        decided_at=asked.decided_at + timedelta(seconds=1),
    )


def test_a_pending_approval_is_named_by_the_run_that_asked_for_it(audit: Client) -> None:
    """Session 30 (H3): 0007 kept any(run_id) over every row of an approval id, refused
    answers included: a grant keyed by another run made the pending approval read as that
    run's, and approvals_waiting sent on-call after it (0008: the asking run)."""
    migrate(audit, ttl_days=3650)
    decisions, asked, _grant = _story("asking_run")
    upto = decisions[: decisions.index(asked) + 1]
    _insert(audit, [_foreign_refusal(asked, "another_run")], 0)  # first: any() took it
    _insert(audit, upto, 10)
    audit.command("OPTIMIZE TABLE governance.approval_resolution_state FINAL")
    assert _latency(audit) == {"asking_run": (None, None, None)}
    waiting = next(r for r in DEFAULT_RULES if r.name == "approvals_waiting")
    fired = audit.query(waiting.sql, parameters={"max_wait_minutes": 1}).result_rows
    assert [r[2] for r in fired] == ["asking_run"]


def test_migration_0008_names_the_asking_run_of_decisions_stored_before_it(
    audit: Client,
) -> None:
    before = [m for m in load_migrations() if m.version < 8]
    assert migrate(audit, ttl_days=3650, migrations=before) == [1, 2, 3, 4, 5, 6, 7]
    decisions, asked, _grant = _story("stored_before_0008")
    upto = decisions[: decisions.index(asked) + 1]
    _insert(audit, [_foreign_refusal(asked, "another_run")], 0)
    _insert(audit, upto, 10)
    audit.command("OPTIMIZE TABLE governance.approval_resolution_state FINAL")
    assert set(_latency(audit)) == {"another_run"}  # 0007 named the refusal's run
    assert migrate(audit, ttl_days=3650) == [8, 9, 10, 11]
    assert set(_latency(audit)) == {"stored_before_0008"}
    # an approval no stored decision asked for keeps the run of its rows
    _insert(audit, [replace(_foreign_refusal(asked, "lone"), approval_id="unknown-id")], 100)
    assert set(_latency(audit)) == {"stored_before_0008", "lone"}
