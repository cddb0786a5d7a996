"""The proof's decide answering for the new policy too, while no rule that differs could tell.

`baton replay` decides each step under the recorded policy (the proof) and the new one. While
a run's two replays have decided alike, their states are equal (up to the policy version each
decision carries, and the proof's chain links, which the engine never reads), so the new
policy's decide of the next step differs from the proof's only where it reads a limit the two
policies set differently. :func:`watched_policy` gives the recorded policy with its compiled
rules *watched*: every attribute of :class:`TenantRules` the two policies' rules for a tenant
differ in (the version aside) either

* is a :class:`Dual` (the limits the rules only compare with: ``max_handoffs``, the
  ``*_cap`` numbers, the budgets' ``reached`` and ``over``): it behaves as the recorded
  number, and a comparison the new number would answer otherwise, or any other use (a
  detail's text, arithmetic), marks the :class:`Watch`;
* is a method that reads such attributes (``needs_approval``, ``fallback_for``): it answers
  under both rules and marks the watch when the answers differ;
* or marks the watch when it is read at all.

The engine is deterministic and reads a policy only through ``rules_for`` (and, for a run's
first event, ``strict_tenants`` and ``tenants``: the two policies must agree on those), so a
step decided under the watched policy without a mark is what the new policy decides, and the
replay uses one decide for both. A marked step is decided again under the new policy from the
same state, and the two replays part for the rest of the run. Not watched: a read that escapes
the attributes (none: ``tests/unit/test_replay_share.py`` checks that the engine's modules use
the Dual limits in comparisons only, and that shared and separate replays report alike).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Final

from mypy_extensions import mypyc_attr

from baton.processors.policy_rules import _SLOT, Budget, CompiledPolicy, TenantRules
from baton.schemas.policy import Policy

__all__ = ["DUAL_LIMITS", "Dual", "Watch", "watched_policy"]

#: the rules' limits compared only, never computed with (a Dual when the two differ)
DUAL_LIMITS: Final = frozenset({"max_handoffs", "agents_cap", "depth_cap", "seconds_cap"})
#: the budgets' totals compared only (Budget.reached, Budget.over)
DUAL_BUDGETS: Final = frozenset({"usd", "calls", "steps"})
#: methods answered under both rules, and the attributes they read
_BOTH: Final = {
    "needs_approval": frozenset({"approval_re", "approve_all"}),
    "fallback_for": frozenset({"fallback", "fallback_by_reason"}),
}


class Watch:
    """Set when the new policy's rules could have decided the step otherwise."""

    __slots__ = ("diverged",)

    def __init__(self) -> None:
        self.diverged = False


#: a watch never set (the two policies' rules are equal)
_NEVER: Final = Watch()


@mypyc_attr(allow_interpreted_subclasses=True)
class _DualCompare:
    """What a :data:`Dual` is made from: its limits and its comparisons, the hot path (a
    native class in the compiled build, whose comparisons are native calls). Its subclass
    ``Dual`` is made below with type(), so that the other uses can be set on it: a native
    class refuses methods set after it is made, and mypyc gives a native class's
    ``__index__`` no ``nb_index`` slot (``operator.index`` would refuse a native Dual
    unmarked); a class made at run time gets every slot from its namespace, as CPython
    makes it. (A Python class in a compiled module, ``native_class=False``, would do too, but
    its compiled methods read their attributes the slow way: a comparison took longer than
    the interpreted one's, bench/RESULTS.md session 17.)"""

    __slots__ = ("new", "recorded", "watch")

    def __init__(self, recorded: Any, new: Any, watch: Watch) -> None:
        # (Any: an int limit stays an int; mypyc would make a float parameter of it)
        self.recorded, self.new, self.watch = recorded, new, watch

    def __lt__(self, other: Any) -> Any:
        answer = self.recorded < other
        if answer != (self.new < other):
            self.watch.diverged = True
        return answer

    def __le__(self, other: Any) -> Any:
        answer = self.recorded <= other
        if answer != (self.new <= other):
            self.watch.diverged = True
        return answer

    def __gt__(self, other: Any) -> Any:
        answer = self.recorded > other
        if answer != (self.new > other):
            self.watch.diverged = True
        return answer

    def __ge__(self, other: Any) -> Any:
        answer = self.recorded >= other
        if answer != (self.new >= other):
            self.watch.diverged = True
        return answer

    def __eq__(self, other: Any) -> Any:
        answer = self.recorded == other
        if answer != (self.new == other):
            self.watch.diverged = True
        return answer

    def __ne__(self, other: Any) -> Any:
        answer = self.recorded != other
        if answer != (self.new != other):
            self.watch.diverged = True
        return answer


def _any_use(name: str) -> Callable[..., Any]:
    def use(self: _DualCompare, *args: Any) -> Any:
        self.watch.diverged = True
        number = self.recorded
        if name == "__index__":
            return operator.index(number)  # (a float limit is no index: TypeError, as itself)
        if not hasattr(number, name):  # an int limit asked a float's method
            number = float(number)
        return getattr(number, name)(*args)

    return use


