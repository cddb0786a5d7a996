"""Policy YAML to a validated :class:`Policy`: every problem one line naming its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from baton.schemas.errors import PolicyError, encodable
from baton.schemas.names import fold, name_problem
from baton.schemas.policy_document import Policy
from baton.schemas.policy_errors import describe, show
from baton.schemas.policy_seed import fold_seed_blocks

__all__ = [
    "DEFAULT_POLICY_YAML",
    "MAX_POLICY_DEPTH",
    "MAX_POLICY_VALUES",
    "expanded_size",
    "load_policy",
    "parse_policy",
    "strict_yaml",
]

DEFAULT_POLICY_YAML = """\
# The seed policy: what Baton enforces when no policy file is given.
multi_agent:
  max_agents_per_run: 4
  max_handoffs: 8
  max_delegation_depth: 3
  shared_max_usd: 30
  shared_max_tool_calls: 120
  require_approval_for:
    - billing.refund.create
"""


#: how deep a policy's YAML may nest: a real one is a handful of levels; Python's parser and
#: validators recurse, and a document 5,000 deep raised RecursionError (a traceback, and on
#: gov.control a dead letter) instead of naming the problem
MAX_POLICY_DEPTH = 64


def parse_policy(text: str, source: str = "policy", file: bool = False) -> Policy:
    """Parse and validate policy YAML; raises PolicyError naming every bad key. ``file``: the
    text is a policy file's (the worker's --policy, `policy check`, `policy publish`), which
    must hold a document: an empty one (or only comments) is refused, not read as "no limits"."""
    try:
        return _parse_policy(text, source, file)
    except RecursionError:  # the YAML parser's own recursion, on a document deeper still
        raise _too_deep(source) from None


def _too_deep(source: str) -> PolicyError:
    return PolicyError(
        [
            f"<top>: nested deeper than {MAX_POLICY_DEPTH} levels; "
            "expected a policy a few levels deep"
        ],
        encodable(source),
    )


class _PolicyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing a key written twice in one mapping.

    YAML keeps the last of two equal keys in silence: ``max_handoffs: 2`` and, further down
    the same block, ``max_handoffs: 1000`` loaded as 1000, and an ``operators`` entry written
    twice with two keys trusted the second, while a reader of the file (a reviewer, `baton
    policy check`'s author) sees the first. Keys brought in by a merge (``<<: *defaults``)
    are overridden as YAML says; only keys written out twice are refused."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # every mapping passes here before its merges are resolved (also one merged into
        # another before its own turn): its keys as written, checked once
        if id(node) in self._checked:
            return
        self._checked.add(id(node))
        self._refuse_duplicates(node)
        self._merge(node)

    def _merge(self, node: yaml.MappingNode) -> None:
        """Resolve ``node``'s merge key as YAML says (its own keys win over merged ones),
        refusing what reads two ways. PyYAML 6.0.4 drops a merged key whose *string object*
        it met before: ``<<: [*strict, *loose]`` gave a one-letter key the first mapping's
        value (the spec's) and ``max_handoffs`` the last one's, and two ``<<`` keys in one
        mapping were both merged in silence. So a key two merged mappings set (which one
        wins is not what a reader sees) and ``<<`` written twice are refused."""
        merges = [(k, v) for k, v in node.value if k.tag == _MERGE]
        own = [(k, v) for k, v in node.value if k.tag != _MERGE]
        for key_node, _ in own:
            if key_node.tag == "tag:yaml.org,2002:value":
                key_node.tag = "tag:yaml.org,2002:str"
        if len(merges) > 1:
            twice = "the merge key << is written twice in one mapping; merge a list (<<: [*a, *b])"
            raise _refused(merges[1][0], twice)
        if not merges:
            return
        value = merges[0][1]
        if isinstance(value, yaml.MappingNode):
            sources = [value]
        elif isinstance(value, yaml.SequenceNode) and all(
            isinstance(sub, yaml.MappingNode) for sub in value.value
        ):
            sources = value.value
        else:
            raise _refused(value, "<< merges a mapping or a list of mappings (*name)")
        written = {self._key(k) for k, _ in own}
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        first: dict[Any, yaml.Node] = {}
        for sub in sources:
            self.flatten_mapping(sub)
            for key_node, value_node in sub.value:
                key = self._key(key_node)
                if key in written:
                    continue  # the mapping's own key wins, as written
                seen = first.setdefault(key, key_node)
                if seen is not key_node:
                    raise _refused(
                        key_node,
                        f"key {show(key)} is set by two merged mappings (also at line "
                        f"{seen.start_mark.line + 1}); which one wins is not what it reads: "
                        "set it in this mapping, or merge only one of them",
                    )
                merged.append((key_node, value_node))
        node.value = merged + own

    def _key(self, key_node: yaml.Node) -> Any:
        key = self.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:  # an unhashable key: construct_mapping names it
            return object()
        return key

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        _refuse_yaml11_digits(node)
        return int(super().construct_yaml_int(node))

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        _refuse_yaml11_digits(node)
        return float(super().construct_yaml_float(node))

    def _refuse_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: construct_mapping names it
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {show(key)} is written twice in one mapping (first at line "
                    f"{first.start_mark.line + 1}); YAML would keep the last in silence: "
                    "keep one",
                    key_node.start_mark,
                )


def strict_yaml(text: str) -> Any:
    """``text`` parsed as policies are (a SafeLoader that refuses a key written twice in one
    mapping, two ``<<`` merges setting one key, ``010`` and ``1:30``): for other YAML a person
    writes, such as alert rules. Raises yaml.YAMLError (a ConstructorError naming the line) or
    ValueError."""
    return yaml.load(text, Loader=_PolicyLoader)  # a SafeLoader: no !!python tags


def _refuse_yaml11_digits(node: yaml.ScalarNode) -> None:
    """A number YAML 1.1 reads otherwise than it looks: ``010`` is 8 (octal), ``1:30`` is 90
    (base 60). ``max_handoffs: 010`` loaded as 8 and ``max_run_seconds: 1:30`` as 90 s,
    without a word; each is refused naming what it would have been."""
    text = str(node.value).replace("_", "").lstrip("+-")
    octal = len(text) > 1 and text[0] == "0" and text.isdigit()
    if octal or ":" in text:
        kind = "octal" if octal else "base 60 (sexagesimal)"
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"{node.value} is a YAML 1.1 {kind} number; write it in decimal "
            f"(without leading zeros or colons)",
            node.start_mark,
        )


_MERGE = "tag:yaml.org,2002:merge"


def _refused(node: yaml.Node, problem: str) -> yaml.constructor.ConstructorError:
    return yaml.constructor.ConstructorError(None, None, problem, node.start_mark)


def _refuse_tag(what: str) -> Any:
    def construct(_loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        raise _refused(node, what)

    return construct


_PolicyLoader.add_constructor("tag:yaml.org,2002:int", _PolicyLoader.construct_yaml_int)
_PolicyLoader.add_constructor("tag:yaml.org,2002:float", _PolicyLoader.construct_yaml_float)
# a name written as base64 reads as the name (pydantic takes bytes for text): a tool a
# reviewer cannot read; a set loads as a list in hash order, so one file had another version
# in every process (PYTHONHASHSEED) and workers disagreed on the policy they run
_PolicyLoader.add_constructor(
    "tag:yaml.org,2002:binary",
    _refuse_tag("!!binary: a policy holds text, not bytes; write the value itself"),
)
_PolicyLoader.add_constructor(
    "tag:yaml.org,2002:set",
    _refuse_tag("!!set: its order changes from one process to the next; write a list"),
)


#: why a policy file with no document is refused (a truncated copy, the wrong file, a template
#: not filled in would otherwise load as every limit unlimited: fail open)
EMPTY_FILE = (
    "<top>: the file holds no policy (it is empty, or only comments): a truncated or wrong "
    "file would allow everything; write the policy out (`{}` on its own means Baton's "
    "defaults: no limits)"
)


def _parse_policy(text: str, source: str, file: bool = False) -> Policy:
    try:
        doc = yaml.load(text, Loader=_PolicyLoader)  # a SafeLoader: no !!python tags
    except ValueError as exc:  # an integer past Python's 4,300 digits of int(str)
        raise PolicyError([f"<top>: a value YAML cannot read: {str(exc)[:120]}"], source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = str(getattr(exc, "problem", exc))
        if "'\\t'" in problem:  # PyYAML names the tab it met, not the rule
            problem += " (YAML indents with spaces: replace the tabs)"
        raise PolicyError([f"not valid YAML{where}: {problem}"], source) from None
    if doc is None:
        if file:
            raise PolicyError([EMPTY_FILE], encodable(source))
        doc = {}
    too_many, deepest = expanded_size(doc, MAX_POLICY_VALUES)
    if too_many:
        raise PolicyError(
            [
                f"<top>: more than {MAX_POLICY_VALUES} values once its YAML aliases (*name) "
                "are expanded, or an alias that contains itself; expected a policy written "
                "out (a few hundred values)"
            ],
            encodable(source),
        )
    if deepest > MAX_POLICY_DEPTH:
        raise _too_deep(source)
    if not isinstance(doc, dict):
        raise PolicyError(
            [f"<top>: must be a mapping with a multi_agent key, got {show(doc)}"], source
        )
    # the seed's blocks fill multi_agent keys first, so that tenants inherit them
    doc, problems = fold_seed_blocks(doc)
    # tenants are partial overrides: merge each over the defaults before validating, so
    # errors point at tenants.<name>.<key> and a tenant inherits every key it does not set
    raw_tenants = doc.get("tenants") or {}
    base = doc.get("multi_agent") or {}
    merged_tenants: dict[str, Any] = {}
    overrides: dict[Any, dict[str, Any]] = {}  # tenant -> what the tenant sets itself
    if isinstance(raw_tenants, dict) and isinstance(base, dict):
        for raw_name, override in raw_tenants.items():
            # folded here, as Policy.tenants folds its keys, so that an error's key path
            # names the tenant as the overrides know it (a bad name is refused there)
            name = _folded(raw_name)
            if name in merged_tenants:
                first = next(n for n in raw_tenants if _folded(n) == name)
                problems.append(
                    f"tenants: tenant names {show(first)} and {show(raw_name)} are one name "
                    f"once folded (NFKC, case: {show(name)}); keep one of them"
                )
                continue
            if isinstance(override, dict) and "multi_agent" in override:
                # the seed's shape (the tenant's keys under a multi_agent: of its own); keys
                # beside it were dropped in silence: a tenant's `max_handoffs: 1` written
                # there left it at the defaults
                beside = [str(k) for k in override if k != "multi_agent"]
                if beside:
                    problems.append(
                        f"tenants.{name}: holds keys beside its multi_agent block, which "
                        f"would be ignored ({', '.join(beside)[:200]}); put them under "
                        "multi_agent, or write every key of the tenant without it"
                    )
                    continue
                override = override["multi_agent"]
            if isinstance(override, dict):
                merged_tenants[name] = _merge(base, override)
                overrides[name] = override
            else:
                merged_tenants[name] = override
        doc = {**doc, "tenants": merged_tenants}
    try:
        policy = Policy.model_validate(doc)
        if not problems:
            return _hashable(policy, source)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            tenant = loc[1] if len(loc) > 2 and loc[0] == "tenants" else None
            if tenant in overrides and not _sets(overrides[tenant], loc[2:]):
                continue  # a bad multi_agent key: reported once, at multi_agent.<key>
            problems.append(describe(err, Policy))
        if not problems:  # every error was under a tenant key the overrides do not know as set
            problems = [describe(err, Policy) for err in exc.errors(include_url=False)]
    raise PolicyError([encodable(p) for p in problems], encodable(source))


#: values (mappings, lists, keys, scalars) a policy may hold with its YAML aliases expanded.
#: A 528-byte file of nested aliases (a "billion laughs") is 10**9 values: validating and
#: quoting it took 35 s and 8 GB, and from gov.control it took every worker down, again on
#: every restart. A real policy holds hundreds; 1,000,000 is checked in about a second.
MAX_POLICY_VALUES = 1_000_000


def expanded_size(doc: Any, limit: int) -> tuple[bool, int]:
    """Whether ``doc``, aliases expanded, holds more than ``limit`` values (an alias that
    contains itself never ends, so it is past any limit; counting stops there), and how deep
    it nests. One walk with a stack, never recursing: a document 5,000 deep is measured, not
    a RecursionError."""
    count, deepest, stack = 1, 0, [(doc, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children: Any = (
            [*node.keys(), *node.values()]
            if isinstance(node, dict)
            else node
            if isinstance(node, list)
            else ()
        )
        count += len(children)
        if count > limit:
            return True, deepest
        stack.extend((child, depth + 1) for child in children)
    return False, deepest


def _hashable(policy: Policy, source: str) -> Policy:
    """``policy`` once its version is computed: a policy whose version cannot be (a lone
    surrogate from a YAML ``"\\ud800"`` escape) is refused here, never left to raise in a
    worker's control follower, which would exit on it and again on every restart."""
    try:
        policy.version  # noqa: B018 - computed (and cached) for its error
    except (TypeError, ValueError) as exc:
        raise PolicyError(
            [
                f"<policy>: cannot be hashed for its version ({exc}); expected text that is valid "
                "UTF-8 (no \\ud800-\\udfff escapes) and numbers within 64 bits"
            ],
            encodable(source),
        ) from None
    return policy


def _folded(name: Any) -> Any:
    """A tenant's name folded, or as written when it is no name (Policy refuses it)."""
    return fold(name) if isinstance(name, str) and name_problem(name) is None else name


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, mapping by mapping: a tenant that sets approval.ttl_seconds
    keeps the default approvers, one that sets tools.allow keeps the default block list.
    Lists and scalars are replaced whole."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _sets(override: Any, path: tuple[Any, ...]) -> bool:
    """True when the tenant's own ``override`` contains the key path (so an error there is its)."""
    for part in path:
        if not isinstance(override, dict):
            return True  # inside a list or value that the tenant set whole
        if part not in override:
            return False
        override = override[part]
    return True


def load_policy(path: str | Path | None) -> Policy:
    """The policy in ``path``, or the seed policy when ``path`` is None."""
    if path is None:
        return parse_policy(DEFAULT_POLICY_YAML, "seed policy")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"cannot read policy file: {exc.strerror}"], str(p)) from None
    return parse_policy(text, str(p), file=True)
