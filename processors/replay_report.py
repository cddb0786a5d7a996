"""What a replay found: per run (its changes, what the proof found, spend) and over all runs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from baton.schemas.decision import Outcome, Reason

__all__ = ["Change", "ReplayReport", "RunOutcome", "label", "new_change", "new_run", "usd"]


#: as plain strings: an enum member's lookup costs ten times a global's (label runs per change)
_ALLOW: Final = Outcome.ALLOW.value
_OK: Final = Reason.OK.value


def label(outcome: str, reason: str) -> str:
    """``allow`` for a plain allow, else ``outcome:reason`` (``stop:handoff_budget_exceeded``)."""
    if outcome == _ALLOW and reason == _OK:
        return "allow"
    # joined, not an f-string: an f-string formats an enum member through Enum.__format__
    # (Python code); join reads a str subclass's text in C (the same text: its value)
    try:
        return ":".join((outcome, reason))
    except TypeError:  # a row read from a forged audit server may hold a number or null
        return f"{outcome}:{reason}"


def usd(amount: float) -> str:
    return f"${Decimal(repr(amount)).quantize(Decimal('0.01')):,}"


@dataclass(frozen=True, slots=True)
class Change:
    """The first step of a run where the new policy decides differently (make one with
    :func:`new_change`: the frozen dataclass's own __init__ is Python, ~9k instructions)."""

    step: int
    decided_at: datetime
    request_id: str | None
    handoff: str
    recorded: str
    replayed: str


_set_field: Final = object.__setattr__


def new_change(
    step: int,
    decided_at: datetime,
    request_id: str | None,
    handoff: str,
    recorded: str,
    replayed: str,
) -> Change:
    """``Change(step, decided_at, request_id, handoff, recorded, replayed)``, its fields set as
    its frozen dataclass __init__ sets them (object.__setattr__), without that Python frame."""
    change = _new_change(Change)
    _set_field(change, "step", step)
    _set_field(change, "decided_at", decided_at)
    _set_field(change, "request_id", request_id)
    _set_field(change, "handoff", handoff)
    _set_field(change, "recorded", recorded)
    _set_field(change, "replayed", replayed)
    return change


@dataclass(slots=True)
class RunOutcome:
    """One run replayed: how many decisions, what changed, what the proof found."""

    run_id: str
    decisions: int = 0
    changed: int = 0
    first_change: Change | None = None
    #: decisions the recorded policy did not reproduce: (step, recorded, replayed)
    unfaithful: list[tuple[int, str, str]] = field(default_factory=list)
    #: cost reported for handoffs recorded as allowed that the new policy stops
    saved_usd: float = 0.0
    #: estimates of handoffs the new policy stops that were recorded as allowed
    blocked_estimate_usd: float = 0.0
    #: "recorded → replayed" -> how many of the run's decisions
    transitions: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class ReplayReport:
    """Every run replayed, in the order read; the runs not replayed, and why."""

    runs: list[RunOutcome] = field(default_factory=list)
    #: run id -> why it was not replayed
    partial: dict[str, str] = field(default_factory=dict)
    #: "recorded → replayed" -> how many decisions, over every run
    transitions: Counter[str] = field(default_factory=Counter)
    #: partial runs whose decision chain is broken (a gap, a fork): the audit was altered
    broken: list[str] = field(default_factory=list)
    #: the earliest decided_at of the rows read (None: none read)
    oldest: datetime | None = None
    #: partial runs read as trimmed before what was read: run id -> (their first row's
    #: decided_at, the link it names); processors.replay_trimmed judges them
    trimmed: dict[str, tuple[datetime, str]] = field(default_factory=dict)

    @property
    def decisions(self) -> int:
        return sum(r.decisions for r in self.runs)

    @property
    def changed_runs(self) -> list[RunOutcome]:
        return [r for r in self.runs if r.changed]

    @property
    def unfaithful_runs(self) -> list[RunOutcome]:
        return [r for r in self.runs if r.unfaithful]

    @property
    def saved_usd(self) -> float:
        return sum(r.saved_usd for r in self.runs)

    @property
    def blocked_estimate_usd(self) -> float:
        return sum(r.blocked_estimate_usd for r in self.runs)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # a `--jobs` process sends its piece's report back pickled: slotted dataclasses
        # pickle through fields() per object in Python, which cost more than a tenth of the
        # piece's replay (a RunOutcome, a Counter and a Change a run); its runs go as plain
        # tuples, rebuilt in one loop (_report)
        runs = [
            (
                r.run_id,
                r.decisions,
                r.changed,
                _change_values(r.first_change),
                r.unfaithful,
                r.saved_usd,
                r.blocked_estimate_usd,
                dict(r.transitions) if r.transitions else None,
            )
            for r in self.runs
        ]
        return _report, (
            runs,
            self.partial,
            dict(self.transitions),
            self.broken,
            self.oldest,
            self.trimmed,
        )

    def merge(self, part: ReplayReport) -> None:
        """Append ``part`` (the runs read after this report's)."""
        self.runs.extend(part.runs)
        self.partial.update(part.partial)
        self.broken.extend(part.broken)
        self.transitions.update(part.transitions)
        self.trimmed.update(part.trimmed)
        if part.oldest is not None and (self.oldest is None or part.oldest < self.oldest):
            self.oldest = part.oldest


def _change_values(change: Change | None) -> tuple[Any, ...] | None:
    if change is None:
        return None
    return (
        change.step,
        change.decided_at,
        change.request_id,
        change.handoff,
        change.recorded,
        change.replayed,
    )


def _report(
    runs: list[tuple[Any, ...]],
    partial: dict[str, str],
    transitions: dict[str, int],
    broken: list[str],
    oldest: datetime | None,
    trimmed: dict[str, tuple[datetime, str]],
) -> ReplayReport:
    """A :class:`ReplayReport` from its pickled form (``ReplayReport.__reduce__``)."""
    report = ReplayReport([], partial, _counter(transitions), broken, oldest, trimmed)
    out = report.runs
    for run_id, decisions, changed, change, unfaithful, saved, blocked, counts in runs:
        # slot by slot on a bare instance: the dataclass's __init__ and Counter's cost
        # several times more, once a run (the reading process rebuilds every pool piece's)
        run = _new(RunOutcome)
        run.run_id, run.decisions, run.changed = run_id, decisions, changed
        run.first_change = new_change(*change) if change is not None else None
        run.unfaithful, run.saved_usd, run.blocked_estimate_usd = unfaithful, saved, blocked
        run.transitions = _counter(counts)
        out.append(run)
    return report


#: object.__new__ for the interpreted classes, their own for compiled ones (see state._new_state)
_new = RunOutcome.__new__
_new_change: Final = Change.__new__


def new_run(run_id: str) -> RunOutcome:
    """``RunOutcome(run_id)``, made as _report makes runs (replay makes one a run)."""
    run = _new(RunOutcome)
    run.run_id, run.decisions, run.changed, run.first_change = run_id, 0, 0, None
    run.unfaithful, run.saved_usd, run.blocked_estimate_usd = [], 0.0, 0.0
    run.transitions = _counter(None)
    return run


def _counter(counts: dict[str, int] | None) -> Counter[str]:
    """A Counter of ``counts`` without Counter's __init__ and update (Python code): a dict
    subclass made empty, filled as a dict (the same object Counter(counts) gives)."""
    made: Counter[str] = dict.__new__(Counter)
    if counts:
        dict.update(made, counts)
    return made
