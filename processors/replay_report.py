"""What a replay found: per run (its changes, what the proof found, spend) and over all runs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from baton.schemas.decision import Outcome, Reason

__all__ = ["Change", "ReplayReport", "RunOutcome", "label", "usd"]


def label(outcome: str, reason: str) -> str:
    """``allow`` for a plain allow, else ``outcome:reason`` (``stop:handoff_budget_exceeded``)."""
    return "allow" if outcome == Outcome.ALLOW and reason == Reason.OK else f"{outcome}:{reason}"


def usd(amount: float) -> str:
    return f"${Decimal(repr(amount)).quantize(Decimal('0.01')):,}"


@dataclass(frozen=True, slots=True)
class Change:
    """The first step of a run where the new policy decides differently."""

    step: int
    decided_at: datetime
    request_id: str | None
    handoff: str
    recorded: str
    replayed: str


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

    def merge(self, part: ReplayReport) -> None:
        """Append ``part`` (the runs read after this report's)."""
        self.runs.extend(part.runs)
        self.partial.update(part.partial)
        self.broken.extend(part.broken)
        self.transitions.update(part.transitions)
        self.trimmed.update(part.trimmed)
        if part.oldest is not None and (self.oldest is None or part.oldest < self.oldest):
            self.oldest = part.oldest
