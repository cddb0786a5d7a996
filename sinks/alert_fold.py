"""Stops folded into one summary line: a storm's (many at once) and late ones' (decided long
before they reached the alerter).

Both keep counts and a few names, never the stops themselves, so memory is bounded whatever
the records hold; every name shown is made safe by :func:`~baton.sinks.alert_text.clean_field`
and cut shorter than in a stop's own line, so a summary names many of them within
``TEXT_MAX``. A storm names the distinct runs it folded (the first ``RUNS_SHOWN``, then "and N
more"): a writer of gov.handoff.requests gets the workers to sign stops of runs it names and
could fold a real stop into its storm, which named only its first stop (h44b F2). Not
guaranteed: that writer may still fill the first ``RUNS_SHOWN`` names with its own runs (its
stops come first); the count of runs then says more were folded, and the audit holds each one.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from baton.schemas.decision import Decision
from baton.sinks.alert_text import TEXT_MAX, age_words, cap_text, clean_field

__all__ = [
    "LATE_SHOWN",
    "NAME_SHOWN",
    "RUNS_SHOWN",
    "LateKeys",
    "LateStops",
    "Storm",
    "late_text",
    "storm_text",
]

#: distinct reasons / tenants a storm counts one by one; the rest are "(others)"
_STORM_KEYS = 100
#: distinct runs a storm counts; beyond it the summary says "10000+"
_STORM_RUNS = 10_000
#: runs a storm summary names, late stops a late summary names
RUNS_SHOWN = 10
LATE_SHOWN = 5
#: characters of one name in a summary (a stop's own line shows FIELD_MAX)
NAME_SHOWN = 40


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _count(counter: Counter[str], key: str) -> None:
    if key not in counter and len(counter) >= _STORM_KEYS:
        key = "(others)"
    counter[key] += 1


@dataclass
class Storm:
    """What a storm holds: counts, the first runs' names and the first stop's line."""

    started: float
    count: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    tenants: Counter[str] = field(default_factory=Counter)
    runs: set[bytes] = field(default_factory=set)
    runs_capped: bool = False
    #: the first RUNS_SHOWN distinct runs, as shown
    names: list[str] = field(default_factory=list)
    first: str = ""

    def add(self, decision: Decision, line: str) -> None:
        """Fold ``decision``, whose own alert line is ``line``."""
        self.count += 1
        if not self.first:
            self.first = line
        _count(self.reasons, clean_field(decision.reason))
        _count(self.tenants, clean_field(decision.tenant))
        run = _digest(decision.run_id)
        if run in self.runs:
            return
        if len(self.runs) >= _STORM_RUNS:
            self.runs_capped = True
            return
        self.runs.add(run)
        if len(self.names) < RUNS_SHOWN:
            self.names.append(clean_field(decision.run_id, NAME_SHOWN))


def storm_text(storm: Storm, seconds: float) -> str:
    """The summary of ``storm`` after ``seconds``: its stops, runs (named), reasons, tenants."""
    reasons = storm.reasons.most_common()
    shown = reasons[:10]
    more = f", {len(reasons) - len(shown)} more reasons" if len(reasons) > len(shown) else ""
    runs = len(storm.runs)
    plus = "+" if storm.runs_capped else ""
    rest = runs - len(storm.names)
    named = ", ".join(storm.names) + (f" and {rest}{plus} more" if rest or plus else "")
    text = (
        f"🛑 Stop storm: {storm.count} stops in {max(seconds, 0.0):.1f} s across "
        f"{runs}{plus} Multi-Agent run{'s' if runs != 1 else ''} ({named}): "
        + ", ".join(f"{reason} ×{n}" for reason, n in shown)
        + more
        + "; tenants: "
        + ", ".join(f"{tenant} ×{n}" for tenant, n in storm.tenants.most_common(5))
        + f"; first: {storm.first.removeprefix('🛑 ')}"
    )
    return cap_text(text, TEXT_MAX)


class LateKeys:
    """The late stops folded into summaries (their digests, the newest ``limit``), in memory
    only: a copy of one is a duplicate, not one more summary. Not the announced stops' set:
    old stops read from the topic's history would evict the recent ones a replay then pages
    again; without this, one old signed stop written again each minute by anyone who can
    write gov.stops made a late summary each minute (h45c F5)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._keys: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, key: bytes) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        if len(self._keys) > self.limit:
            self._keys.popitem(last=False)


@dataclass
class LateStops:
    """Stops decided longer ago than the alerter's bound and never announced by it: counts,
    their ages' range and the newest few, named. The newest, not the first read: anyone who
    can write gov.stops can copy old signed stops in ahead of the ones a down alerter
    missed, which are the newest of the late (just past ``--max-age``; F7, session 45)."""

    started: float
    count: int = 0
    oldest_s: float = 0.0
    #: (age, line) of the :data:`LATE_SHOWN` youngest, youngest first
    shown: list[tuple[float, str]] = field(default_factory=list)

    def add(self, decision: Decision, age_s: float) -> None:
        """Fold ``decision``, decided ``age_s`` seconds ago."""
        self.count += 1
        self.oldest_s = max(self.oldest_s, age_s)
        if len(self.shown) < LATE_SHOWN or age_s < self.shown[-1][0]:
            line = (
                f"run {clean_field(decision.run_id, NAME_SHOWN)} "
                f"({clean_field(decision.reason, NAME_SHOWN)}, decided {age_words(age_s)} ago, "
                f"decision {clean_field(decision.decision_id, NAME_SHOWN)})"
            )
            bisect.insort(self.shown, (age_s, line), key=lambda item: item[0])
            del self.shown[LATE_SHOWN:]

    @property
    def newest_s(self) -> float:
        """The youngest age folded (the first shown: the youngest is always kept)."""
        return self.shown[0][0] if self.shown else float("inf")


def late_text(late: LateStops, bound_s: float) -> str:
    """The summary of ``late``: stops past ``bound_s`` (``--max-age``) are either written to
    gov.stops again (replays: whoever writes the topic can copy a genuine signed stop) or
    missed by an alerter that was down; the line says both, and names the newest few."""
    n = late.count
    newest, oldest = age_words(late.newest_s), age_words(late.oldest_s)
    ages = newest if newest == oldest else f"{newest} to {oldest}"
    rest = n - len(late.shown)
    text = (
        f"⏰ Late stops: {n} stop{'s' if n != 1 else ''} decided {ages} ago (past --max-age "
        f"{age_words(bound_s)}), not announced before by this alerter: old stops written to "
        "gov.stops again (replays), or this alerter was down (or a worker's clock is behind); "
        + ("newest: " if rest else "")
        + "; ".join(line for _, line in late.shown)
        + (f"; and {rest} more" if rest else "")
    )
    return cap_text(text, TEXT_MAX)
