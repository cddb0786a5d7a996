"""Session 9's attacks on the worker side, each against the pure engine or the SDK without a
broker: the signed control plane (commands signed on a clock far ahead), the operator's
client waiting for the worker's record of a tenant's kill switch, and what held."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, TypeVar

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.cli.people_cmds import _report
from baton.cli.signer import CommandRefused
from baton.processors.approvals import request_problem
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.engine import (
    NO_KILLS,
    KillSwitches,
    apply_control,
    apply_policy_update,
    request_digest,
)
from baton.processors.faust_adapter import RunStore
from baton.processors.recorded import input_text
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome, Phase, Reason
from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    HandoffCompleted,
    HandoffRequested,
    KillSwitch,
    KillSwitchReleased,
    PolicyUpdated,
)
from baton.schemas.policy import Policy, parse_policy
from baton.schemas.signing import (
    approval_payload,
    control_payload,
    new_private_key,
    policy_hash,
    public_key_text,
    sign,
)
from baton.streams.sdk import ApproverClient, GovernanceClient
from baton.streams.sdk.base import answers_approval, answers_request
from baton.streams.sdk.operators import OperatorClient
from baton.streams.sdk.waiters import Waiter, WaiterBook
from tests.helpers import handoff as help_handoff
from tests.helpers import wait_for
from tests.unit.test_engine_support import (
    Run,
    at,
    completed,
    denied,
    granted,
    handoff,
    policy_with,
)

pytestmark = pytest.mark.unit

ONCALL = new_private_key()
YEAR_S = 365 * 86400
OPERATORS = f'operators: {{oncall: "{public_key_text(ONCALL)}"}}'


def _ops_policy(extra: str = "") -> Policy:
    return parse_policy(f"{OPERATORS}\n{extra}", "test")


def _switch(
    cls: type[KillSwitch] | type[KillSwitchReleased],
    t: float,
    *,
    scope: str = "global",
    run_id: str | None = None,
    tenant: str | None = None,
    key: Ed25519PrivateKey | None = ONCALL,
) -> KillSwitch | KillSwitchReleased:
    """A command signed by oncall at test time ``t`` (its event_time is its signing time);
    ``key`` None: unsigned."""
    when = at(t)
    target = run_id or tenant or "*"
    event_type = cls.model_fields["type"].default
    payload = control_payload(event_type, scope, target, "oncall", "runaway", when)
    return cls(
        scope=scope,  # type: ignore[arg-type]
        run_id=run_id,
        tenant=tenant,
        operator="oncall",
        reason="runaway",
        signature=sign(key, payload) if key is not None else None,
        event_time=when,
    )


def _update(policy_yaml: str, t: float) -> PolicyUpdated:
    when: datetime = at(t)
    sha = policy_hash(policy_yaml)
    payload = control_payload("policy_updated", "global", "*", "oncall", "", when, sha)
    return PolicyUpdated(
        policy_yaml=policy_yaml,
        operator="oncall",
        policy_sha=sha,
        signature=sign(ONCALL, payload),
        event_time=when,
    )


def _fold(
    commands: list[tuple[KillSwitch | KillSwitchReleased, float]], policy: Policy
) -> tuple[KillSwitches, list[str]]:
    """The kill switches after ``commands`` (each applied at its worker time), and the
    reason of each command's record."""
    kills, reasons = NO_KILLS, []
    for command, now in commands:
        kills, record = apply_control(kills, command, policy, at(now))
        reasons.append(record.reason)
    return kills, reasons


# ------------------------------------------------------------------ signed in the future


def test_a_release_signed_on_a_clock_a_year_ahead_cannot_make_a_later_kill_a_replay() -> None:
    """A careless operator's machine a year ahead signs a release: applied, its time became
    the target's newest, and every kill signed before that time was refused as a replay
    (`control_replayed`): the kill switch failed open for a year."""
    policy = _ops_policy()
    kills, reasons = _fold(
        [
            (_switch(KillSwitch, 0), 0),
            (_switch(KillSwitchReleased, YEAR_S), 10),  # signed a year ahead
            (_switch(KillSwitch, 3600), 3600),  # the on-call's kill an hour later
        ],
        policy,
    )
    assert reasons == [Reason.KILL_SWITCH, Reason.SIGNATURE_EXPIRED, Reason.KILL_SWITCH]
    assert kills.everything


