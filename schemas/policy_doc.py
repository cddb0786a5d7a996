"""docs/policy.md, generated from the policy model: every key, its type, default and meaning.

    python -m baton.schemas.policy_doc > docs/policy.md

The meanings are the models' Field descriptions; the reasons table is ``REASONS`` of
``baton.schemas.policy_reasons_doc``, which must name every
:class:`~baton.schemas.decision.Reason` (tests/unit/test_policy_doc.py checks both, and that
docs/policy.md is this text).
"""

from __future__ import annotations

import enum
import sys
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from baton.schemas.decision import Reason
from baton.schemas.policy import DEFAULT_POLICY_YAML, MultiAgentPolicy, Policy
from baton.schemas.policy_reasons_doc import REASONS, UNDOCUMENTED, cell, render_reasons
from baton.schemas.policy_types import MAX_LIMIT

__all__ = ["REASONS", "UNDOCUMENTED", "render_policy_doc", "undocumented_fields"]

_INTRO = """\
# Policy reference

<!-- Generated from baton.schemas.policy by `python -m baton.schemas.policy_doc > docs/policy.md`.
Do not edit: change the model's Field descriptions and regenerate
(tests/unit/test_policy_doc.py fails until you do). -->

A policy is one YAML file: `baton worker --policy FILE` (or `BATON_POLICY`); `baton up --policy
FILE`; `baton policy check FILE` validates it and names the bad key, value and expectation;
`baton policy publish FILE` sends it to every worker, signed. Every key is optional, an unknown
key is an error, and `null` for a `max_*` key means no limit (an integer limit is at most
2^53 = 9007199254740992; `yes`/`no`/`on`/`off` are booleans in YAML, never numbers). Without a
file Baton enforces the seed policy:

```yaml
{seed}```

Every decision carries `policy_version`, a hash of the whole policy in force.
[`policy.example.yaml`](../policy.example.yaml) shows the keys a deployment usually adds.

**Names are compared in one folded form**, in the policy and in events alike: agents (keys of
`roles`, `may_delegate_to`), tools and actions (`tools`, `require_approval_for`), task kinds
(`may_own`), tenants, approvers, operators and statuses are read through NFKC and case folding,
so `Billing.Refund.Create` is `billing.refund.create` and a fullwidth `Ｒesearcher` is
`researcher`; globs are folded the same way. A name holds printable characters of one script,
digits included (Latin may mix with Chinese, Japanese and Korean; ASCII digits with any), at
least one letter or digit, no space and no invisible or blank character, at most 256 characters
once folded. An event naming anything else is refused before any rule (a
`bad_name` dead letter: never decided); a policy key or glob holding one is an error, and so
are two keys that fold to one name. Decisions record the folded names. Ids (`run_id`,
`task_id`, `request_id`) are not names: they are compared exactly.
"""


def render_policy_doc() -> str:
    """The whole of docs/policy.md."""
    parts = [_INTRO.format(seed=DEFAULT_POLICY_YAML.split("\n", 1)[1])]
    parts.append(_section("Top level", "", Policy))
    for path, model in sections():
        parts.append(_section(f"`{path}`", path, model))
    parts.append(
        "Under `tenants.<name>` every key of `multi_agent` may be set again for that tenant;\n"
        "what a tenant does not set it inherits from `multi_agent` (mapping by mapping).\n"
    )
    parts.append(render_reasons())
    return "\n".join(parts)


def sections() -> list[tuple[str, type[BaseModel]]]:
    """Every mapping of the policy below the top level, by key path: each model once (a
    tenant's block is `multi_agent` again), `multi_agent` and its mappings first."""
    found = _nested(MultiAgentPolicy, "multi_agent")
    for name, info in Policy.model_fields.items():
        for sub, suffix in _submodels(info.annotation):
            if sub is not MultiAgentPolicy:
                found += _nested(sub, f"{name}{suffix}")
    return found


def _nested(model: type[BaseModel], path: str) -> list[tuple[str, type[BaseModel]]]:
    """``model`` at ``path`` and every model reachable from its fields, depth first."""
    found = [(path, model)]
    for name, info in model.model_fields.items():
        for sub, suffix in _submodels(info.annotation):
            found += _nested(sub, f"{path}.{name}{suffix}")
    return found


def _submodels(annotation: Any) -> list[tuple[type[BaseModel], str]]:
    """Models a field holds: itself (suffix ""), or as the values of a mapping (".<name>")."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, "")]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is dict:
        return [(m, f".<{_key_noun(args[0])}>{s}") for m, s in _submodels(args[1])]
    if origin in (Union, types.UnionType):
        return [found for arg in args for found in _submodels(arg)]
    return []


def _key_noun(annotation: Any) -> str:
    return "reason" if annotation is Reason else "name"


def _section(title: str, path: str, model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip().splitlines()[0].replace("``", "`") if model.__doc__ else ""
    lines = [f"## {title}", ""]
    if doc:
        lines += [doc, ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        key = f"{path}.{name}" if path else name
        lines.append(
            f"| `{key}` | {_type(info.annotation, info)} | {_default(info)} | "
            f"{cell(info.description or '')} |"
        )
    return "\n".join(lines) + "\n"


def _type(annotation: Any, info: FieldInfo | None = None) -> str:
    """A reader's name for a field's type: "integer ≥ 0 or null", "list of strings" ..."""
    text = _type_name(annotation)
    if info is not None:
        text = _with_bounds(text, info.metadata)
    return text


def _type_name(annotation: Any) -> str:
    if annotation is None or annotation is type(None):
        return "null"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _with_bounds(_type_name(args[0]), annotation.__metadata__)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_plural(_type_name(args[0]))}"
    if origin is dict:
        return f"mapping {_type_name(args[0])} → {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, Reason):
        return "reason"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(f"`{m.value}`" for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _with_bounds(text: str, metadata: Any) -> str:
    """``text`` with the bounds found in ``metadata`` (annotated-types objects, or a Field of
    an ``Annotated`` alias that holds them)."""
    for meta in metadata or ():
        if isinstance(meta, FieldInfo):
            text = _with_bounds(text, meta.metadata)
            continue
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            bound = getattr(meta, attr, None)
            if bound is not None and not (attr == "le" and bound == MAX_LIMIT):  # in the intro
                shown = str(bound) if isinstance(bound, int) else f"{bound:g}"
                text = f"{text}{',' if attr in ('le', 'lt') else ''} {sign} {shown}"
        for attr, what in (("min_length", "at least"), ("max_length", "at most")):
            length = getattr(meta, attr, None)
            if length is not None and text == "string":
                text = (
                    "non-empty string"
                    if (attr, length) == ("min_length", 1)
                    else f"string of {what} {length} characters"
                )
    return text


def _plural(noun: str) -> str:
    return noun + "s" if noun.endswith(("string", "integer", "number")) else noun


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return f"`{value}`"


def undocumented_fields() -> list[str]:
    """Policy keys without a Field description (each needs one for the reference)."""
    missing = [f"{n}" for n, i in Policy.model_fields.items() if not i.description]
    for path, model in sections():
        missing += [f"{path}.{n}" for n, i in model.model_fields.items() if not i.description]
    return missing


def main() -> None:
    sys.stdout.write(render_policy_doc())


if __name__ == "__main__":
    main()
