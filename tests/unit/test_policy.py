"""Policy YAML: the seed block loads as is; every mistake names its key path, value and
expectation; ``baton policy check`` and ``baton schema export`` behave as documented."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from baton.cli.main import _register, cli
from baton.processors.engine import rules_for
from baton.schemas.decision import Fallback
from baton.schemas.errors import BatonError, PolicyError
from baton.schemas.policy import DEFAULT_POLICY_YAML, load_policy, parse_policy

pytestmark = pytest.mark.unit

SEED_BLOCK = """\
multi_agent:
  max_agents_per_run: 4
  max_handoffs: 8
  max_delegation_depth: 3
  shared_max_usd: 30
  shared_max_tool_calls: 120
  require_approval_for:
    - billing.refund.create
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    return info.value.problems


# ------------------------------------------------------------------ loading


def test_seed_block_loads_as_is() -> None:
    limits = parse_policy(SEED_BLOCK).multi_agent
    assert limits.max_agents_per_run == 4
    assert limits.max_handoffs == 8
    assert limits.max_delegation_depth == 3
    assert limits.shared_max_usd == 30
    assert limits.shared_max_tool_calls == 120
    assert limits.require_approval_for == ["billing.refund.create"]
    # and the safe defaults around it
    assert limits.fallback == Fallback.SINGLE_AGENT
    assert not limits.shadow_mode and not limits.detect_delegation_cycles
    assert limits.approval.ttl_seconds == 900


def test_without_a_file_the_seed_policy_is_in_force() -> None:
    assert load_policy(None) == parse_policy(SEED_BLOCK)
    assert load_policy(None).version == parse_policy(DEFAULT_POLICY_YAML).version


def test_version_changes_with_the_policy_and_not_with_formatting() -> None:
    seed = parse_policy(SEED_BLOCK)
    reformatted = parse_policy(
        "multi_agent: {max_handoffs: 8, max_agents_per_run: 4, max_delegation_depth: 3,\n"
        "  shared_max_usd: 30.0, shared_max_tool_calls: 120,\n"
        "  require_approval_for: [billing.refund.create]}\n"
    )
    assert seed.version == reformatted.version
    assert seed.version != parse_policy(SEED_BLOCK.replace("8", "9")).version


def test_deployment_keys_load() -> None:
    policy = parse_policy(
        SEED_BLOCK
        + """\
  max_run_seconds: 3600
  approval: {ttl_seconds: 300, approvers: ["finance_*"], allow_self_approval: false}
  roles:
    billing_agent: {may_own: ["refund_*"], may_delegate_to: []}
  tools: {allow: ["*"], block: ["shell.*"]}
  detect_delegation_cycles: true
  fallback: constrained
  fallback_by_reason: {ownership_conflict: single_agent}
  shadow_mode: true
tenants:
  acme: {max_handoffs: 20}
label: refunds need approval
"""
    )
    assert policy.tenants["acme"].max_handoffs == 20
    assert policy.tenants["acme"].max_run_seconds == 3600  # inherited
    # what the engine runs: the policy's compiled form
    assert rules_for(policy, "acme").max_handoffs == 20
    assert rules_for(policy, "globex").max_handoffs == 8
    assert rules_for(policy, "globex").fallback_for("ownership_conflict") == Fallback.SINGLE_AGENT
    assert rules_for(policy, "acme").fallback_for("handoff_budget_exceeded") == Fallback.CONSTRAINED
    assert rules_for(policy, "acme").needs_approval(None, "billing.refund.create")
    assert not rules_for(policy, "acme").needs_approval("billing.refund.read", None)


