"""The seed's OnceOnly-style blocks load and are enforced by the same rules as multi_agent keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.main import _register, cli
from baton.processors.engine import rules_for
from baton.schemas.decision import Outcome, Reason
from baton.schemas.errors import PolicyError
from baton.schemas.policy import Policy, parse_policy
from tests.unit.test_engine_support import Run, completed

pytestmark = pytest.mark.unit

SEED_STYLE = """\
budgets: {max_steps: 10, max_tool_calls: 120, max_seconds: 900, max_usd: 30}
policy: {tool_allowlist: ["search.*", "crm.read"]}
writes: {require_approval: ["billing.*"]}
controls: {kill_switch: true}
"""

SAME_AS_MULTI_AGENT = """\
multi_agent:
  max_steps: 10
  shared_max_tool_calls: 120
  max_run_seconds: 900
  shared_max_usd: 30
  tools: {allow: ["search.*", "crm.read"]}
  require_approval_for: ["billing.*"]
"""


def test_the_seed_block_is_the_same_policy_as_its_multi_agent_keys() -> None:
    seed, ours = parse_policy(SEED_STYLE), parse_policy(SAME_AS_MULTI_AGENT)
    assert seed.multi_agent == ours.multi_agent
    assert seed.version == ours.version  # the audit names them alike


def test_each_seed_key_is_enforced_by_its_rule() -> None:
    run = Run(parse_policy(SEED_STYLE))
    tool = run.handoff("t1", "planner", "writer", tool="shell.exec")
    assert (tool.reason, tool.detail) == (
        Reason.TOOL_NOT_PERMITTED,
        "tool shell.exec is not permitted for writer (tools.allow)",
    )
    gate = run.handoff("t2", "planner", "billing_agent", action="billing.refund.create")
    assert gate.outcome == Outcome.APPROVAL_REQUIRED
    allowed = run.handoff("t3", "planner", "writer", tool="search.web")
    over = run.one(completed(allowed.request_id, "t3", "writer", steps=11, t=1))
    assert (over.outcome, over.reason) == (Outcome.STOP, Reason.STEP_BUDGET_EXCEEDED)
    late = Run(parse_policy(SEED_STYLE)).handoff("t1", "a", "b", t=0)
    assert late.outcome == Outcome.ALLOW


def test_require_approval_true_asks_for_every_action_and_tool() -> None:
    policy = parse_policy("writes: {require_approval: true}")
    assert policy.multi_agent.require_approval_for == ["*"]
    d = Run(policy).handoff("t1", "planner", "writer", action="crm.read")
    assert d.outcome == Outcome.APPROVAL_REQUIRED
    # "*" gates every handoff, one naming no action or tool too (fail closed: Baton cannot
    # tell a write from a read)
    assert Run(policy).handoff("t1", "planner", "writer").outcome == Outcome.APPROVAL_REQUIRED


def test_require_approval_globs_are_added_to_the_multi_agent_ones() -> None:
    policy = parse_policy(
        "writes: {require_approval: [a.*, b.*]}\nmulti_agent: {require_approval_for: [b.*, c]}"
    )
    assert policy.multi_agent.require_approval_for == ["b.*", "c", "a.*"]


def test_tenants_inherit_the_seed_blocks() -> None:
    policy = parse_policy(SEED_STYLE + "tenants: {acme: {max_handoffs: 3}}")
    acme = rules_for(policy, "acme")
    assert (acme.max_steps, acme.shared_max_usd, acme.max_handoffs) == (10, 30, 3)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "budgets: {max_usd: 10}\nmulti_agent: {shared_max_usd: 30}",
            "budgets.max_usd: 10 conflicts with multi_agent.shared_max_usd: 30; set one of them",
        ),
        (
            "policy: {tool_allowlist: [a]}\nmulti_agent: {tools: {allow: [b]}}",
            'policy.tool_allowlist: ["a"] conflicts with multi_agent.tools.allow: ["b"]',
        ),
        (
            "controls: {kill_switch: false}",
            "controls.kill_switch: has no meaning here: Baton's kill switch is always on",
        ),
        (
            "writes: {require_approval: sometimes}",
            'writes.require_approval: must be true, false or a list of globs, got "sometimes"',
        ),
        (
            "budgets: {max_stepz: 3}",
            "budgets.max_stepz: unknown key; did you mean max_steps?",
        ),
        ("budgets: {max_usd: -1}", "budgets.max_usd: must be a number >= 0, got -1"),
        ("controls: {rate_limit: 5}", "controls.rate_limit: unknown key (known keys: kill_switch)"),
    ],
)
def test_what_has_no_meaning_here_is_refused_naming_the_key(text: str, problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "seed.yaml")
    assert problem in str(caught.value)


def test_agreeing_keys_are_not_a_conflict() -> None:
    policy = parse_policy("budgets: {max_usd: 30}\nmulti_agent: {shared_max_usd: 30.0}")
    assert policy.multi_agent.shared_max_usd == 30


def test_a_policy_validated_directly_folds_the_blocks_too() -> None:
    # never a seed block silently left unenforced, whichever way the policy is built
    policy = Policy.model_validate({"budgets": {"max_steps": 5}})
    assert policy.multi_agent.max_steps == 5
    with pytest.raises(ValueError, match=r"conflicts with multi_agent\.max_steps"):
        Policy.model_validate({"budgets": {"max_steps": 5}, "multi_agent": {"max_steps": 6}})


def test_policy_check_accepts_the_seed_block_and_shows_the_mapping(tmp_path: Path) -> None:
    _register()
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_STYLE)
    result = CliRunner().invoke(cli, ["policy", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "  max_steps: 10\n" in result.output
    assert "  budgets.max_usd -> multi_agent.shared_max_usd\n" in result.output
    assert "  policy.tool_allowlist -> multi_agent.tools.allow\n" in result.output
    path.write_text("controls: {kill_switch: false}\n")
    refused = CliRunner().invoke(cli, ["policy", "check", str(path)])
    assert refused.exit_code == 2 and "controls.kill_switch" in refused.stderr


def test_the_schema_export_carries_every_new_field_and_reason() -> None:
    from baton.schemas.export import json_schemas

    schemas = json_schemas()
    policy = schemas["policy.schema.json"]
    limits = policy["$defs"]["MultiAgentPolicy"]["properties"]
    for key in ("max_bounces", "max_steps", "reservation_ttl_seconds", "release_ownership_on"):
        assert limits[key]["description"], key
    assert "tools" in policy["$defs"]["RolePolicy"]["properties"]
    assert {"budgets", "policy", "writes", "controls"} <= set(policy["properties"])
    assert "tools" in schemas["handoff_requested.schema.json"]["properties"]
    assert {"steps", "tools"} <= set(schemas["handoff_completed.schema.json"]["properties"])
    reasons = schemas["decision.schema.json"]["properties"]["reason"]["enum"]
    assert {"step_budget_exceeded", "ownership_released", "reservation_expired"} <= set(reasons)


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (None, "180feadbf1d40980"),
        (
            "multi_agent: {roles: {a: {may_own: [x]}}}\ntenants: {acme: {max_handoffs: 3}}",
            "64c7407c8f765b58",
        ),
    ],
)
def test_a_policy_keeps_its_version_when_keys_are_added_to_the_model(
    text: str | None, version: str
) -> None:
    # the versions Baton computed before max_steps, max_bounces, reservation_ttl_seconds,
    # release_ownership_on and roles.<agent>.tools existed: the audit and replay find a
    # policy by its version, so a key added later must not change it (list it in
    # schemas/policy.py _ADDED_LATER with its default)
    from baton.schemas.policy import DEFAULT_POLICY_YAML

    assert parse_policy(text if text is not None else DEFAULT_POLICY_YAML).version == version
