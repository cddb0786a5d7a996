"""The SDK without a broker: who waits for which decision, parked approvals, fail-safe answers."""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from baton.schemas.decision import Decision, Outcome, Phase, Reason
from baton.schemas.events import HandoffCompleted
from baton.streams.sdk import waiters as waiters_module
from baton.streams.sdk.base import ClientBase
from baton.streams.sdk.waiters import Unanswered, Waiter, WaiterBook, resolve
from tests.helpers import handoff

pytestmark = pytest.mark.unit

RUN, REQUEST = "run_742", "r1"
APPROVAL_KEY = (RUN, REQUEST, str(Phase.APPROVAL))
PRE_KEY = (RUN, REQUEST, str(Phase.PRE_HANDOFF))


def _decision(phase: Phase, outcome: Outcome, run: str = RUN, request: str = REQUEST) -> Decision:
    return Decision(
        decision_id=f"{run}-{request}-{phase}",
        request_id=request,
        run_id=run,
        tenant="acme",
        phase=phase,
        outcome=outcome,
        reason="approval_pending",
        approval_id="ap1",
        approval_expires_at=datetime.now(UTC) + timedelta(minutes=5),
        chain_hash="c" * 32,  # linked, as a worker's (the SDK takes no unchained allow)
    )


def _waiter() -> Waiter:
    return Waiter(concurrent.futures.Future())


def test_a_decision_goes_to_every_waiter_of_its_key_and_only_once() -> None:
    book, first, second = WaiterBook(), _waiter(), _waiter()
    book.register(PRE_KEY, first)
    book.register(PRE_KEY, second)
    allow = _decision(Phase.PRE_HANDOFF, Outcome.ALLOW)
    assert book.take(PRE_KEY, allow) == [first, second]
    assert book.take(PRE_KEY, allow) == []
    assert not book.awaited(PRE_KEY)


def test_an_approval_answered_before_anyone_waits_is_parked_for_wait_for_approval() -> None:
    book = WaiterBook()
    book.register(PRE_KEY, _waiter())
    book.take(PRE_KEY, _decision(Phase.PRE_HANDOFF, Outcome.APPROVAL_REQUIRED))
    assert book.awaited(APPROVAL_KEY) and book.parked(APPROVAL_KEY) is None
    granted = _decision(Phase.APPROVAL, Outcome.ALLOW)
    assert book.take(APPROVAL_KEY, granted) == []
    assert book.parked(APPROVAL_KEY) == granted
    assert book.claim_parked(APPROVAL_KEY, _waiter()) == granted
    assert not book.awaited(APPROVAL_KEY)


def test_an_approval_nobody_asked_for_is_not_parked() -> None:
    book = WaiterBook()
    book.take(APPROVAL_KEY, _decision(Phase.APPROVAL, Outcome.ALLOW))
    assert book.parked(APPROVAL_KEY) is None and not book.awaited(APPROVAL_KEY)


def test_claiming_before_the_answer_registers_the_waiter() -> None:
    book, waiter = WaiterBook(), _waiter()
    book.register(PRE_KEY, _waiter())
    book.take(PRE_KEY, _decision(Phase.PRE_HANDOFF, Outcome.APPROVAL_REQUIRED))
    assert book.claim_parked(APPROVAL_KEY, waiter) is None
    assert book.take(APPROVAL_KEY, _decision(Phase.APPROVAL, Outcome.STOP)) == [waiter]
    assert book.parked(APPROVAL_KEY) is None  # answered: nothing left parked


def test_finishing_a_run_drops_its_parked_approvals_only() -> None:
    book = WaiterBook()
    for run in (RUN, "run_other"):
        key = (run, REQUEST, str(Phase.PRE_HANDOFF))
        book.register(key, _waiter())
        book.take(key, _decision(Phase.PRE_HANDOFF, Outcome.APPROVAL_REQUIRED, run=run))
    book.forget_run(RUN)
    assert not book.awaited(APPROVAL_KEY)
    assert book.awaited(("run_other", REQUEST, str(Phase.APPROVAL)))