def test_tenant_override_of_one_nested_key_keeps_the_others() -> None:
    policy = parse_policy(
        "multi_agent:\n"
        "  approval: {ttl_seconds: 900, approvers: [finance_*]}\n"
        "  tools: {block: [shell.*]}\n"
        "tenants:\n"
        "  acme: {approval: {ttl_seconds: 60}, tools: {allow: [search.*, shell.ls]}}\n"
    )
    acme = policy.tenants["acme"]
    # a shorter TTL must not open approvals to anyone, an allow list must not drop the blocks
    assert acme.approval.ttl_seconds == 60
    assert acme.approval.approvers == ["finance_*"]
    assert acme.tools.allow == ["search.*", "shell.ls"] and acme.tools.block == ["shell.*"]
    assert acme.tool_refusal("any_agent", ["shell.ls"]) == (
        "tool shell.ls is not permitted for any_agent (tools.block)"
    )


def test_tenant_list_replaces_the_default_list() -> None:
    policy = parse_policy(SEED_BLOCK + "tenants:\n  acme: {require_approval_for: [payroll.*]}\n")
    assert policy.tenants["acme"].require_approval_for == ["payroll.*"]


def test_empty_file_means_no_limits() -> None:
    assert parse_policy("").multi_agent.max_handoffs is None


# ------------------------------------------------------------------ bad values


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("multi_agent:\n  max_handoffs: eight\n",
         'multi_agent.max_handoffs: must be an integer >= 0, got "eight"'),
        ("multi_agent:\n  max_handoffs: -1\n",
         "multi_agent.max_handoffs: must be an integer >= 0, got -1"),
        ("multi_agent:\n  max_handoffs: 8.5\n",
         "multi_agent.max_handoffs: must be an integer >= 0, got 8.5"),
        ("multi_agent:\n  max_agents_per_run: true\n",
         "multi_agent.max_agents_per_run: must be an integer >= 0, got true"),
        ("multi_agent:\n  shared_max_usd: -5\n",
         "multi_agent.shared_max_usd: must be a number >= 0, got -5"),
        ("multi_agent:\n  shared_max_usd: .nan\n",
         "multi_agent.shared_max_usd: must be a finite number, got nan"),
        ("multi_agent:\n  approval: {ttl_seconds: 0}\n",
         "multi_agent.approval.ttl_seconds: must be a number > 0, got 0"),
        ("multi_agent:\n  fallback: retry\n",
         "multi_agent.fallback: must be one of 'single_agent' or 'constrained', got \"retry\""),
        ("multi_agent:\n  require_approval_for: billing.*\n",
         'multi_agent.require_approval_for: must be a list, got "billing.*"'),
        ("multi_agent:\n  shadow_mode: maybe\n",
         'multi_agent.shadow_mode: must be true or false, got "maybe"'),
        ("tenants:\n  acme: {max_handoffs: lots}\n",
         'tenants.acme.max_handoffs: must be an integer >= 0, got "lots"'),
        ("multi_agent: [1]\n", "multi_agent: must be a mapping, got [1]"),
        ("tenants: {acme: 5}\n", "tenants.acme: must be a mapping, got 5"),
    ],
)  # fmt: skip
def test_bad_value_names_key_path_value_and_expectation(text: str, problem: str) -> None:
    assert _problems(text) == [problem]


@pytest.mark.parametrize(
    ("text", "path", "hint"),
    [
        ("multi_agent:\n  max_handofs: 8\n", "multi_agent.max_handofs", "max_handoffs"),
        ("multi_agnt:\n  max_handoffs: 8\n", "multi_agnt", "multi_agent"),
        ("multi_agent:\n  tools: {blok: [x]}\n", "multi_agent.tools.blok", "block"),
        ("multi_agent:\n  roles: {a: {may_ow: [x]}}\n", "multi_agent.roles.a.may_ow", "may_own"),
        ("tenants:\n  acme: {shared_max_ud: 3}\n", "tenants.acme.shared_max_ud", "shared_max_usd"),
    ],
)
def test_unknown_key_suggests_the_key_that_was_meant(text: str, path: str, hint: str) -> None:
    [problem] = _problems(text)
    assert problem.startswith(f"{path}: unknown key; did you mean {hint}?")


