"""`baton policy check` shows each tenant override and warns of rules that stop everything;
`policy publish` warns a signer who is not among the new policy's operators (session 29, H3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.main import cli
from baton.cli.policy_notes import policy_warnings, signer_not_an_operator, tenant_lines
from baton.schemas.policy import parse_policy

pytestmark = pytest.mark.unit


def _policy(text: str):  # type: ignore[no-untyped-def]
    return parse_policy(text, "test.yaml", file=True)


def test_a_tenant_in_shadow_mode_is_shown_with_what_it_changes() -> None:
    policy = _policy(
        "multi_agent:\n  max_handoffs: 8\ntenants:\n  acme:\n    shadow_mode: true\n"
        "    max_handoffs: null\n  globex: {}\n"
    )
    assert tenant_lines(policy) == [
        "tenant acme: max_handoffs: unlimited; shadow_mode on (decisions are recorded, never "
        "enforced)",
        "tenant globex: as multi_agent",
    ]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("strict_tenants: true\n", "no tenant is listed under tenants: every run is stopped"),
        ("multi_agent:\n  max_agents_per_run: 1\n", "multi_agent.max_agents_per_run is 1"),
        (
            'multi_agent:\n  require_approval_for: ["*"]\n  approval:\n    approvers: []\n',
            "multi_agent.approval.approvers is empty: nobody may answer",
        ),
        (
            'multi_agent:\n  require_approval_for: ["*"]\n'
            "tenants:\n  acme:\n    approval:\n      approvers: []\n",
            "tenants.acme.approval.approvers is empty",
        ),
    ],
)
def test_a_policy_that_stops_every_handoff_is_valid_and_warned_about(text: str, said: str) -> None:
    warnings = policy_warnings(_policy(text))
    assert len(warnings) == 1 and said in warnings[0], warnings


def test_an_ordinary_policy_has_no_warning() -> None:
    example = Path(__file__).resolve().parents[2] / "policy.example.yaml"
    assert policy_warnings(_policy(example.read_text())) == []


def test_policy_check_prints_them_and_exits_0(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "p.yaml"
    path.write_text("strict_tenants: true\ntenants:\n  acme:\n    shadow_mode: true\n")
    result = CliRunner().invoke(cli, ["policy", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "tenant acme: shadow_mode on" in result.output
    assert "warning:" not in result.output  # a tenant is listed
    path.write_text("strict_tenants: true\n")
    result = CliRunner().invoke(cli, ["policy", "check", str(path)])
    assert result.exit_code == 0 and "  warning: strict_tenants is on" in result.output


def test_publishing_a_policy_that_drops_its_signer_from_the_operators_is_said() -> None:
    from baton.schemas.signing import new_private_key, public_key_text

    key = public_key_text(new_private_key())
    policy = _policy(f"operators:\n  finance_lead: '{key}'\n")
    said = signer_not_an_operator(policy, "oncall")
    assert said is not None and said.startswith("oncall is not among this policy's operators")
    assert "finance_lead" in said
    assert signer_not_an_operator(policy, "Finance_Lead") is None  # a name: folded
    assert signer_not_an_operator(_policy("{}\n"), "oncall") is None  # no operators: anyone