def test_a_run_or_tenant_release_signed_in_the_future_is_refused_and_the_kill_holds() -> None:
    policy = _ops_policy()
    for target in ({"scope": "run", "run_id": "run-1"}, {"scope": "tenant", "tenant": "acme"}):
        kills, reasons = _fold(
            [
                (_switch(KillSwitch, 0, **target), 0),
                (_switch(KillSwitchReleased, 61, **target), 0),  # past the 60 s skew
            ],
            policy,
        )
        assert reasons[1] == Reason.SIGNATURE_EXPIRED, target
        assert kills.killed("run-1", "acme"), target


def test_a_command_within_the_clock_skew_still_counts() -> None:
    kills, reasons = _fold(
        [(_switch(KillSwitch, 0), 0), (_switch(KillSwitchReleased, 60), 0)], _ops_policy()
    )
    assert reasons == [Reason.KILL_SWITCH, Reason.KILL_SWITCH_RELEASED]
    assert not kills.everything


def test_a_policy_signed_on_a_clock_a_year_ahead_cannot_lock_out_later_policies() -> None:
    """A shadow-mode policy signed a year ahead used to be applied, and every policy the
    operators signed before that time (the one turning enforcement back on) refused."""
    policy = _ops_policy()
    shadow = f"{OPERATORS}\nmulti_agent: {{shadow_mode: true}}"
    ahead = apply_policy_update(policy, None, _update(shadow, YEAR_S), at(10))
    assert not ahead.applied
    assert ahead.record is not None and ahead.record.reason == Reason.SIGNATURE_EXPIRED
    assert ahead.policy is policy and ahead.signed_at is None
    strict = f"{OPERATORS}\nmulti_agent: {{max_handoffs: 3}}"
    later = apply_policy_update(ahead.policy, ahead.signed_at, _update(strict, 3600), at(3600))
    assert later.applied and later.policy.version != policy.version


@pytest.mark.xfail(
    strict=True,
    reason="the control topic is read again from its start at every worker start, with the "
    "clock of that start: past the release's signing time the future-dated release is applied "
    "in its place and the kill after it (signed earlier) is refused as a replay; telling them "
    "apart needs a time the writer cannot set (the broker's append time: LogAppendTime on "
    "gov.control, which Tansu 0.6 ignores: a record keeps its producer's CreateTime, "
    "measured) or a memory of refusals, not the reading clock",
)
def test_a_worker_restarted_after_a_future_dated_release_keeps_the_kill_signed_after_it() -> None:
    policy = _ops_policy()
    history = [
        _switch(KillSwitch, 0),
        _switch(KillSwitchReleased, YEAR_S),
        _switch(KillSwitch, 3600),
    ]
    first_read, _ = _fold([(c, t) for c, t in zip(history, (0, 10, 3600), strict=True)], policy)
    assert first_read.everything
    restarted, reasons = _fold([(c, YEAR_S + 100) for c in history], policy)
    assert restarted.everything, reasons


def test_an_unsigned_deployment_takes_commands_whatever_their_time() -> None:
    """Without ``operators`` names are trusted (the ACL is the wall): no time check either."""
    unsigned = parse_policy("", "t")
    release = KillSwitchReleased(scope="global", operator="oncall", event_time=at(YEAR_S))
    kills, record = apply_control(KillSwitches(everything=True), release, unsigned, at(0))
    assert record.reason == Reason.KILL_SWITCH_RELEASED and not kills.everything


# ------------------------------------------------------------------ the operator's client


class _Captured(Exception):
    """Raised by the stand-in ``_command``: the client's wait keys, before any broker."""


def _wait_key_of(**switch: Any) -> tuple[str, KillSwitch | KillSwitchReleased]:
    client = OperatorClient("127.0.0.1:1", key=ONCALL)
    seen: dict[str, Any] = {}

    def command(event: Any, record_run: str, request_id: str, parsed: Any, *_: Any) -> None:
        seen.update(record_run=record_run, request_id=request_id, parsed=parsed)
        raise _Captured

    client._command = command  # type: ignore[method-assign]
    with pytest.raises(_Captured):
        client.kill(operator="OnCall", reason="runaway", **switch)
    return seen["request_id"], seen["parsed"]