def test_misspelt_reason_in_fallback_by_reason_is_refused() -> None:
    [problem] = _problems("multi_agent:\n  fallback_by_reason: {ownership_conflit: constrained}\n")
    assert problem.startswith(
        "multi_agent.fallback_by_reason.ownership_conflit: unknown reason; "
        "did you mean ownership_conflict?"
    )


def test_bad_default_is_reported_once_not_again_for_every_tenant() -> None:
    text = (
        "multi_agent:\n  max_handoffs: eight\ntenants:\n  acme: {}\n  globex: {max_handoffs: x}\n"
    )
    assert _problems(text) == [
        'multi_agent.max_handoffs: must be an integer >= 0, got "eight"',
        'tenants.globex.max_handoffs: must be an integer >= 0, got "x"',
    ]


def test_nested_tenant_mistake_is_the_tenants_and_an_inherited_one_is_not() -> None:
    assert _problems(
        "multi_agent:\n  approval: {ttl_seconds: 0}\n"
        "tenants:\n  acme: {approval: {approvers: [x]}}\n"
    ) == ["multi_agent.approval.ttl_seconds: must be a number > 0, got 0"]
    [problem] = _problems("tenants:\n  acme: {fallback_by_reason: {killd: constrained}}\n")
    assert problem.startswith("tenants.acme.fallback_by_reason.killd: unknown reason")


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    problems = _problems("multi_agent:\n  max_handoffs: eight\n  shared_max_usd: -1\n  foo: 1\n")
    assert len(problems) == 3


def test_broken_yaml_names_line_and_column() -> None:
    [problem] = _problems("multi_agent:\n  max_handoffs: 8\n   bad: 1\n")
    assert problem.startswith("not valid YAML at line 3, column")


def test_policy_error_is_a_baton_error_with_the_source_in_its_message(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("multi_agent:\n  max_handoffs: eight\n")
    with pytest.raises(BatonError) as info:
        load_policy(path)
    assert str(info.value) == (
        f'{path}: multi_agent.max_handoffs: must be an integer >= 0, got "eight"'
    )


# ------------------------------------------------------------------ CLI


@pytest.fixture
def baton() -> CliRunner:
    _register()
    return CliRunner()


def test_policy_check_exits_0_on_the_seed_block(baton: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_BLOCK)
    result = baton.invoke(cli, ["policy", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout and parse_policy(SEED_BLOCK).version in result.stdout


def test_policy_check_exits_2_naming_the_bad_key(baton: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("multi_agent:\n  max_handoffs: eight\n")
    result = baton.invoke(cli, ["policy", "check", str(path)])
    assert result.exit_code == 2
    assert 'multi_agent.max_handoffs: must be an integer >= 0, got "eight"' in result.stderr
    assert "Traceback" not in result.output


def test_policy_check_of_a_missing_file_is_one_readable_line(
    baton: CliRunner, tmp_path: Path
) -> None:
    result = baton.invoke(cli, ["policy", "check", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "cannot read policy file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_schema_export_writes_one_schema_per_event_and_the_decision(
    baton: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "schemas"
    result = baton.invoke(cli, ["schema", "export", str(out)])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    expected_events = {
        "handoff_requested", "handoff_completed", "approval_granted", "approval_denied",
        "run_finished", "kill_switch", "kill_switch_released",
    }  # fmt: skip
    assert {f"{e}.schema.json" for e in expected_events} <= names
    assert "decision.schema.json" in names
    requested = orjson.loads((out / "handoff_requested.schema.json").read_bytes())
    assert {"request_id", "run_id", "task_id", "from_agent", "to_agent", "event_time"} <= set(
        requested["required"]
    )
    decision = orjson.loads((out / "decision.schema.json").read_bytes())
    assert {"decision_id", "phase", "outcome", "reason", "fallback", "policy_version"} <= set(
        decision["properties"]
    )
