"""``Decision``'s interpreted twin, for pydantic and ``typing.get_type_hints``.

A compiled (mypyc) ``Decision`` is a native class: its fields' run-time annotations are
``type``, so pydantic cannot validate it and ``get_type_hints`` cannot read it.
:class:`DecisionDoc` is the same record as a plain dataclass (the same fields, types and
defaults, in order: a unit test reads both definitions and compares them). Validation goes
through it (``TWIN_ADAPTER``, answering with a ``Decision``) only when ``Decision`` is
compiled; the interpreted build validates ``Decision`` itself (decision.DECISION_ADAPTER).
The type hints and defaults the audit's row code reads come from here in both builds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from importlib.machinery import ExtensionFileLoader
from operator import attrgetter
from typing import Any, get_type_hints

from pydantic import ConfigDict, TypeAdapter

from baton.schemas import decision as _decision
from baton.schemas.decision import DECISION_FIELDS, Decision, Fallback, Outcome, Phase

__all__ = ["COMPILED", "TWIN_ADAPTER", "DecisionDoc", "decision_defaults", "decision_hints"]

#: whether ``Decision`` is compiled (its module is an extension: BATON_COMPILE=1)
COMPILED = isinstance(getattr(_decision.__spec__, "loader", None), ExtensionFileLoader)


@dataclass(slots=True)
class DecisionDoc:
    """One decision, exactly the audit record of ARCHITECTURE.md ("Decision record")."""

    __pydantic_config__ = ConfigDict(title="Decision")

    decision_id: str
    request_id: str
    run_id: str
    tenant: str
    phase: Phase
    outcome: Outcome
    reason: str
    owner: str | None = None
    from_agent: str | None = None
    to_agent: str | None = None
    task_id: str | None = None
    parent_task_id: str | None = None
    action: str | None = None
    depth: int = 0
    handoff_count: int = 0
    spent_usd: float = 0.0
    tool_calls: int = 0
    handoff_status: str | None = None
    fallback: Fallback | None = None
    approval_id: str | None = None
    approval_expires_at: datetime | None = None
    approver: str | None = None
    policy_version: str = ""
    event_time: datetime | None = None
    decided_at: datetime | None = None
    worker: str | None = None
    partition: int | None = None
    offset: int | None = None
    #: shadow (dry-run) mode: the outcome Baton *would* have enforced; ``outcome`` is then allow
    shadow_outcome: Outcome | None = None
    tool: str | None = None
    reserved_usd: float = 0.0
    detail: str | None = None
    #: on approval_required and approval decisions, what an approver signs (the request's
    #: digest); on an operator command's control record, the worker's seal (control_seal.py)
    request_digest: str | None = None
    #: the run's hash chain (docs/security.md): the previous decision's chain_hash ("" for
    #: the run's first) and this one's, over chain_content(); None: not part of a chain
    chain_prev: str | None = None
    chain_hash: str | None = None
    #: the event the engine decided, as the worker parsed it (compact JSON; baton.processors.
    #: recorded): what `baton replay` decides again. None: a timer step (approval expiry)
    input: str | None = None
    #: a copy of a decision published before (a retry or redelivery answered from the run's
    #: state): the client needs it, the audit already has the original and does not store it
    reemitted: bool = False


_VALUES = attrgetter(*DECISION_FIELDS)


class _TwinAdapter:
    """``TypeAdapter(Decision)``'s methods the project uses, validating with the twin and
    answering with a ``Decision``."""

    def __init__(self) -> None:
        self._twin: TypeAdapter[DecisionDoc] = TypeAdapter(DecisionDoc)

    def validate_json(self, data: bytes | str) -> Decision:
        return Decision(*_VALUES(self._twin.validate_json(data)))

    def validate_python(self, obj: Any) -> Decision:
        return Decision(*_VALUES(self._twin.validate_python(obj)))

    def json_schema(self) -> dict[str, Any]:
        return self._twin.json_schema()


#: the validator decision.DECISION_ADAPTER uses when Decision is compiled
TWIN_ADAPTER = _TwinAdapter()


def decision_hints() -> dict[str, Any]:
    """``get_type_hints(Decision)``, read from the twin (a compiled Decision has none)."""
    return get_type_hints(DecisionDoc)


def decision_defaults() -> dict[str, Any]:
    """Each field's default (``dataclasses.MISSING`` for none), read from the twin (a
    compiled Decision's dataclass fields are not relied on)."""
    return {f.name: f.default for f in fields(DecisionDoc)}


assert tuple(f.name for f in fields(DecisionDoc)) == DECISION_FIELDS
