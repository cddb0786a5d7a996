"""replay_share.py and state_compact.py compiled (session 17): the same answers in both builds.

Both modules were left interpreted until session 17 (a class made at run time, methods set on
a class after it was made, one function under seven names in a class body). Compiled, what
could change is what mypyc does differently from CPython: a native class has no ``nb_index``
slot for ``__index__``, a ``float`` parameter turns an int into a float, a ``str`` parameter
refuses what a record holds, a native object has no slots that pickle could read, and
``type()`` called from compiled code names its caller's module. Each test here holds one of
those to the interpreted answer; tests/integration/test_compiled_core.py runs this file
against the compiled build too.
"""

from __future__ import annotations

import copy
import math
import operator
import pickle
import re
from typing import Any

import pytest

from baton.processors import state_compact
from baton.processors.policy_rules import CompiledPolicy, TenantRules, rules_for
from baton.processors.replay_share import Dual, Watch, watched_policy
from baton.processors.state_compact import (
    EMPTY,
    OneTask,
    compact_digest,
    fresh_added,
    fresh_digest,
    fresh_digest_list,
    fresh_of,
    fresh_thawed,
    shared,
)
from baton.processors.state_types import TaskNode
from tests.unit.test_engine_properties import POLICIES
from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit

#: every use of a limit but a comparison, as the interpreted Dual answers it: the recorded
#: number's answer (an int limit asked a float's method answers as its float), and a mark
USES: dict[str, Any] = {
    "index": operator.index,  # (no nb_index slot on a native class: refused, unmarked)
    "int": int,
    "float": float,
    "bool": bool,
    "hash": hash,
    "str": str,
    "repr": repr,
    "format": lambda d: f"{d:>4}",
    "abs": abs,
    "neg": operator.neg,
    "pos": operator.pos,
    "round": round,
    "round 1": lambda d: round(d, 1),
    "trunc": math.trunc,
    "floor": math.floor,
    "ceil": math.ceil,
    "add": lambda d: d + 2,
    "radd": lambda d: 2 + d,
    "sub": lambda d: d - 2,
    "rsub": lambda d: 2 - d,
    "mul": lambda d: d * 3,
    "rmul": lambda d: 3 * d,
    "truediv": lambda d: d / 4,
    "rtruediv": lambda d: 4 / d,
    "floordiv": lambda d: d // 3,
    "rfloordiv": lambda d: 20 // d,
    "mod": lambda d: d % 3,
    "rmod": lambda d: 20 % d,
    "divmod": lambda d: divmod(d, 3),
    "rdivmod": lambda d: divmod(20, d),
    "pow": lambda d: d**2,
    "rpow": lambda d: 2**d,
    "pow mod": lambda d: pow(d, 2, 5),
    "as_integer_ratio": lambda d: d.as_integer_ratio(),
    "conjugate": lambda d: d.conjugate(),
    "is_integer": lambda d: d.is_integer(),
}


def _plain(name: str, number: Any) -> Any:
    """The answer of USES[name] for the plain number (an int asked a float's method as its
    float, as the Dual answers it)."""
    if name in ("as_integer_ratio", "is_integer") and not hasattr(number, name):
        number = float(number)
    return USES[name](number)


@pytest.mark.parametrize("recorded", [8, 8.0], ids=["int", "float"])
@pytest.mark.parametrize("name", sorted(USES))
def test_every_other_use_of_a_dual_answers_as_the_recorded_number_and_marks(
    name: str, recorded: Any
) -> None:
    watch = Watch()
    dual = Dual(recorded, 3, watch)
    try:
        expected = _plain(name, recorded)
    except TypeError as refused:  # (a float limit is no index: refused, as itself)
        with pytest.raises(TypeError, match=re.escape(str(refused))):
            USES[name](dual)
        return
    answer = USES[name](dual)
    assert answer == expected and type(answer) is type(expected), name
    assert watch.diverged, name


@pytest.mark.parametrize("op", ["lt", "le", "gt", "ge", "eq", "ne"])
def test_a_comparison_answers_as_the_recorded_limit_from_either_side(op: str) -> None:
    compare = getattr(operator, op)
    for other in (2, 3, 5, 8, 8.0, 9.5, math.inf):
        watch = Watch()
        dual = Dual(8, 3, watch)
        assert compare(dual, other) is compare(8, other)
        assert watch.diverged is (compare(8, other) != compare(3, other))
        mirrored = Watch()
        assert compare(other, Dual(8, 3, mirrored)) is compare(other, 8)
        assert mirrored.diverged is (compare(other, 8) != compare(other, 3))


def test_a_dual_keeps_an_int_limit_an_int() -> None:
    """Dual's limits are Any: a ``float`` parameter would be a float in the compiled build
    (mypyc converts), and a detail's text would read "8.0"."""
    dual = Dual(8, 3, Watch())
    assert type(dual.recorded) is int and type(dual.new) is int
    assert str(dual) == "8" and f"{dual}" == "8"