# every other operation a float has: the recorded number's answer, and a mark (a limit in a
# detail's text, or computed with, may make the new policy's decision differ)
_USES: Final = [
    "__abs__",
    "__add__",
    "__bool__",
    "__ceil__",
    "__divmod__",
    "__float__",
    "__floor__",
    "__floordiv__",
    "__format__",
    "__hash__",
    "__index__",
    "__int__",
    "__mod__",
    "__mul__",
    "__neg__",
    "__pos__",
    "__pow__",
    "__radd__",
    "__rdivmod__",
    "__repr__",
    "__rfloordiv__",
    "__rmod__",
    "__rmul__",
    "__round__",
    "__rpow__",
    "__rsub__",
    "__rtruediv__",
    "__str__",
    "__sub__",
    "__truediv__",
    "__trunc__",
    "as_integer_ratio",
    "conjugate",
    "is_integer",
]
#: A limit of the recorded policy (``recorded``) that knows the new policy's (``new``):
#: comparisons answer as the recorded limit and mark ``watch`` when the new one answers
#: otherwise; every other use marks it. Not a number's subclass: C code that reads a
#: float's or an int's value directly (``timedelta(seconds=...)``) would read it unmarked;
#: a Dual is converted through ``__float__``/``__int__``/``__index__`` (marked) or refused.
Dual: Final = type(
    "Dual",
    (_DualCompare,),
    {
        "__slots__": (),
        "__module__": __name__,
        "__doc__": "A limit of the recorded policy that knows the new policy's (replay_share).",
        **{name: _any_use(name) for name in _USES},
    },
)
# (a Dual does not pickle or copy as itself: it exists within one replay step's decide)


def _number(value: object) -> bool:
    return type(value) is int or type(value) is float


def _read_marks(name: str) -> property:
    def read(self: Any) -> Any:
        self._watch.diverged = True
        return getattr(self._recorded, name)

    return property(read)


def _both(name: str) -> Callable[..., Any]:
    def answer(self: Any, *args: Any, **kwargs: Any) -> Any:
        was = getattr(self._recorded, name)(*args, **kwargs)
        if was != getattr(self._new, name)(*args, **kwargs):
            self._watch.diverged = True
        return was

    return answer


def _watched_rules(recorded: TenantRules, new: TenantRules, watch: Watch) -> TenantRules:
    """``recorded`` watched where ``new`` differs (see the module docstring)."""
    differ = {
        name
        for name in TenantRules.__slots__
        if name != "version" and getattr(recorded, name) != getattr(new, name)
    }
    if not differ:
        return recorded
    duals: dict[str, Any] = {}
    # (__module__: type() called from compiled code would name its caller's module)
    members: dict[str, Any] = {"__slots__": ("_new", "_recorded", "_watch"), "__module__": __name__}
    for name in differ:
        was, now = getattr(recorded, name), getattr(new, name)
        if name in DUAL_LIMITS and _number(was) and _number(now):
            duals[name] = Dual(was, now, watch)
        elif name in DUAL_BUDGETS:
            duals[name] = Budget(
                Dual(was.reached, now.reached, watch), Dual(was.over, now.over, watch)
            )
        else:
            members[name] = _read_marks(name)
    for method, reads in _BOTH.items():
        if reads & differ:
            members[method] = _both(method)
    cls = type("WatchedRules", (TenantRules,), members)
    rules: Any = object.__new__(cls)
    for name in TenantRules.__slots__:
        if name not in members:  # (a property shadows the slot: read from _recorded)
            slot = TenantRules.__dict__[name]
            slot.__set__(rules, duals.get(name, getattr(recorded, name)))
    rules._new, rules._recorded, rules._watch = new, recorded, watch
    return rules


def watched_policy(recorded: Policy, new: Policy) -> tuple[Policy, Watch] | None:
    """``recorded`` deciding as itself with its rules watched for ``new`` (every tenant's),
    and the watch; None when the two policies differ where the watch cannot see (which
    tenants they know, with ``strict_tenants``; their operators: never shared then)."""
    if recorded.strict_tenants != new.strict_tenants or recorded.operators != new.operators:
        return None
    if recorded.strict_tenants and recorded.tenants.keys() != new.tenants.keys():
        return None
    was, now = CompiledPolicy.of(recorded), CompiledPolicy.of(new)
    watch = Watch()
    default = _watched_rules(was.default, now.default, watch)
    tenants = {
        name: _watched_rules(
            was.tenants.get(name, was.default), now.tenants.get(name, now.default), watch
        )
        for name in recorded.tenants.keys() | new.tenants.keys()
    }
    if default is was.default and all(
        rules is was.tenants.get(name, was.default) for name, rules in tenants.items()
    ):
        return recorded, _NEVER  # the rules are equal: one decide serves both
    policy = recorded.model_copy()
    # (built, then given the watched rules: a compiled CompiledPolicy's __new__ runs __init__)
    compiled = CompiledPolicy(policy)
    compiled.default, compiled.tenants = default, tenants
    policy.__dict__[_SLOT] = compiled
    return policy, watch
