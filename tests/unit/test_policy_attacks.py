"""Hostile and careless policy documents: each is refused with one line at load, never left
to raise later in a worker (where a policy from the control topic would crash-loop it)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from baton.processors.engine import apply_policy_update
from baton.schemas.errors import PolicyError
from baton.schemas.events import parse_control_event
from baton.schemas.policy import MAX_APPROVAL_TTL_S, load_policy, parse_policy
from baton.schemas.policy_types import MAX_LIMIT
from tests.unit.test_engine_support import Run

pytestmark = pytest.mark.unit


def _problem(text: str) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p")
    return str(caught.value)


def _published(policy_yaml: str) -> bytes:
    return orjson.dumps(
        {
            "type": "policy_updated",
            "policy_yaml": policy_yaml,
            "operator": "mallory",
            "event_time": "2026-03-01T09:00:00Z",
        }
    )


@pytest.mark.parametrize(
    "text, key",
    [
        ("multi_agent: {max_handoffs: %d}", "multi_agent.max_handoffs"),
        ("multi_agent: {max_steps: %d}", "multi_agent.max_steps"),
        ("multi_agent: {shared_max_tool_calls: %d}", "multi_agent.shared_max_tool_calls"),
        ("tenants: {acme: {max_bounces: %d}}", "tenants.acme.max_bounces"),
        ("budgets: {max_steps: %d}", "budgets.max_steps"),
    ],
)
def test_an_integer_limit_past_2_53_is_refused_naming_the_bound(text: str, key: str) -> None:
    # 2**64 made the policy hash (orjson) raise TypeError: `baton policy check` printed a
    # traceback and a worker that read the policy from gov.control exited on every restart
    assert f"{key}: must be an integer <= {MAX_LIMIT}, got 18446744073709551616" in _problem(
        text % 2**64
    )
    assert parse_policy(text % MAX_LIMIT).version  # the bound itself loads and hashes


def test_a_huge_limit_is_quoted_short() -> None:
    assert "got 10000000000000000000... (401 digits)" in _problem(
        f"multi_agent: {{max_handoffs: {10**400}}}"
    )


@pytest.mark.parametrize(
    "policy_yaml, error",
    [
        # a YAML "\ud800" escape is a lone surrogate: the policy validated, its hash raised
        ('label: "\\ud800"\nmulti_agent: {max_handoffs: 3}\n', "cannot be hashed"),
        (f"multi_agent: {{max_handoffs: {2**64}}}\n", "must be an integer <= 9007199254740992"),
    ],
)
def test_a_published_policy_that_cannot_be_hashed_is_a_dead_letter_not_a_crash(
    policy_yaml: str, error: str
) -> None:
    # the workers' control follower folds gov.control with apply_policy_update: an exception
    # there ends the worker (fail closed), and the record is read again after every restart
    event = parse_control_event(_published(policy_yaml))
    before = load_policy(None)
    step = apply_policy_update(before, None, event, datetime(2026, 3, 1, 9, 1, tzinfo=UTC))
    assert step.record is None and step.policy is before
    assert step.error is not None and error in step.error
    step.error.encode("utf-8")  # printable: the surrogate is shown escaped


def test_a_policy_error_quoting_a_lone_surrogate_is_printable() -> None:
    problem = _problem('multi_agent: {tools: {block: ["\\udfff"]}}\n')
    assert "\\udfff" in problem.encode("utf-8").decode()


def test_an_approval_ttl_past_366_days_is_refused() -> None:
    # ttl 1e10 s put approval_expires_at in 2343, past the audit's DateTime64; 1e12 s raised
    # OverflowError in the engine on every handoff that needed an approval
    assert "multi_agent.approval.ttl_seconds: must be a number <= 31622400, got 10000000000.0" in (
        _problem("multi_agent: {approval: {ttl_seconds: 1.0e+10}}")
    )
    run = Run(
        parse_policy(
            "multi_agent: {require_approval_for: [x], approval: {ttl_seconds: "
            f"{MAX_APPROVAL_TTL_S}}}}}"
        )
    )
    asked = run.handoff("t1", "planner", "payer", action="x")
    assert asked.approval_expires_at is not None and asked.approval_expires_at.year == 2027


@pytest.mark.parametrize("word", ["no", "off", "false", "yes", "on", "true"])
def test_a_yaml_boolean_is_not_a_number(word: str) -> None:
    # `shared_max_usd: no` (meant: no limit) loaded as a limit of 0 USD, `yes` as 1 USD
    for key in ("multi_agent: {shared_max_usd: %s}", "multi_agent: {reservation_ttl_seconds: %s}"):
        assert "must be a number (yes/no/on/off/true/false are booleans in YAML)" in _problem(
            key % word
        )
    assert "budgets.max_usd: must be a number" in _problem(f"budgets: {{max_usd: {word}}}")


def test_nan_is_named_as_not_finite() -> None:
    assert "multi_agent.shared_max_usd: must be a finite number, got nan" in _problem(
        "multi_agent: {shared_max_usd: .nan}"
    )


def test_the_seeds_allowlist_does_not_replace_an_empty_allow_list_in_silence() -> None:
    # tools.allow: [] allows no tool; the seed's allowlist used to replace it (widening it)
    assert "policy.tool_allowlist" in _problem(
        "policy: {tool_allowlist: [search.*]}\nmulti_agent: {tools: {allow: []}}\n"
    )
    # an empty block list blocks nothing: the seed's list fills it
    merged = parse_policy("policy: {tool_blocklist: [shell.*]}\nmulti_agent: {tools: {block: []}}")
    assert merged.multi_agent.tools.block == ["shell.*"]


def _laughs(levels: int) -> str:
    """A "billion laughs" policy: each level an alias list of ten of the one before."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines.append(f"multi_agent: *a{levels - 1}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text", [_laughs(9), "multi_agent: &a [*a]\n"])
