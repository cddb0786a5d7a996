"""docs/policy.md is generated from the policy model and says something about every key."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.schemas.decision import Reason
from baton.schemas.policy import DEFAULT_POLICY_YAML, Policy, parse_policy
from baton.schemas.policy_doc import (
    REASONS,
    UNDOCUMENTED,
    render_policy_doc,
    sections,
    undocumented_fields,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "regenerate it: .venv/bin/python -m baton.schemas.policy_doc > docs/policy.md"


def test_docs_policy_md_is_the_generated_text() -> None:
    committed = (ROOT / "docs" / "policy.md").read_text(encoding="utf-8")
    assert committed == render_policy_doc(), f"docs/policy.md is out of date: {REGENERATE}"


def test_every_policy_key_has_a_description() -> None:
    assert undocumented_fields() == [], (
        "give these policy keys a Field(description=...) in schemas/policy.py, then " + REGENERATE
    )


def test_every_reason_is_explained() -> None:
    missing = [r.value for r in Reason if r not in REASONS]
    assert missing == [], f"add these reasons to REASONS in schemas/policy_doc.py: {missing}"
    assert UNDOCUMENTED not in render_policy_doc()


def test_every_key_of_every_nested_model_is_in_the_reference() -> None:
    text = render_policy_doc()
    keys = [f"`{name}`" for name in Policy.model_fields]
    for path, model in sections():
        keys += [f"`{path}.{name}`" for name in model.model_fields]
    assert [k for k in keys if f"| {k} |" not in text] == []
    assert "| `multi_agent.roles.<name>.may_own` |" in text  # a model inside a mapping
    assert "| `multi_agent.approval.ttl_seconds` | number > 0, ≤ 31622400 | `900` |" in text
    assert "| `budgets.max_steps` |" in text  # a block outside multi_agent is walked too


def test_the_seed_block_it_shows_is_the_seed_policy() -> None:
    text = render_policy_doc()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert parse_policy(block) == parse_policy(DEFAULT_POLICY_YAML)
