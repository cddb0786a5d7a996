"""The engine's fast constructions stay faithful: the decision builder sets every field of
``Decision``, and a policy's compiled form belongs to that policy object only."""

from __future__ import annotations

import copy
import pickle
from dataclasses import fields

import pytest

from baton.processors.decision_builder import DecisionContext, Origin, build_decision
from baton.processors.engine import NO_KILLS, rules_for
from baton.processors.state import RunState
from baton.schemas.decision import DECISION_FIELDS, Decision, Outcome, Phase, Reason
from baton.schemas.policy import Policy, parse_policy
from baton.schemas.signing import new_private_key, public_key_text
from tests.unit.test_engine_support import at, handoff, policy_with

pytestmark = pytest.mark.unit


def test_the_builder_sets_every_decision_field_as_the_constructor_would() -> None:
    policy = policy_with(max_handoffs=3)
    st = RunState.new("run-1", "acme", at(0).timestamp())
    st.spent_usd, st.handoff_count = 1.25, 2
    ctx = DecisionContext(rules_for(policy, "acme"), at(5), at(5).timestamp(), NO_KILLS,
                          Origin("w1", 3, 99))  # fmt: skip
    req = handoff("r1", "t1", "planner", "billing", tool="crm.read", action="refund")

    built = build_decision(st, ctx, "r1", Phase.PRE_HANDOFF, Outcome.STOP,
                           Reason.HANDOFF_BUDGET_EXCEEDED, req.event_time, req, owner="billing",
                           depth=2, detail="handoff 3 > max_handoffs 2")  # fmt: skip

    # a field added to Decision and not set by the builder cannot be read: this fails first
    values = {name: getattr(built, name) for name in DECISION_FIELDS}
    assert {f.name for f in fields(Decision)} == set(values)
    assert built == Decision(**values)
    assert (built.worker, built.partition, built.offset) == ("w1", 3, 99)
    assert (built.from_agent, built.to_agent, built.tool, built.action) == (
        "planner", "billing", "crm.read", "refund",
    )  # fmt: skip
    assert built.fallback is not None and built.policy_version == policy.version
    assert (built.spent_usd, built.handoff_count, built.reemitted) == (1.25, 2, False)


def _keyed_policy() -> Policy:
    key = public_key_text(new_private_key())
    return parse_policy(
        f"multi_agent: {{approval: {{keys: {{boss: '{key}'}}}}}}\n"
        "tenants: {acme: {max_handoffs: 3}}"
    )


def test_a_policy_is_compiled_once_and_its_copies_compile_their_own() -> None:
    policy = _keyed_policy()
    rules = rules_for(policy, "acme")
    assert rules_for(policy, "acme") is rules
    assert rules.max_handoffs == 3 and rules_for(policy, "other").max_handoffs != 3

    changed = policy.model_copy(update={"tenants": {}})
    assert rules_for(changed, "acme").max_handoffs != 3
    for twin in (copy.deepcopy(policy), pickle.loads(pickle.dumps(policy))):
        # the replay pool pickles policies: parsed keys do not pickle, the form is rebuilt
        assert twin == policy
        assert rules_for(twin, "acme") is not rules and rules_for(twin, "acme").max_handoffs == 3
    assert "_baton" not in policy.model_dump_json()
