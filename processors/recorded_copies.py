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


def copy_of(d: Decision, input: str | None, reemitted: bool) -> Decision:
    """A copy of ``d`` (every field, as ``dataclasses.replace``) with ``input`` and
    ``reemitted`` given. tests/unit/test_recorded_copy.py holds it to ``replace``: a field
    added to Decision must be added here (and to DECISION_FIELDS' order: positional)."""
    if not _COMPILED:
        copy = Decision(*_DECISION_VALUES(d))
        copy.input, copy.reemitted = input, reemitted
        return copy
    return Decision(
        d.decision_id, d.request_id, d.run_id, d.tenant, d.phase, d.outcome, d.reason, d.owner,
        d.from_agent, d.to_agent, d.task_id, d.parent_task_id, d.action, d.depth,
        d.handoff_count, d.spent_usd, d.tool_calls, d.handoff_status, d.fallback, d.approval_id,
        d.approval_expires_at, d.approver, d.policy_version, d.event_time, d.decided_at,
        d.worker, d.partition, d.offset, d.shadow_outcome, d.tool, d.reserved_usd, d.detail,
        d.request_digest, d.chain_prev, d.chain_hash, input, reemitted,
    )  # fmt: skip


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
    out: list[Decision] = []
    for d in decisions:
        if text is None:
            text = input_text(event)
        if d.chain_hash is not None:
            # with the input it answers (a retry: the request but for its timing), which the
            # client compares with its own request (sdk.base.answers_request); its chain link
            # covers the original's input (the audit's row), not this one
            out.append(copy_of(d, text, True))
        elif new is None:
            d.input = text
            out.append(d)
        else:
            out.append(copy_of(d, text, False))
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
    out: list[Decision] = []
    if not decided:
        return out
    text = input_text(event)
    linked = new if new is not None and new is not state else None
    for d in decided:
        if d.chain_hash is not None:  # (publishable's comment)
            out.append(copy_of(d, text, True))
        elif new is None:
            d.input = text
            out.append(d)
        else:
            copy = copy_of(d, text, False)
            if linked is not None:
                link(linked, (copy,), key)
            out.append(copy)
    if linked is not None:  # after every copy, as keep_links after link: ``decided``'s links
        keep_links(decided, out)  # are read above as the engine left them
    return out
