"""The record of one decision, built field by field from the run's state and the event's context.

Every decision the engine makes goes through :func:`build_decision`: it fills the agents,
task, action and tool from the handoff, the run's counters and spend from its state, the
policy version and fallback from the compiled rules, and turns a stop into a recorded allow
in shadow mode. :class:`DecisionContext` is what one ``decide`` call decides in (the rules,
the clock, the kill switches, where the event was read).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple

from baton.processors.engine_fields import Handoff, handoff_of
from baton.processors.policy_rules import TenantRules
from baton.processors.state import SEEN_LIMIT, RunState
from baton.schemas.decision import Decision, Outcome, Phase, Reason, decision_id_for
from baton.schemas.events import ApprovalDenied, ApprovalGranted, HandoffRequested, RunEvent

__all__ = [
    "FORGETFUL_MARK",
    "LIFE_MARK",
    "NEVER_SHADOWED",
    "NO_ORIGIN",
    "TOMBSTONE_MARK",
    "DecisionContext",
    "Origin",
    "approval_mark",
    "build_decision",
    "cover_digest",
    "id_phase",
    "life_of",
]

#: stops that shadow mode never turns into allows: a kill switch, and the worker's own
#: limits and protocol refusals (they are not policy to try out)
NEVER_SHADOWED: Final = frozenset(
    {
        Reason.KILLED,
        Reason.RUN_STATE_LIMIT,
        Reason.RUN_EXPIRED,
        Reason.AUDIT_UNVERIFIED,
        Reason.WORKER_RUN_LIMIT,
        Reason.REQUEST_ID_REUSED,
        Reason.UNKNOWN_TENANT,
        Reason.TENANT_MISMATCH,
        Reason.REPLY_NOT_KEPT,
        Reason.REQUEST_EXPIRED,
    }
)

# Enum members as module globals: on CPython 3.11 ``Outcome.STOP`` costs about ten times a
# global lookup, and every decision reads several (bench/RESULTS.md)
# (Final: a compiled module reads them from C statics, not through the module's dict)
_ALLOW: Final = Outcome.ALLOW
_STOP: Final = Outcome.STOP
_RECORDED: Final = Outcome.RECORDED
_APPROVAL_REQUIRED: Final = Outcome.APPROVAL_REQUIRED
_POST_HANDOFF: Final = Phase.POST_HANDOFF
#: the phase as plain text for decision_id_for: formatting a StrEnum member in an f-string
#: runs Enum.__format__ in Python (same text, so the same id)
_PHASE_TEXT: Final = {phase: phase.value for phase in Phase}


class Origin(NamedTuple):
    """Where the event was read: recorded on its decisions (worker id, partition, offset).

    A tuple: one is made per event (a frozen dataclass's ``__init__`` cost three times more).
    """

    worker: str | None = None
    partition: int | None = None
    offset: int | None = None


NO_ORIGIN: Final = Origin()


@dataclass(slots=True, init=False)
class DecisionContext:
    """What one event is decided in: the run's compiled rules, the clock, the kill switches
    in force and where the event was read."""

    rules: TenantRules
    now: datetime
    now_ts: float
    #: engine_control.KillSwitches (Any: a compiled class's field typed with a class imported
    #: under TYPE_CHECKING only crashes at import, a NULL type object)
    kills: Any
    origin: Origin
    #: the event's own request id and its digest: its decisions' ids cover the digest
    request_id: str | None = None
    digest: str | None = None

    def __init__(
        self,
        rules: TenantRules,
        now: datetime,
        now_ts: float,
        kills: Any,
        origin: Origin,
        request_id: str | None = None,
        digest: str | None = None,
    ) -> None:
        # written out (init=False): a dataclass's own is interpreted code, compiled or not
        self.rules = rules
        self.now = now
        self.now_ts = now_ts
        self.kills = kills
        self.origin = origin
        self.request_id = request_id
        self.digest = digest


#: the mark on the phase of every decision of a run's life, before where the life began
LIFE_MARK: Final = "@life:"
#: the mark on the phase of a decision made on a run's tombstone, before its input's position
TOMBSTONE_MARK: Final = "@tombstone:"
#: the same for a run that has forgotten dedup marks (more than SEEN_LIMIT keys decided)
FORGETFUL_MARK: Final = "@forgetful:"


def life_of(event: RunEvent, origin: Origin) -> str:
    """Where a new run's life begins: the event's topic (``a`` for gov.approvals, ``r`` for
    the requests topic: each has its own offsets) and its partition and offset; "" without a
    position (a pure engine call).

    A run id is new again once the worker forgot its tombstone (BATON_TOMBSTONE_RETENTION_S;
    the audit keeps the run's rows far longer): a copy of the old life's first request was
    then decided on a fresh state under the old allow's id, and replaced it in the audit (a
    ReplacingMergeTree on decision_id). Every id of a life covers this mark. The input's
    position, not the time: a redelivery of the event (a crash before the state write) gives
    the same mark, so the same ids.
    """
    if origin.partition is None:
        return ""
    kind = type(event)
    topic = "a" if kind is ApprovalGranted or kind is ApprovalDenied else "r"
    return f"{topic}{origin.partition}:{origin.offset}"


def approval_mark(st: RunState, origin: Origin) -> str:
    """What an approval id asked on ``st`` covers besides its request (approvals.
    approval_id_for): the run's life, and on a run past SEEN_LIMIT keys the input's position
    too, as its decision ids do (a copy of a request the run forgot, denied before, asked
    again under the denied approval's id: `baton approvals` took it as answered). "" for a
    run begun before lives were marked: its approval ids keep their old form, so an audit
    recorded before replays as it was."""
    life = st.life
    if not life or st.marks <= SEEN_LIMIT:
        return life
    return f"{life}{FORGETFUL_MARK}{origin.partition}:{origin.offset}"


def id_phase(st: RunState, phase: Phase, origin: Origin) -> str:
    """The phase text a decision of ``st`` is identified by: the phase's own word, then the
    run's life mark (:func:`life_of`; none for a run begun before lives were marked); on a
    tombstone, or on a run past SEEN_LIMIT keys, also a mark and the input's partition and
    offset.

    A run that forgot a key (a tombstone keeps none, a long run the newest SEEN_LIMIT) decides
    a request sent again (a copied record, a retry) anew: under the first decision's id its
    stop replaced that allow in the audit (a ReplacingMergeTree on decision_id). The phase
    comes last in decision_id_for's text: a fixed word, then marks of fixed forms (the life,
    then a tombstone's or forgetful run's position), none holding the separator, so no
    decision of a run that remembers can have a tombstone's id, nor one life another's,
    whatever their keys; a redelivery of the record (same partition and offset) gets the same
    id again, as the sink's dedup needs.
    """
    text = _PHASE_TEXT[phase]
    if st.life:
        text = f"{text}{LIFE_MARK}{st.life}"
    if st.evicted_at is not None:
        return f"{text}{TOMBSTONE_MARK}{origin.partition}:{origin.offset}"
    if st.marks > SEEN_LIMIT:
        return f"{text}{FORGETFUL_MARK}{origin.partition}:{origin.offset}"
    return text


def cover_digest(d: Decision, st: RunState, ctx: DecisionContext, digest: str) -> None:
    """Give ``d`` the id of its request id and ``digest`` (another request under the same id
    gets another decision id, so it never replaces this record in the audit)."""
    d.decision_id = decision_id_for(
        st.run_id, f"{d.request_id}#{digest}", id_phase(st, d.phase, ctx.origin)
    )


#: object.__new__, unless Decision is compiled (then its own: see state._new_state)
_new_decision: Final = Decision.__new__


def build_decision(
    st: RunState,
    ctx: DecisionContext,
    request_id: str,
    phase: Phase,
    outcome: Outcome,
    reason: str,
    event_time: datetime | None,
    request: Handoff | HandoffRequested | None = None,
    *,
    owner: str | None = None,
    from_agent: str | None = None,
    to_agent: str | None = None,
    task_id: str | None = None,
    parent_task_id: str | None = None,
    depth: int = 0,
    handoff_status: str | None = None,
    approval_id: str | None = None,
    approval_expires_at: datetime | None = None,
    approver: str | None = None,
    detail: str | None = None,
) -> Decision:
    """The record of one decision; the agents, task, action and tool come from ``request`` if
    given (the handoff's fields, engine_fields, or the event).

    Every field of ``Decision`` is set here by name (tests/unit/test_engine_builder.py fails
    when one is added and not set): slot by slot on a bare instance, which is about twice as
    fast as calling the dataclass with 32 positional arguments and four times as fast as
    with keywords (bench/RESULTS.md), and this runs once per decision.
    """
    rules = ctx.rules
    shadow = None
    if (
        rules.shadow_mode
        and (outcome is _STOP or outcome is _APPROVAL_REQUIRED)
        and reason not in NEVER_SHADOWED
    ):
        # shadow (dry-run): record what would have happened, enforce nothing
        shadow = outcome
        outcome = _RECORDED if phase is _POST_HANDOFF else _ALLOW
    action = tool = None
    if request is not None:
        req = request if type(request) is Handoff else handoff_of(request)
        from_agent, to_agent, task_id = req.from_agent, req.to_agent, req.task_id
        parent_task_id, action, tool = req.parent_task_id, req.action, req.tool
    origin = ctx.origin
    spent, reserved = st.spent_usd, st.reserved_usd
    run_id = st.run_id
    key = f"{request_id}#{ctx.digest}" if request_id == ctx.request_id else request_id
    d = _new_decision(Decision)
    if st.evicted_at is None and st.marks <= SEEN_LIMIT:  # id_phase, inline: per decision
        life = st.life
        phase_text = f"{_PHASE_TEXT[phase]}{LIFE_MARK}{life}" if life else _PHASE_TEXT[phase]
    else:
        phase_text = id_phase(st, phase, origin)
    d.decision_id = _decision_id(run_id, key, phase_text)
    d.request_id = request_id
    d.run_id = run_id
    d.tenant = st.tenant
    d.phase = phase
    d.outcome = outcome
    d.reason = reason
    d.owner = owner
    d.from_agent = from_agent
    d.to_agent = to_agent
    d.task_id = task_id
    d.parent_task_id = parent_task_id
    d.action = action
    d.depth = depth
    d.handoff_count = st.handoff_count
    d.spent_usd = _spent_usd(spent) if spent else 0.0
    d.tool_calls = st.tool_calls
    d.handoff_status = handoff_status
    d.fallback = rules.fallback_for(reason) if (shadow or outcome) is _STOP else None
    d.approval_id = approval_id
    d.approval_expires_at = approval_expires_at
    d.approver = approver
    d.policy_version = rules.version
    d.event_time = event_time
    d.decided_at = ctx.now
    # (unpacked: a NamedTuple's field read by name is a Python attribute read compiled)
    d.worker, d.partition, d.offset = origin
    d.shadow_outcome = shadow
    d.tool = tool
    d.reserved_usd = (_ROUNDED.get(reserved) or _usd(reserved)) if reserved else 0.0
    d.detail = detail
    d.request_digest = None
    d.chain_prev = None
    d.chain_hash = None
    d.input = None
    d.reemitted = False
    return d


#: the newest decision id made and what it was made of: replay decides each recorded event
#: under two policies, and both decisions have the same id (a BLAKE2b, ~6,000 instructions)
#: (a Final list changed in place: a compiled module writes a plain global through its dict)
_LAST_ID: Final[list[str]] = ["", "", "", ""]


def _decision_id(run_id: str, key: str, phase: str) -> str:
    """``decision_id_for``, answered from the newest id when it is asked for again."""
    last = _LAST_ID
    if key == last[1] and run_id == last[0] and phase == last[2]:
        return last[3]
    made = decision_id_for(run_id, key, phase)
    last[0], last[1], last[2], last[3] = run_id, key, phase, made
    return made


#: round(usd, 9) of recent amounts: a run's spend is the same on each of its decisions until
#: the next completion, and round() with digits formats and re-parses the number (~2,000
#: instructions, two per decision; bench/RESULTS.md)
_ROUNDED: Final[dict[float, float]] = {}


#: the newest spend rounded and its rounding: a run's decisions, and replay's two decides of
#: a step, repeat it (a float compared natively, where the dict's get hashes it: ~380)
_LAST_SPENT: Final[list[float]] = [0.0, 0.0]


def _spent_usd(spent: float) -> float:
    """``round(spent, 9)``, answered from the newest when asked again (``spent`` not 0)."""
    last = _LAST_SPENT
    if spent == last[0]:
        return last[1]
    rounded = _ROUNDED.get(spent) or _usd(spent)
    last[0], last[1] = spent, rounded
    return rounded


def _usd(amount: float) -> float:
    rounded = _ROUNDED.get(amount)
    if rounded is None:
        if len(_ROUNDED) >= 65_536:
            _ROUNDED.clear()
        rounded = _ROUNDED[amount] = round(amount, 9)
    return rounded