def test_a_policy_of_nested_yaml_aliases_is_refused_before_it_is_expanded(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 528 bytes of aliases expand to 10**9 values: `baton policy check` took 35 s and 8 GB,
    # and a policy_updated holding it took down every worker that read gov.control
    monkeypatch.setattr("baton.schemas.policy_load.MAX_POLICY_VALUES", 10_000)
    assert "more than 10000 values once its YAML aliases (*name) are expanded" in _problem(text)
    step = apply_policy_update(
        load_policy(None),
        None,
        parse_control_event(_published(text)),
        datetime(2026, 3, 1, 9, 1, tzinfo=UTC),
    )
    assert step.record is None and "YAML aliases" in (step.error or "")


def test_aliases_within_the_bound_still_load() -> None:
    # the anchor syntax users write for limits shared by tenants
    written_out = parse_policy("tenants: {a: {max_handoffs: 3}, b: {max_handoffs: 3}}")
    aliased = parse_policy("tenants:\n  a: &limits {max_handoffs: 3}\n  b: *limits\n")
    assert aliased.tenants == written_out.tenants


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("multi_agent: " + "[" * 5000 + "]" * 5000, "nested deeper than 64 levels"),
        ("multi_agent: {}\nx: " + "{a: " * 3000 + "1" + "}" * 3000, "nested deeper than 64"),
        ("multi_agent: {max_handoffs: " + "9" * 5000 + "}", "a value YAML cannot read"),
        ("tenants: {0: {max_handoffs: 2}}", "tenants.0: a key must be text (a name), got 0"),
    ],
    ids=["5000-deep list", "3000-deep map", "5000-digit integer", "integer tenant key"],
)
def test_a_policy_no_parser_should_take_is_one_named_problem_not_a_traceback(
    text: str, says: str
) -> None:
    # before: RecursionError / ValueError (a traceback from `baton policy check`, an
    # engine_error dead letter on gov.control) and "0 problems:" for an integer tenant key
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert says in str(caught.value)
    assert len(caught.value.problems) == 1
