"""Session 12 (H4): a forged answer the SDK took that the audit's verify passed.

A writer of gov.decisions publishes an ``allow`` under the awaited run, request id and
phase, with the client's own request as its input, and leaves ``chain_hash`` out; its
decision id one the worker never uses, or its tenant another. The SDK matched only the key
and the input, so a waiting client took the allow; the audit kept it as a row of its own
(no other record under its id and tenant: ``decision_conflicts`` empty) outside the run's
chain, which `baton audit verify` skips: "every chain holds", exit 0. A worker publishes
unchained only the answers it gives without changing a run (a stop, or a recorded refusal
of a report): an unchained allow, approval_required or grant answers nothing now (the client
waits on for the worker's, and fails closed at its timeout). Each test fails before its fix.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

import pytest
from hypothesis import given, settings

from baton.processors.batch import BatchProcessor, InputRecord
from baton.schemas.decision import Outcome, Phase, Reason
from baton.schemas.events import ApprovalDenied, ApprovalGranted
from baton.streams.sdk.base import answers_approval, answers_request
from baton.streams.sdk.waiters import Waiter, WaiterBook
from tests.unit.test_attacks_session9_audit import APPROVALS, REQUESTS
from tests.unit.test_attacks_session10_leftovers import _handoff, _report, _Worker
from tests.unit.test_engine_properties_session10 import POLICY, histories
from tests.unit.test_engine_support import at

pytestmark = pytest.mark.unit

_UNCHAINED = (Outcome.STOP, Outcome.RECORDED)


@pytest.mark.parametrize(
    "forgery",
    [{"decision_id": "f" * 32}, {"tenant": "other"}, {}],
    ids=["unused-id", "other-tenant", "same-id"],
)
@pytest.mark.parametrize("outcome", [Outcome.ALLOW, Outcome.APPROVAL_REQUIRED])
def test_an_unchained_allow_under_the_awaited_key_answers_nothing(
    forgery: dict[str, str], outcome: Outcome
) -> None:
    event = _handoff(action="billing.refund.create")
    own = _Worker().decide(event.to_json())
    assert own.outcome == Outcome.APPROVAL_REQUIRED and own.chain_hash is not None
    answers = answers_request(event)
    assert answers(own)  # the worker's own answer, chained

    forged = dataclasses.replace(own, outcome=outcome, reason=Reason.OK, chain_hash=None)
    forged = dataclasses.replace(forged, **forgery)

    assert not answers(forged)
    assert not answers(dataclasses.replace(forged, chain_hash=""))


def test_the_workers_unchained_refusals_are_still_answers() -> None:
    # what a worker publishes without a link: a stop (a handoff it will not decide) and a
    # recorded refusal of a report (reply_not_kept, request_id_reused)
    event, report = _handoff(), _report()
    own = _Worker().decide(event.to_json())
    stop = dataclasses.replace(own, outcome=Outcome.STOP, reason="request_id_reused")
    assert answers_request(event)(dataclasses.replace(stop, chain_hash=None))
    worker = _Worker()
    worker.decide(event.to_json())
    counted = worker.decide(report.to_json())
    assert counted.chain_hash is not None and answers_request(report)(counted)
    refused = dataclasses.replace(
        counted, outcome=Outcome.RECORDED, reason=Reason.REPLY_NOT_KEPT, chain_hash=None
    )
    assert answers_request(report)(refused)


def test_an_unchained_grant_of_the_awaited_approval_answers_nothing() -> None:
    event = _handoff(action="billing.refund.create")
    asked = _Worker().decide(event.to_json())
    assert asked.approval_id is not None
    grant = dataclasses.replace(
        asked, phase=Phase.APPROVAL, outcome=Outcome.ALLOW, reason=Reason.OK, approver="eve"
    )
    answers = answers_approval(asked)
    assert answers(grant)  # chained (as the worker's grant is)
    assert not answers(dataclasses.replace(grant, chain_hash=None))
    denial = dataclasses.replace(grant, outcome=Outcome.STOP, reason="approval_denied")
    assert answers(dataclasses.replace(denial, chain_hash=None))  # fails closed anyway


@settings(max_examples=120, deadline=None)
@given(histories)
def test_a_worker_publishes_unchained_only_stops_and_recorded_refusals(history: list) -> None:
    # what the SDK's rule relies on: session 10's hostile histories (reused ids, twins,
    # approvals of other requests, redeliveries, finishes) through the worker's batch step
    proc = BatchProcessor(POLICY, 1, {}, worker="w", approvals_topic=APPROVALS)
    clock, records = 0, []
    for offset, (step, dt) in enumerate(history):
        clock += dt
        event = records[len(records) // 2] if step == "again" and records else step
        if isinstance(event, str):
            continue
        records.append(event)
        topic = APPROVALS if isinstance(event, (ApprovalGranted, ApprovalDenied)) else REQUESTS
        out = proc.process([InputRecord(topic, 0, offset, b"R", event.to_json())], at(clock))
        for _, d in out.decisions:
            assert d.chain_hash is not None or d.outcome in _UNCHAINED, d


def test_an_unchained_grant_read_before_the_client_waits_is_not_parked_for_it() -> None:
    # the approver answered before the orchestrator called wait_for_approval: the reader
    # parks the approval's decision, and claim_parked handed it over with no check at all
    event = _handoff(action="billing.refund.create")
    asked = _Worker().decide(event.to_json())
    book = WaiterBook()
    key = (asked.run_id, asked.request_id, str(Phase.PRE_HANDOFF))
    book.register(key, Waiter(concurrent.futures.Future(), answers=answers_request(event)))
    assert book.take(key, asked)  # answered, and its approval parked
    approval = (asked.run_id, asked.request_id, str(Phase.APPROVAL))
    grant = dataclasses.replace(
        asked, phase=Phase.APPROVAL, outcome=Outcome.ALLOW, reason=Reason.OK, approver="eve"
    )

    book.take(approval, dataclasses.replace(grant, chain_hash=None))
    waiter = Waiter(concurrent.futures.Future(), answers=answers_approval(asked))
    assert book.claim_parked(approval, waiter) is None  # waits on: not taken
    assert book.take(approval, grant) == [waiter]  # the worker's own grant, chained


def test_a_parked_grant_of_another_request_digest_is_not_handed_over() -> None:
    event = _handoff(action="billing.refund.create")
    asked = _Worker().decide(event.to_json())
    assert asked.request_digest is not None
    book = WaiterBook()
    key = (asked.run_id, asked.request_id, str(Phase.PRE_HANDOFF))
    book.register(key, Waiter(concurrent.futures.Future(), answers=answers_request(event)))
    book.take(key, asked)
    approval = (asked.run_id, asked.request_id, str(Phase.APPROVAL))
    other = dataclasses.replace(
        asked, phase=Phase.APPROVAL, outcome=Outcome.ALLOW, reason=Reason.OK,
        request_digest="0" * 16,
    )  # fmt: skip
    book.take(approval, other)
    waiter = Waiter(concurrent.futures.Future(), answers=answers_approval(asked))
    assert book.claim_parked(approval, waiter) is None