@pytest.mark.parametrize(
    "switch",
    [{"tenant": "ACME"}, {"tenant": "Ａｃｍｅ"}, {"tenant": "acme"}, {"run_id": "Run-1"}, {}],
)
def test_the_operator_client_waits_for_the_record_the_worker_publishes(switch: Any) -> None:
    """`baton kill --tenant ACME` waited for a record named after "ACME"; the worker names it
    after the folded tenant, "acme": the kill was applied and the command said no worker
    answered (exit 4), inviting the operator to think the tenant was still running free."""
    if not switch:
        switch = {"everything": True}
    request_id, parsed = _wait_key_of(**switch)
    _, record = apply_control(NO_KILLS, parsed, _ops_policy(), parsed.event_time)
    assert record.reason == Reason.KILL_SWITCH
    assert request_id == record.request_id


# ------------------------------------------------------------------ one request id, two requests

REFUND = "billing.refund.create"
GATED = policy_with(require_approval_for=[REFUND])


class _Message:
    """A decision as the client's reader gets it from gov.decisions."""

    def __init__(self, decision: Decision) -> None:
        self._decision = decision
        self._value = decision.to_json()

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return "gov.decisions"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


_Client = TypeVar("_Client", GovernanceClient, ApproverClient)


def _offline(client: _Client) -> _Client:
    """``client`` with a channel that sends nothing: the test hands its reader the records."""
    channel = client.channel
    channel.connect = lambda: None  # type: ignore[method-assign]
    channel.flush = lambda timeout: 0  # type: ignore[method-assign]

    def submit(*_: Any, wait_key: Any = None, waiter: Any = None, **__: Any) -> None:
        if waiter is not None and wait_key is not None:
            channel.waiters.register(wait_key, waiter)

    channel.submit = submit  # type: ignore[method-assign]
    return client


def _as_published(run: Run, event: HandoffRequested | HandoffCompleted) -> Decision:
    """``run.one(event)`` as the worker publishes it: with its input (the SDK matches it) and
    a chain link (the SDK takes no unchained allow)."""
    return dataclasses.replace(run.one(event), input=input_text(event), chain_hash="c" * 32)


def _offline_client() -> GovernanceClient:
    return _offline(GovernanceClient("127.0.0.1:1", timeout=10))