def test_parked_approvals_are_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiters_module, "PARKED_MAX", 3)
    book = WaiterBook()
    for i in range(5):
        key = (RUN, f"r{i}", str(Phase.PRE_HANDOFF))
        book.register(key, _waiter())
        book.take(key, _decision(Phase.PRE_HANDOFF, Outcome.APPROVAL_REQUIRED, request=f"r{i}"))
    kept = [i for i in range(5) if book.awaited((RUN, f"r{i}", str(Phase.APPROVAL)))]
    assert kept == [2, 3, 4]


def test_unregistered_waiters_and_taken_keys_are_gone() -> None:
    book, waiter, other = WaiterBook(), _waiter(), _waiter()
    book.register(PRE_KEY, waiter)
    book.register(APPROVAL_KEY, other)
    book.unregister(PRE_KEY, waiter)
    book.unregister(PRE_KEY, waiter)  # twice: harmless
    assert not book.awaited(PRE_KEY)
    assert book.take_all([PRE_KEY, APPROVAL_KEY]) == [other]
    book.register(PRE_KEY, waiter)
    assert book.take_everyone() == [waiter] and book.take_everyone() == []


def test_resolve_answers_threads_at_once_and_each_loop_in_its_own_thread() -> None:
    thread_waiter = _waiter()

    async def main() -> object:
        loop = asyncio.get_running_loop()
        task_waiter = Waiter(loop.create_future(), loop)
        closed = Unanswered("the Baton client was closed")
        await asyncio.to_thread(resolve, [(thread_waiter, closed), (task_waiter, closed)])
        return await asyncio.wait_for(task_waiter.future, 5)

    assert asyncio.run(main()) == Unanswered("the Baton client was closed")
    assert thread_waiter.future.result(0) == Unanswered("the Baton client was closed")
    resolve([(thread_waiter, "late")])  # a future already resolved keeps its first answer
    assert thread_waiter.future.result(0) == Unanswered("the Baton client was closed")


def test_a_fail_safe_answer_repeats_what_it_answers() -> None:
    client = ClientBase("127.0.0.1:1", partitions=4)  # never connects
    asked = handoff(RUN, 1, "refund_check", parent="triage", action="billing.refund", tool="stripe")
    stop = client._unanswered(asked, Phase.PRE_HANDOFF, "no worker")
    assert (stop.outcome, stop.reason, stop.detail) == (
        Outcome.STOP,
        "governance_unavailable",
        "no worker",
    )
    assert (stop.from_agent, stop.to_agent, stop.task_id, stop.parent_task_id) == (
        "planner",
        "researcher",
        "refund_check",
        "triage",
    )
    assert (stop.action, stop.tool, stop.event_time) == (
        "billing.refund",
        "stripe",
        asked.event_time,
    )
    done = HandoffCompleted(
        request_id=asked.request_id,
        run_id=RUN,
        task_id="refund_check",
        agent="researcher",
        tool_calls=3,
        event_time=asked.event_time,
    )
    report = client._unanswered(done, Phase.POST_HANDOFF, "no worker")
    assert (report.to_agent, report.task_id, report.tool_calls) == ("researcher", "refund_check", 3)
    pending = _decision(Phase.PRE_HANDOFF, Outcome.APPROVAL_REQUIRED)
    gate = client._unanswered(pending, Phase.APPROVAL, "no approver", fail_open=False)
    assert (gate.approval_id, gate.approval_expires_at) == ("ap1", pending.approval_expires_at)
    assert gate.outcome == Outcome.STOP and gate.phase == Phase.APPROVAL