def test_the_watched_rules_are_a_subclass_named_in_replay_share() -> None:
    """The watched rules pass the compiled modules' TenantRules checks (TenantRules stays
    interpreted, in policy_tenant.py: its subclasses are checked with isinstance) and name
    replay_share as their module in both builds (``type()`` called from compiled code would
    name its caller's)."""
    watched, watch = watched_policy(POLICIES["seed"], policy_with(max_bounces=1))  # type: ignore[misc]
    rules = rules_for(watched, "acme")
    assert isinstance(rules, TenantRules) and type(rules) is not TenantRules
    assert type(rules).__name__ == "WatchedRules"
    assert type(rules).__module__ == "baton.processors.replay_share"
    assert not watch.diverged
    assert rules.max_bounces == POLICIES["seed"].multi_agent.max_bounces and watch.diverged


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.__setitem__("k", 1),
        lambda c: c.__delitem__("k"),
        lambda c: c.update(),
        lambda c: c.update({"k": 1}, k=2),
        lambda c: c.setdefault("k"),
        lambda c: c.pop(),
        lambda c: c.pop("k", None),
        lambda c: c.popitem(),
        lambda c: c.popitem("extra"),
        lambda c: c.clear(),
        lambda c: c.clear("extra"),
        lambda c: c.__ior__({"k": 1}),
    ],
)
def test_a_shared_container_refuses_every_change_whatever_its_arguments(change: Any) -> None:
    """Each changing method of the frozen containers is written out since session 17 (one
    function under seven names before); each still takes any arguments and refuses."""
    agents = {"frozen-session17-agent": None, "frozen-session17-other": None}
    held = shared(agents)
    assert type(held) is not dict and held == agents  # (one item would be a OneTask)
    for container, words in ((EMPTY, "RunState.EMPTY"), (held, "held by many runs")):
        with pytest.raises(TypeError, match=words):
            change(container)
    assert EMPTY == {} and held == agents


def test_shared_containers_and_a_one_task_dict_copy_and_pickle_as_themselves() -> None:
    held = shared({"frozen-session17-copy": None, "frozen-session17-two": None})
    one = shared({"session17-task": TaskNode("session17-owner", "planner", None, 1)}, nodes=True)
    assert type(one) is OneTask
    for value in (held, one):
        for again in (copy.copy(value), copy.deepcopy(value), pickle.loads(pickle.dumps(value))):
            assert type(again) is type(value) and again == value
    ior = {"a": 1}
    ior |= EMPTY  # a plain dict takes a frozen one's items
    assert ior == {"a": 1} and {**EMPTY, **held} == dict(held)


def test_fresh_keys_and_digests_as_a_record_holds_them_are_taken_as_they_are() -> None:
    """A record's odd fresh key (not text) and digest (not the engine's hex) pass through the
    compiled functions as through the interpreted ones (Any, not ``str``: a compiled ``str``
    parameter refuses what it is not)."""
    digest = "0123456789abcdef"
    fresh = fresh_of({"k1": compact_digest(digest), 7: compact_digest("ODD"), None: None})
    assert type(fresh) is tuple
    assert fresh_digest(fresh, "k1") == digest and fresh_digest(fresh, 7) == "ODD"
    assert fresh_digest_list(fresh) == [digest, "ODD", None]
    assert fresh_thawed(fresh) == {"k1": bytes.fromhex(digest), 7: "ODD", None: None}
    grown = fresh_added(fresh, 8.5, compact_digest(digest))
    assert fresh_digest(grown, 8.5) == digest
    many = fresh_of({i: compact_digest(digest) for i in range(state_compact.FRESH_TUPLE_MAX + 1)})
    assert type(many) is dict and fresh_digest(many, 0) == digest


def test_rules_for_takes_a_record_s_tenant_and_the_compiled_form_copies_as_nothing() -> None:
    """policy_rules is compiled since session 17 (its TenantRules moved to the interpreted
    policy_tenant.py): a run's tenant is taken as a record holds it (a compiled ``str``
    parameter would refuse another type), and the compiled form still pickles and copies as
    nothing (a copied policy builds its own)."""
    policy = policy_with(max_handoffs=7)
    rules = rules_for(policy, "acme")
    assert rules_for(policy, 5) is rules and rules_for(policy, None) is rules
    compiled = CompiledPolicy.of(policy)
    assert compiled.policy is policy and CompiledPolicy.of(policy) is compiled
    assert pickle.loads(pickle.dumps(compiled)) is None and copy.deepcopy(compiled) is None
    again = pickle.loads(pickle.dumps(policy))
    assert rules_for(again, "acme") is not rules and rules_for(again, "acme").max_handoffs == 7
    assert type(rules).__module__ == "baton.processors.policy_tenant"