def _checked_while_read(
    client: GovernanceClient, event: HandoffRequested, read: list[Decision]
) -> Decision:
    """``client.check(event)``, while its reader reads ``read`` (in order)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(client.check, event)
        key = (event.run_id, event.request_id, str(Phase.PRE_HANDOFF))
        wait_for(lambda: client.channel.waiters.awaited(key), 5, message="the check's waiter")
        client.channel._dispatch([_Message(d) for d in read])
        return answer.result(10)


def test_a_check_never_takes_the_allow_of_another_request_under_its_run_and_request_id() -> None:
    """Two requests under one run and request id (another orchestrator's counter, or a writer
    of the requests topic racing a predictable id): the worker allows the first and refuses
    the second (`request_id_reused`), but the second's client took the first's allow, read
    first under the same key, and handed a refund over ungated."""
    run = Run(GATED, run_id="run-9")
    benign = handoff("h1", "t1", "planner", "researcher", run_id="run-9")
    refund = handoff("h1", "refund", "planner", "billing_agent", run_id="run-9", action=REFUND)
    allowed, refused = _as_published(run, benign), _as_published(run, refund)
    assert allowed.outcome == Outcome.ALLOW
    assert (refused.outcome, refused.reason) == (Outcome.STOP, Reason.REQUEST_ID_REUSED)
    answer = _checked_while_read(_offline_client(), refund, [allowed, refused])
    assert (answer.outcome, answer.reason) == (Outcome.STOP, Reason.REQUEST_ID_REUSED)
    assert answer.decision_id == refused.decision_id


def test_a_check_still_takes_its_own_decision_and_a_refusal_that_repeats_nothing() -> None:
    run = Run(GATED, run_id="run-9")
    own = handoff("h1", "t1", "planner", "researcher", run_id="run-9", tenant="acme")
    decided = _as_published(run, own)
    assert _checked_while_read(_offline_client(), own, [decided]) == decided
    # another tenant's event: the refusal names the run's tenant, and still answers it
    other = own.model_copy(update={"tenant": "beta", "request_id": "h2"})
    mismatch = _as_published(run, other)
    assert mismatch.reason == Reason.TENANT_MISMATCH
    assert _checked_while_read(_offline_client(), other, [mismatch]) == mismatch
    # a report's protocol refusal repeats no field of it: it is its answer
    reused = Decision(
        decision_id="d1",
        request_id="h1",
        run_id="run-9",
        tenant="acme",
        phase=Phase.POST_HANDOFF,
        outcome=Outcome.RECORDED,
        reason=Reason.REPLY_NOT_KEPT,
    )
    report = completed("h1", "t1", "researcher", run_id="run-9", tenant="acme")
    reused.input = input_text(report)
    assert answers_request(report)(reused)


def test_an_approval_answer_of_another_request_is_not_parked_for_this_one() -> None:
    """The approval answer of another request under the same run and request id (another
    approval id) was parked for this request's ``wait_for_approval``, which returned it."""
    run = Run(GATED, run_id="run-9")
    first = handoff("h1", "refund", "planner", "billing_agent", run_id="run-9", action=REFUND)
    asked = run.one(first)
    assert asked.outcome == Outcome.APPROVAL_REQUIRED
    granted_first = run.one(granted(asked.approval_id or "", "finance_lead", run_id="run-9"))
    ours = dataclasses.replace(asked, approval_id="apr_ours", decision_id="d-ours")
    book = WaiterBook()
    key = (ours.run_id, ours.request_id, str(Phase.PRE_HANDOFF))
    book.register(key, Waiter(concurrent.futures.Future()))
    book.take(key, ours)  # our approval_required: its approval's answer is parked for us
    approval_key = (ours.run_id, ours.request_id, str(Phase.APPROVAL))
    book.take(approval_key, granted_first)
    assert book.parked(approval_key) is None
    waiter = Waiter(concurrent.futures.Future(), answers=answers_approval(ours))
    assert book.claim_parked(approval_key, waiter) is None
    assert book.take(approval_key, granted_first) == []


# ------------------------------------------------------------------ an approval answered already


def _offline_approver() -> ApproverClient:
    return _offline(ApproverClient("127.0.0.1:1", timeout=3))


def _answered_while_read(
    answer: Any, asked: Decision, approver: str, read: list[Decision]
) -> Decision:
    """``answer(asked, approver=…, wait=True)`` while the reader reads ``read``."""
    client = answer.__self__
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(answer, asked, approver=approver, wait=True, timeout=3)
        key = (asked.run_id, asked.request_id, str(Phase.APPROVAL))
        wait_for(lambda: client.channel.waiters.awaited(key), 5, message="the answer's waiter")
        client.channel._dispatch([_Message(d) for d in read])
        return future.result(10)  # type: ignore[no-any-return]


@pytest.mark.parametrize("late", ["after_another_approver", "after_its_ttl"])
def test_an_answer_to_an_approval_resolved_already_gets_the_record_that_resolved_it(
    late: str,
) -> None:
    """The worker answers a grant or denial of a resolved approval with the record that
    resolved it (another approver's grant, the expiry): the client waited for a record naming
    its own approver, got none, and said no worker had answered (`baton approve`/`deny`:
    exit 4, "is a worker running?"), while the answer had been read and did not count."""
    run = Run(GATED, run_id="run-9")
    refund = handoff("h1", "refund", "planner", "billing_agent", run_id="run-9", action=REFUND)
    asked = run.one(refund)
    asked.input = input_text(refund)  # as the worker publishes it (the SDK signs no other)
    if late == "after_another_approver":
        resolved = run.one(granted(asked.approval_id or "", "finance_lead", run_id="run-9", t=1), 1)
        again = run.one(denied(asked.approval_id or "", "cfo", run_id="run-9", t=2), 2)
    else:
        again = run.one(denied(asked.approval_id or "", "cfo", run_id="run-9", t=2000), 2000)
        resolved = again
        assert resolved.reason == Reason.APPROVAL_EXPIRED
    assert again == resolved  # the worker's answer to cfo's denial
    got = _answered_while_read(_offline_approver().deny, asked, "cfo", [again])
    assert got.decision_id == resolved.decision_id and got.approver != "cfo"


