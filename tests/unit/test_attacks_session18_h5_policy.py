"""Session 18 (H5): the policy loader attacked with a careless operator's YAML.

F3: a tenant's block may hold its keys directly (``acme: {max_handoffs: 1}``) or under a
``multi_agent:`` key of its own (the seed's shape). A block that held both took the
``multi_agent:`` one and dropped the keys beside it without a word: ``max_handoffs: 1`` and
``require_approval_for: ['*']`` written for the tenant left it at the defaults (8 handoffs,
no approval gate), and `baton policy check` passed the file. Now refused, naming the keys.
"""

from __future__ import annotations

import pytest

from baton.schemas.errors import PolicyError
from baton.schemas.policy_load import parse_policy

pytestmark = pytest.mark.unit

_BOTH = """\
multi_agent:
  max_handoffs: 8
tenants:
  acme:
    multi_agent:
      shadow_mode: false
    max_handoffs: 1
    require_approval_for: ['*']
"""


def test_a_tenant_block_with_keys_beside_its_multi_agent_block_is_refused_naming_them() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(_BOTH, "policy.yaml", file=True)
    text = str(caught.value)
    assert "tenants.acme" in text
    assert "max_handoffs" in text and "require_approval_for" in text


@pytest.mark.parametrize(
    "block",
    ["    multi_agent:\n      max_handoffs: 1\n", "    max_handoffs: 1\n"],
    ids=["under-multi_agent", "direct"],
)
def test_a_tenant_block_of_one_shape_still_loads(block: str) -> None:
    policy = parse_policy("multi_agent:\n  max_handoffs: 8\ntenants:\n  acme:\n" + block)
    assert policy.tenants["acme"].max_handoffs == 1
