"""The copies of decisions a worker publishes: each with the input it was decided from, linked
onto its run's hash chain, the links kept on the state's own decisions (processors/recorded.py
says why the published copy and the state's decision differ).

In the compiled core (build_backend/compiled_modules.txt): a decision's copy reads its fields
natively and calls the native constructor (through ``attrgetter`` and the constructor called
from interpreted code, ~17k instructions an event in the worker's batch step), and the batch
step makes, links and keeps its copies in one pass (:func:`published`) instead of walking an
event's decisions three times. Interpreted, the copy keeps the ``attrgetter`` (one C call).
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter
from typing import Any, Final

import orjson
from pydantic import BaseModel

from baton.processors.chain import link
from baton.processors.state import RunState
from baton.schemas.decision import DECISION_FIELDS, Decision

__all__ = ["copy_of", "input_text", "keep_links", "publishable", "published"]


def _model(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    raise TypeError(f"cannot record {type(value).__name__} as JSON")


def input_text(event: Any) -> str:
    """The event as the worker parsed it: its set fields as compact JSON (parse_event reads
    it back to an equal event). ~2 µs: the model's own JSON dump costs eight times more."""
    values: dict[str, Any] = event.__dict__
    fields = {k: v for k, v in values.items() if v is not None}
    return orjson.dumps(fields, default=_model).decode()


#: every field of a Decision in __init__'s order (one C call): interpreted, a copy made through
#: the constructor costs a fifth of dataclasses.replace, which looks each field up by name
_DECISION_VALUES = attrgetter(*DECISION_FIELDS)
#: this module is compiled (BATON_COMPILE=1): Decision is a native class, read natively
_COMPILED: Final = not __file__.endswith(".py")
#: object.__new__, unless Decision is compiled (then its own: see state._new_state)
_new_decision: Final = Decision.__new__


def copy_of(d: Decision, input: str | None, reemitted: bool) -> Decision:
    """A copy of ``d`` (every field, as ``dataclasses.replace``) with ``input`` and
    ``reemitted`` given. tests/unit/test_recorded_copy.py holds it to ``replace``: a field
    added to Decision must be added here."""
    if not _COMPILED:
        copy = Decision(*_DECISION_VALUES(d))
        copy.input, copy.reemitted = input, reemitted
        return copy
    # slot by slot on a bare instance (decision_builder's way): compiled, Decision's __init__
    # is the dataclass's, interpreted (~11k instructions a call through slot_tp_init)
    copy = _new_decision(Decision)
    copy.decision_id = d.decision_id
    copy.request_id = d.request_id
    copy.run_id = d.run_id
    copy.tenant = d.tenant
    copy.phase = d.phase
    copy.outcome = d.outcome
    copy.reason = d.reason
    copy.owner = d.owner
    copy.from_agent = d.from_agent
    copy.to_agent = d.to_agent
    copy.task_id = d.task_id
    copy.parent_task_id = d.parent_task_id
    copy.action = d.action
    copy.depth = d.depth
    copy.handoff_count = d.handoff_count
    copy.spent_usd = d.spent_usd
    copy.tool_calls = d.tool_calls
    copy.handoff_status = d.handoff_status
    copy.fallback = d.fallback
    copy.approval_id = d.approval_id
    copy.approval_expires_at = d.approval_expires_at
    copy.approver = d.approver
    copy.policy_version = d.policy_version
    copy.event_time = d.event_time
    copy.decided_at = d.decided_at
    copy.worker = d.worker
    copy.partition = d.partition
    copy.offset = d.offset
    copy.shadow_outcome = d.shadow_outcome
    copy.tool = d.tool
    copy.reserved_usd = d.reserved_usd
    copy.detail = d.detail
    copy.request_digest = d.request_digest
    copy.chain_prev = d.chain_prev
    copy.chain_hash = d.chain_hash
    copy.input = input
    copy.reemitted = reemitted
    return copy


def publishable(
    new: RunState | None, decisions: list[Decision], event: Any, text: str | None = None
) -> list[Decision]:
    """The copies of ``decisions`` to publish for ``event`` (call before linking the chain).

    Decided now (no chain link yet): a copy with the input; the original stays in ``new``
    without it (processors/recorded.py) and :func:`keep_links` copies the links back.
    Already published (linked, answered again from the state): a copy flagged
    ``reemitted``, with the input it answers now. ``new`` None (a run the worker would not
    take on): the decisions themselves, with the input. ``text``: the input as recorded
    (replay), else made here.
    """
    if not decisions:
        return []
    return _copies(new, decisions, input_text(event) if text is None else text, None, b"")


def _copies(
    new: RunState | None,
    decisions: list[Decision],
    text: str,
    linked: RunState | None,
    key: bytes,
) -> list[Decision]:
    """:func:`publishable`'s copies, each decided now linked onto ``linked`` as it is made
    (``chain.link`` with ``key``; ``linked`` None: none)."""
    out: list[Decision] = []
    for d in decisions:
        if d.chain_hash is not None:
            # with the input it answers (a retry: the request but for its timing), which the
            # client compares with its own request (sdk.base.answers_request); its chain link
            # covers the original's input (the audit's row), not this one
            out.append(copy_of(d, text, True))
        elif new is None:
            d.input = text
            out.append(d)
        else:
            copy = copy_of(d, text, False)
            if linked is not None:
                link(linked, (copy,), key)
            out.append(copy)
    return out


def keep_links(stored: Iterable[Decision], published: Iterable[Decision]) -> None:
    """Give the state's decisions the chain links their published copies were given."""
    for d, p in zip(stored, published, strict=True):
        if p is not d and not p.reemitted:
            d.chain_prev, d.chain_hash = p.chain_prev, p.chain_hash


def published(
    new: RunState | None,
    state: RunState | None,
    decided: list[Decision],
    event: Any,
    key: bytes,
) -> list[Decision]:
    """The batch step's copies to publish of ``decided`` (the engine's answer to ``event``,
    which took the run from ``state`` to ``new``): :func:`publishable`, then, when the state
    changed, the copies decided now linked onto ``new``'s chain in order (``chain.link``,
    with ``key``) and :func:`keep_links`, in one pass. A reply re-emitted from the state is
    already linked (its copy flagged ``reemitted``); an unchanged state links nothing."""
    if not decided:
        return []
    linked = new if new is not None and new is not state else None
    out = _copies(new, decided, input_text(event), linked, key)
    if linked is not None:  # keep_links, after every copy as it was after link: ``decided``
        for i in range(len(out)):  # read above as the engine left it (a loop: no zip call)
            p = out[i]
            if not p.reemitted:
                d = decided[i]
                d.chain_prev, d.chain_hash = p.chain_prev, p.chain_hash
    return out