def test_the_command_line_says_an_answer_did_not_count_when_another_resolved_it() -> None:
    run = Run(GATED, run_id="run-9")
    asked = run.one(
        handoff("h1", "refund", "planner", "billing_agent", run_id="run-9", action=REFUND)
    )
    resolved = run.one(granted(asked.approval_id or "", "finance_lead", run_id="run-9", t=1), 1)
    with pytest.raises(CommandRefused, match="resolved before this deny"):
        _report("approval", "deny", asked, resolved, "CFO")
    _report("approval", "grant", asked, resolved, "Finance_Lead")  # its own: counted


# ------------------------------------------------------------------ the control fold, at random

MALLORY = new_private_key()
SLOTS = [("global", None, None), ("tenant", None, "acme"), ("run", "run-1", None)]
_command = st.tuples(
    st.sampled_from([KillSwitch, KillSwitchReleased]),
    st.sampled_from(SLOTS),
    st.sampled_from(["oncall", "mallory", "unsigned"]),
    st.integers(-3600, 120),  # signed this many seconds from the worker's clock
    st.integers(0, 600),  # the worker's clock advances this much first
    st.booleans(),  # send an earlier command again instead (a replay), when there is one
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_command, max_size=25))
def test_the_kill_switches_follow_the_signed_commands_in_order_never_a_replay_or_forgery(
    steps: list[Any],
) -> None:
    """Folding any mix of signed, forged, unsigned, replayed and early or late commands: a
    command counts only when oncall signed it, no more than 60 s ahead of the worker's clock,
    later than the last command applied to its target; a kill holds until such a release."""
    policy = _ops_policy()
    kills, now, sent = NO_KILLS, 0, []
    latest: dict[tuple[str, str], float] = {}
    on: dict[tuple[str, str], bool] = {}
    for cls, (scope, run_id, tenant), signer, ahead, advance, replay in steps:
        now += advance
        if replay and sent:
            command = sent[len(sent) // 2]
        else:
            key = {"oncall": ONCALL, "mallory": MALLORY}.get(signer)
            command = _switch(cls, now + ahead, scope=scope, run_id=run_id, tenant=tenant, key=key)
            sent.append(command)
        slot = (command.scope, command.target)
        signed = command.event_time.timestamp() - at(0).timestamp()
        counts = (
            command.signature is not None
            and command.signature == _switch(
                type(command), signed, scope=command.scope, run_id=command.run_id,
                tenant=command.tenant,
            ).signature
            and signed <= now + 60
            and (slot not in latest or signed > latest[slot])
        )  # fmt: skip
        kills, record = apply_control(kills, command, policy, at(now))
        applied = record.reason in (Reason.KILL_SWITCH, Reason.KILL_SWITCH_RELEASED)
        assert applied == counts, (command, record.reason, record.detail)
        if counts:
            latest[slot], on[slot] = signed, type(command) is KillSwitch
    assert kills.everything == on.get(("global", "*"), False)
    assert ("acme" in kills.tenants) == on.get(("tenant", "acme"), False)
    assert ("run-1" in kills.runs) == on.get(("run", "run-1"), False)


# ------------------------------------------------------------------ answers the client cannot read


def test_an_answer_a_fail_open_client_cannot_read_is_a_stop_at_once_never_an_allow() -> None:
    """A record under the check's key that is no Decision this client reads (a newer worker's
    outcome, a damaged record) was skipped: the check waited out its timeout and a fail-open
    client returned `allow governance_unavailable` although Baton had answered."""
    client = _offline_client()
    client.options = dataclasses.replace(client.options, fail_open=True, timeout_s=30.0)
    run = Run(GATED, run_id="run-9")
    refund = handoff("h1", "refund", "planner", "billing_agent", run_id="run-9", action=REFUND)
    answer = run.one(refund)
    newer = _Message(answer)
    doc = orjson.loads(newer.value())
    newer._value = orjson.dumps({**doc, "outcome": "defer"})  # an outcome this client lacks
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(client.check, refund)
        key = (refund.run_id, refund.request_id, str(Phase.PRE_HANDOFF))
        wait_for(lambda: client.channel.waiters.awaited(key), 5, message="the check's waiter")
        client.channel._dispatch([newer])
        got = future.result(60)
    assert (got.outcome, got.reason) == (Outcome.STOP, Reason.GOVERNANCE_UNAVAILABLE), got
    assert "not a decision this client reads" in (got.detail or "")
    assert time.monotonic() - started < 10  # at once, not at the 30 s timeout


@pytest.mark.parametrize(
    "forged",
    [
        {"run_id": ["run-9"], "request_id": "h1", "phase": "pre_handoff"},
        {"run_id": "run-9", "request_id": {"h": 1}, "phase": "pre_handoff"},
        {"run_id": "run-9", "request_id": "h1", "phase": ["pre_handoff"]},
    ],
)
def test_a_record_whose_ids_are_not_text_never_ends_the_clients_reader(forged: Any) -> None:
    """A record on gov.decisions whose run id, request id or phase is a list or a map made
    the key unhashable: the reader thread raised, and every check of every client reading
    that partition failed closed from then on (`governance_unavailable`), until restarted."""
    client = _offline_client()
    run = Run(GATED, run_id="run-9")
    own = handoff("h1", "t1", "planner", "researcher", run_id="run-9")
    decided = _as_published(run, own)
    junk = _Message(decided)
    junk._value = orjson.dumps({**orjson.loads(junk.value()), **forged})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(client.check, own)
        key = (own.run_id, own.request_id, str(Phase.PRE_HANDOFF))
        wait_for(lambda: client.channel.waiters.awaited(key), 5, message="the check's waiter")
        client.channel._dispatch([junk, _Message(decided)])
        assert future.result(10) == decided


# ------------------------------------------------------------------ the approval gate, at random

FINANCE, PLANNER_KEY, BILLING_KEY = new_private_key(), new_private_key(), new_private_key()
KEYS = {"finance_lead": FINANCE, "planner": PLANNER_KEY, "billing_agent": BILLING_KEY}
SIGNED_GATE = parse_policy(
    f"""
multi_agent:
  require_approval_for: [{REFUND}]
  approval:
    ttl_seconds: 300
    max_signature_age_seconds: 600
    approvers: [finance_lead, planner, billing_agent]
    keys:
      finance_lead: "{public_key_text(FINANCE)}"
      planner: "{public_key_text(PLANNER_KEY)}"
      billing_agent: "{public_key_text(BILLING_KEY)}"
""",
    "test",
)
AGENTS9 = ["planner", "billing_agent", "researcher"]
_step = st.one_of(
    st.tuples(
        st.just("ask"),
        st.sampled_from(["h1", "h2", "h3"]),
        st.sampled_from(AGENTS9),
        st.sampled_from(AGENTS9),
        st.sampled_from([REFUND, None]),
    ),
    st.tuples(
        st.just("answer"),
        st.sampled_from(["grant", "deny"]),
        st.sampled_from([*KEYS, "intern"]),  # who it claims to be
        st.sampled_from(["own", "own", *KEYS, None]),  # whose key signs it
        st.one_of(  # signed this far from the worker's clock
            st.sampled_from([0, 5, 59, 61, -59, -61, -599, -601]), st.integers(-1000, 1000)
        ),
        st.sampled_from(["pending", "pending", "pending", "digest", "run", "junk"]),
    ),
    st.tuples(st.just("tick"), st.integers(1, 400)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_step, max_size=20), st.integers(0, 10_000))
def test_a_gated_handoff_is_allowed_only_by_a_signed_grant_of_a_listed_uninvolved_approver(
    steps: list[Any], pick: int
) -> None:
    """Any mix of gated and plain requests (reused ids, self- and beneficiary approvers),
    answers claimed by anyone, signed by anyone's key or none, early, late, for another
    request, run or approval, and clock steps past TTL: a refund is allowed only in the
    approval phase, by a grant its claimed approver signed with its own key over this run,
    approval and request, neither party to the handoff, signed within 60 s after the ask and
    ahead of the clock and younger than max_signature_age, before the TTL and the first answer."""
    run, now, asked = Run(SIGNED_GATE, run_id="run-9"), 0, []
    pending: dict[str, tuple[HandoffRequested, float]] = {}
    granted: dict[str, str] = {}
    for step in steps:
        if step[0] == "tick":
            now += step[1]
            continue
        if step[0] == "ask":
            _, rid, giver, taker, action = step
            request = handoff(rid, "t-" + rid, giver, taker, run_id="run-9", action=action, t=now)
            for d in run.send(request, now):
                if d.phase is Phase.PRE_HANDOFF and d.outcome is Outcome.ALLOW:
                    assert action is None, d
                if d.outcome is Outcome.APPROVAL_REQUIRED and d.approval_id:
                    pending.setdefault(d.approval_id, (request, now))
                    asked.append((d.approval_id, request))
            continue
        _, verdict, approver, signer, ahead, target = step
        signer = approver if signer == "own" and approver in KEYS else signer
        signer = None if signer == "own" else signer
        if not asked:
            continue
        approval_id, request = asked[pick % len(asked)]
        digest = request_digest(request)
        signed_run, signed_id = "run-9", approval_id
        if target == "digest":
            digest = "0" * 16
        elif target == "run":
            signed_run = "run-other"
        elif target == "junk":
            signed_id = "apr_junk"
        when = at(now + ahead)
        payload = approval_payload(signed_id, signed_run, digest, verdict, approver, when)
        cls = ApprovalGranted if verdict == "grant" else ApprovalDenied
        answer = cls(
            approval_id=approval_id,
            run_id="run-9",
            approver=approver,
            signature=sign(KEYS[signer], payload) if signer else None,
            request_digest=digest,
            event_time=when,
        )
        was = pending.get(approval_id)
        for d in run.send(answer, now):
            if d.phase is not Phase.APPROVAL or d.outcome is not Outcome.ALLOW:
                continue
            assert d.request_id == request.request_id
            if approval_id in granted:  # a repeat is answered with the grant's record
                assert d.decision_id == granted[approval_id], d
                continue
            assert was is not None, ("allowed twice, or never asked", d)
            granted[approval_id] = d.decision_id
            req, asked_at = was
            assert verdict == "grant" and signer == approver and target == "pending", d
            assert approver not in (req.from_agent, req.to_agent), d
            assert asked_at - 60 <= now + ahead <= now + 60, d
            assert now - (now + ahead) <= 600 and now < asked_at + 300, d
        if any(
            d.phase is Phase.APPROVAL and d.outcome is not Outcome.RECORDED
            for d in run.state.replies(f"a:{approval_id}") or []  # type: ignore[union-attr]
        ):
            pending.pop(approval_id, None)


# ------------------------------------------------------------------ what an approver signs


def _asked_row() -> tuple[Decision, HandoffRequested]:
    """An approval_required decision as the audit holds it (with its input), and a
    handoff an attacker would rather see approved."""
    run = Run(GATED, run_id="run-9")
    refund = handoff(
        "h1", "refund", "planner", "billing_agent", run_id="run-9", action=REFUND, tools=[REFUND]
    )
    asked = run.one(refund)
    asked.input = input_text(refund)
    other = refund.model_copy(update={"to_agent": "researcher", "tools": None})
    return asked, other


def test_an_approval_row_as_the_worker_wrote_it_holds_together() -> None:
    asked, _ = _asked_row()
    assert asked.outcome == Outcome.APPROVAL_REQUIRED
    assert request_problem(asked) is None


@pytest.mark.parametrize("forgery", ["shown", "digest", "input", "no_input", "not_a_request"])
def test_baton_approve_refuses_to_sign_a_row_that_shows_one_request_and_names_another(
    forgery: str,
) -> None:
    """A row written into the audit through gov.decisions (the sink stores what the topic
    holds) under a real approval id: `baton approve` signed its request_digest while the
    approver had read its other columns, so it could show one handoff and get another one
    approved (the worker checks the signature against the digest only)."""
    asked, other = _asked_row()
    forged = {
        "shown": {"to_agent": "researcher"},  # shows a harmless handoff, signs the refund
        "digest": {"request_digest": request_digest(other)},
        "input": {"input": input_text(other)},
        "no_input": {"input": None},
        "not_a_request": {"input": '{"type": "run_finished", "run_id": "run-9"}'},
    }[forgery]
    row = dataclasses.replace(asked, **forged)
    assert request_problem(row) is not None, forgery
    if row.input is not None:  # the SDK's approver refuses it too, before signing anything
        with pytest.raises(ValueError, match="does not hold together"):
            _offline_approver().grant(row, approver="finance_lead")


# ------------------------------------------------------------------ another run's changelog record

CHANGELOG_NOW = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


def _restored_store(records: dict[bytes, bytes]) -> RunStore:
    """A worker's run store as Faust's recovery leaves it: changelog records as bytes."""
    table = SimpleNamespace(data=SimpleNamespace(data=dict(records), _key_partition={}))
    return RunStore(table, 1)


def test_a_changelog_record_copied_under_another_runs_key_is_unreadable_for_that_run() -> None:
    """A writer of the changelog copies run B's real record under run A's key: after a
    rebalance A's events were decided on B's state (B's budget, tasks and chain) and their
    decisions published as run B's, forking B's audit chain and never reaching A's client."""
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(policy_with(), 1, states, worker="w")
    b_event = help_handoff("run-b", 1, "t1", event_time=CHANGELOG_NOW)
    out = proc.process(
        [InputRecord("gov.handoff.requests", 0, 1, b"run-b", b_event.to_json())], CHANGELOG_NOW
    )
    b_record = out.encoded[b"run-b"]
    store = _restored_store({b"run-a": b_record, b"run-b": b_record})
    restored = BatchProcessor(policy_with(), 1, store, worker="w2")
    a_event = help_handoff("run-a", 1, "t9", event_time=CHANGELOG_NOW)
    out = restored.process(
        [InputRecord("gov.handoff.requests", 0, 2, b"run-a", a_event.to_json())], CHANGELOG_NOW
    )
    assert [d.run_id for _, d in out.decisions] == []
    assert [letter.kind for letter in out.dead_letters] == ["state_unreadable"]
    assert "run-b" in orjson.loads(out.dead_letters[0].value)["error"]
    # run B's own record still reads
    assert store.get(b"run-b").run_id == "run-b"


_AWAITED = Decision("d", "h1", "run-9", "t", Phase.PRE_HANDOFF, Outcome.STOP, "s")
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.builds(
                lambda doc, run, req, phase: orjson.dumps(
                    {**doc, "run_id": run, "request_id": req, "phase": phase}
                ),
                st.dictionaries(st.text(max_size=6), _json, max_size=4),
                st.one_of(st.just("run-9"), _json),
                st.one_of(st.just("h1"), _json),
                st.one_of(st.just("pre_handoff"), _json),
            ),
            st.builds(  # the awaited decision, some of its fields replaced by anything
                lambda doc: orjson.dumps({**orjson.loads(_AWAITED.to_json()), **doc}),
                st.dictionaries(st.sampled_from(["outcome", "reason", "tenant", "x"]), _json),
            ),
        ),
        max_size=6,
    )
)
def test_no_record_on_gov_decisions_ends_the_reader_or_answers_another_key(
    values: list[bytes],
) -> None:
    """Whatever a writer of gov.decisions puts there, the client's reader goes on, and a
    waiter is answered only by a record under its own run, request id and phase."""
    client = _offline_client()
    key = ("run-9", "h1", "pre_handoff")
    waiter = Waiter(concurrent.futures.Future())
    client.channel.waiters.register(key, waiter)
    messages = [_Message(Decision("d", "x", "x", "t", Phase.PRE_HANDOFF, Outcome.STOP, "s"))]
    for value in values:
        messages.append(_Message(messages[0]._decision))
        messages[-1]._value = value
    client.channel._dispatch(messages[1:])
    if waiter.future.done():
        answer = waiter.future.result()
        if isinstance(answer, Decision):
            assert (answer.run_id, answer.request_id, str(answer.phase)) == key