def test_finish_names_the_tenant_the_run_was_sent_under(caplog: pytest.LogCaptureFixture) -> None:
    """A run of tenant "acme" finished with ``finish(run_id)`` went out under "default": the
    worker refused it (tenant_mismatch), ``finish`` does not wait, and the run went on
    allowing handoffs (session 29, H1)."""
    import orjson

    client = ClientBase("127.0.0.1:1", partitions=4)  # never connects
    client._request(handoff("run_acme", 1, "t1", tenant="acme"), 5.0)
    client._request(
        HandoffCompleted(
            request_id="r9",
            run_id="run_b",
            task_id="t",
            agent="a",
            cost_usd=0.1,
            tenant="beta",
            event_time=datetime.now(UTC),
        ),
        5.0,
    )

    def tenant_of(run: str, tenant: str | None = None) -> str:
        return str(orjson.loads(client._finish_event(run, tenant)[2])["tenant"])

    assert tenant_of("run_acme") == "acme"
    assert tenant_of("run_b") == "beta"
    assert tenant_of("run_never_sent") == "default"
    assert tenant_of("run_never_sent", "gamma") == "gamma"
    # a tenant given that is not the one the run was sent under is sent, and warned about
    client._request(handoff("run_c", 1, "t1", tenant="acme"), 5.0)
    with caplog.at_level("WARNING", logger="baton.client"):
        assert tenant_of("run_c", "default") == "default"
    assert "sent the run under tenant 'acme'" in caplog.text
    caplog.clear()
    client._request(handoff("run_d", 1, "t1", tenant="acme"), 5.0)
    with caplog.at_level("WARNING", logger="baton.client"):
        assert tenant_of("run_d", "ACME") == "acme"  # a name, folded: the same tenant
    assert not caplog.text


def test_the_tenants_remembered_for_finish_are_bounded() -> None:
    from baton.streams.sdk.base import RunTenants

    tenants = RunTenants(kept=3)
    for i in range(5):
        tenants.sent(f"run{i}", f"t{i}", check=True)
    tenants.sent("run2", "t2", check=True)  # sent again: the newest
    assert tenants.finishing("run0", None) == "default"  # forgotten, the oldest first
    assert tenants.finishing("run1", None) == "default"
    assert [tenants.finishing(f"run{i}", None) for i in (2, 3, 4)] == ["t2", "t3", "t4"]
    assert tenants.finishing("run2", None) == "t2"  # kept: a failed finish is retried


def test_finish_takes_the_tenant_the_worker_answered_under_not_a_later_report() -> None:
    """Session 30 (H3): a report sent without ``tenant=`` (the default tenant) for an acme
    run is accepted by the worker (its cost counts), so nothing told the caller; the client
    remembered the last tenant sent, and ``finish(run_id)`` went out under "default", was
    refused ``tenant_mismatch`` and the run stayed open. The worker's answers name the run's
    tenant, and win over what was sent; and a finish that raised forgot the tenant."""
    import orjson
    from pydantic import ValidationError

    from baton.processors.engine import decide
    from baton.schemas.events import RunFinished
    from baton.schemas.policy import Policy

    client = ClientBase("127.0.0.1:1", partitions=4)  # never connects
    now = datetime.now(UTC)
    check = handoff("run_acme", 1, "t1", tenant="acme")
    report = HandoffCompleted(
        request_id=check.request_id,
        run_id="run_acme",
        task_id="t1",
        agent=check.to_agent,
        cost_usd=0.1,
        event_time=now,
    )  # tenant not given: "default"
    state, answers = decide(None, check, Policy(), now)
    client._request(check, 5.0)
    client.run_tenants.heard(answers[0])
    state, reported = decide(state, report, Policy(), now)
    assert reported[0].reason != "tenant_mismatch"  # accepted: the caller hears nothing wrong
    client._request(report, 5.0)
    client.run_tenants.heard(reported[0])
    with pytest.raises(ValidationError):
        client._finish_event("run_acme", "acme\x00")  # raises before anything goes out
    finish = RunFinished.model_validate(orjson.loads(client._finish_event("run_acme", None)[2]))
    assert finish.tenant == "acme"
    state, finished = decide(state, finish, Policy(), now)
    assert state is not None and state.finished, finished
    # no answer heard (the worker slow): what the check sent beats what a report sent
    client._request(handoff("run_slow", 1, "t1", tenant="acme"), 5.0)
    client._request(report.model_copy(update={"run_id": "run_slow"}), 5.0)
    assert orjson.loads(client._finish_event("run_slow", None)[2])["tenant"] == "acme"
    # a refusal of the event's tenant names the event's: not taken
    client._request(handoff("run_x", 1, "t1", tenant="acme"), 5.0)
    client.run_tenants.heard(replace(answers[0], run_id="run_x", tenant="beta",
                                     reason=Reason.TENANT_MISMATCH))  # fmt: skip
    assert orjson.loads(client._finish_event("run_x", None)[2])["tenant"] == "acme"
