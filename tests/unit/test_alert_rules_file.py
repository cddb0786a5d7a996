"""A rules file mistake that switched an alert off in silence is refused (session 29, H3).

A key written twice kept the last (`rules:` twice: the first list gone), a second rule of a
name replaced the first, a rule with a built-in's name and SQL of its own replaced the
built-in while `baton alerts check` still printed `ok tenant_stop_rate`, and
`include_defaults: "false"` (a string) counted as true."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.schemas.errors import ConfigError
from baton.sinks.rules import DEFAULT_RULES, load_rules

pytestmark = pytest.mark.unit

SQL = "SELECT 1 WHERE 0"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            f"rules:\n  - name: mine\n    sql: {SQL}\nrules:\n  - name: other\n    sql: {SQL}\n",
            "written twice",
        ),
        (
            "rules:\n  - name: tenant_stop_rate\n    params:\n      max_stop_rate: 0.5\n"
            "      max_stop_rate: 0.9\n",
            "written twice",
        ),
        (
            f"rules:\n  - name: mine\n    sql: {SQL}\n  - name: mine\n    sql: SELECT 2\n",
            "a second rule of this name (the first is rules[0])",
        ),
        (
            f"rules:\n  - name: tenant_stop_rate\n    sql: {SQL}\n",
            "a built-in rule's name with sql of its own",
        ),
        ('include_defaults: "false"\nrules: []\n', "include_defaults: expected true or false"),
    ],
    ids=["rules twice", "param twice", "a name twice", "a built-in's sql", "a quoted false"],
)
def test_a_mistake_that_silenced_a_rule_is_refused(tmp_path: Path, text: str, said: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    assert said in str(info.value), str(info.value)


def test_what_the_docs_show_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "include_defaults: true\nrules:\n  - name: tenant_stop_rate\n"
        "    params: {max_stop_rate: 0.5}\n"
        f"  - name: refunds_stopped\n    description: refunds\n    sql: {SQL}\n"
    )
    rules = {r.name: r for r in load_rules(path)}
    assert set(rules) == {r.name for r in DEFAULT_RULES} | {"refunds_stopped"}
    assert rules["tenant_stop_rate"].params["max_stop_rate"] == 0.5
    path.write_text(f"include_defaults: false\nrules:\n  - name: mine\n    sql: {SQL}\n")
    assert [r.name for r in load_rules(path)] == ["mine"]
