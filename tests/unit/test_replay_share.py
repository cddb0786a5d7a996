"""The proof's decide answers for the new policy only while no differing rule could tell.

processors/replay_share.py: a watched limit behaves as the recorded one and says when the
new one would have answered otherwise; the engine uses those limits in comparisons only;
and a replay sharing decides reports exactly what two separate replays report.
"""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.processors import replay
from baton.processors.policy_rules import rules_for
from baton.processors.replay import replay_runs, runs_of
from baton.processors.replay_share import DUAL_BUDGETS, DUAL_LIMITS, Dual, Watch, watched_policy
from baton.schemas.policy import Policy
from tests.unit.test_engine_properties import POLICIES, histories
from tests.unit.test_engine_support import policy_with
from tests.unit.test_replay import KEY, _policies, record

pytestmark = pytest.mark.unit

#: new policies to try on histories recorded under POLICIES: one limit changed (the shared
#: case), a limit removed, several changed, and POLICIES themselves
NEW: dict[str, Policy] = {
    "handoffs 4": policy_with(max_handoffs=4),
    "handoffs 20": policy_with(max_handoffs=20),
    "usd 5": policy_with(shared_max_usd=5),
    "no agent limit": policy_with(max_agents_per_run=None),
    "depth 2, agents 3": policy_with(max_delegation_depth=2, max_agents_per_run=3),
    "run 300 s": policy_with(max_run_seconds=300),
    "ttl 30 s": policy_with(approval={"ttl_seconds": 30}),
    "no approvals": policy_with(require_approval_for=[]),
    "fallback": policy_with(fallback="constrained"),
    "bounces": policy_with(max_bounces=1),
    **POLICIES,
}


def test_a_watched_limit_answers_as_the_recorded_one_and_marks_only_a_different_answer() -> None:
    watch = Watch()
    limit = Dual(8, 3, watch)
    assert (2 + 1 > limit) is False and not watch.diverged  # 3 > 8, 3 > 3: both no  # noqa: SIM300
    assert (4 > limit) is False and watch.diverged  # 4 > 8 no, 4 > 3 yes  # noqa: SIM300
    watch.diverged = False
    assert (9.5 >= limit) is True and not watch.diverged  # a float on the left: the same  # noqa: SIM300
    assert f"max_handoffs {limit}" == "max_handoffs 8" and watch.diverged  # text differs


def test_no_limit_is_a_limit_never_passed() -> None:
    watch = Watch()
    limit = Dual(4, float("inf"), watch)
    assert (3 > limit) is False and not watch.diverged  # noqa: SIM300
    assert (5 > limit) is True and watch.diverged  # noqa: SIM300


def test_the_rules_of_a_policy_changing_one_limit_watch_that_limit_only() -> None:
    recorded, new = POLICIES["seed"], NEW["handoffs 4"]
    watched, watch = watched_policy(recorded, new)  # type: ignore[misc]
    rules = rules_for(watched, "acme")
    assert type(rules.max_handoffs) is Dual
    assert rules.max_agents_per_run == 4 and rules.version == recorded.version
    assert not watch.diverged
    assert rules_for(recorded, "acme").max_handoffs == 8  # the recorded policy is untouched


def test_a_rule_read_that_is_no_comparison_marks_the_step() -> None:
    watched, watch = watched_policy(POLICIES["seed"], NEW["ttl 30 s"])  # type: ignore[misc]
    assert (
        rules_for(watched, "acme").ttl_seconds == POLICIES["seed"].multi_agent.approval.ttl_seconds
    )
    assert watch.diverged


def test_equal_rules_share_every_step_and_operators_never_share() -> None:
    seed = POLICIES["seed"]
    assert watched_policy(seed, policy_with(max_handoffs=8))[0] is seed  # type: ignore[index]
    other = seed.model_copy(update={"strict_tenants": True})
    assert watched_policy(seed, other) is None


#: the budgets' thresholds (Budget.reached, Budget.over): the names no other object uses
_BUDGET_FIELDS = frozenset({"reached", "over"})


def _rules_reads(tree: ast.AST) -> list[tuple[ast.AST, ast.AST | None]]:
    """(a read of a watched limit, its parent) in ``tree``: an attribute of that name on any
    object (an alias of the rules, a helper's parameter, ``rules_for(...)``), a budget's
    threshold, or a ``getattr`` naming one."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: list[tuple[ast.AST, ast.AST | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in DUAL_LIMITS | _BUDGET_FIELDS:
            found.append((node, parents.get(node)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and any(
                isinstance(a, ast.Constant) and a.value in DUAL_LIMITS | DUAL_BUDGETS
                for a in node.args
            )
        ):
            found.append((node, None))  # never allowed: the guard cannot follow it
    return found


def test_the_engine_compares_the_watched_limits_and_does_nothing_else_with_them() -> None:
    """A Dual marks any use but a comparison, and C code that wants a number refuses it
    (timedelta(seconds=...)): the engine may only compare the watched limits, or show them."""
    root = Path(__file__).resolve().parents[2] / "processors"
    reads = 0
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        if path.name in ("policy_rules.py", "policy_tenant.py", "replay_share.py"):
            continue  # where the limits are compiled, and watched
        for node, parent in _rules_reads(tree):
            reads += 1
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            assert isinstance(parent, (ast.Compare, ast.FormattedValue)), where
    assert reads >= 10  # the rules are found at all


def test_the_engine_reads_a_policy_only_through_its_compiled_rules() -> None:
    """The premise of sharing: what the engine reads of a policy besides ``rules_for`` (which
    the watch covers) is what ``watched_policy`` requires the two policies to agree on."""
    root = Path(__file__).resolve().parents[2] / "processors"
    decide_path = [
        *root.glob("engine*.py"),
        *(root / f"{name}.py" for name in ("approvals", "rule_checks", "decision_builder")),
        root / "dedup_keys.py",
    ]
    read = set()
    for path in decide_path:
        for node in ast.walk(ast.parse(path.read_text())):
            base = node.value if isinstance(node, ast.Attribute) else None
            if isinstance(base, ast.Name) and base.id == "policy":
                read.add(node.attr)  # type: ignore[union-attr]
    # strict_tenants, tenants, operators: compared by watched_policy; version: control records
    assert read <= {"strict_tenants", "tenants", "operators", "version"}, read
    assert "strict_tenants" in read  # the scan sees the engine


@contextlib.contextmanager
def _separately() -> Iterator[None]:
    """No watched policy: the two replays part at a run's first step (two decides a step).
    ``watched_policy`` answers None where replay.py reads it, a module global in both builds
    (``replay._watched`` is a native call when compiled: a patch of it went unseen, and the
    passes compared stayed shared), with its per-pair cache emptied around it."""
    replay._WATCHED.clear()
    try:
        with mock.patch.object(replay, "watched_policy", lambda recorded, new: None):
            yield
    finally:
        replay._WATCHED.clear()


@settings(max_examples=100, deadline=None)
@given(histories(), st.sampled_from(sorted(NEW)))
def test_a_shared_replay_reports_what_two_separate_replays_report(
    case: tuple, new_name: str
) -> None:
    name, timed = case
    rows = record(POLICIES[name], timed)
    policies = _policies(POLICIES[name])
    shared = replay_runs(runs_of(rows), NEW[new_name], policies, KEY)
    with _separately():
        apart = replay_runs(runs_of(rows), NEW[new_name], policies, KEY)
    assert shared.runs == apart.runs
    assert shared.transitions == apart.transitions and shared.partial == apart.partial
    assert not shared.unfaithful_runs
