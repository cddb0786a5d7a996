"""Alert text that a hostile name cannot bend: control characters shown, lengths capped,
Slack's control sequences escaped.

Every string in an alert that came from a record (run id, tenant, agents, task, reason) is
attacker-controlled: anyone who can write gov.requests (or gov.stops) picks it. Unchecked, a
newline forges a second alert line, ANSI escapes repaint the operator's terminal, a bidi
override reverses what is read, 60 KB of text floods the channel, and ``<!channel>`` pages a
whole Slack channel. :func:`clean_field` defuses the first four for every output (console and
webhook); :func:`slack_escape` the last, for the webhook only (Slack's "Escaping text" rules:
``&``, ``<`` and ``>`` become entities, so ``<!channel>``, ``<@U123>`` and
``<http://evil|click>`` are shown, not obeyed).

Not done: Slack still styles ``*bold*``/``_italic_`` and auto-links a bare ``http://…`` in a
name; neither notifies anyone nor hides text behind a different link.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from baton.schemas.decision import Decision

__all__ = [
    "FIELD_MAX",
    "STALE_AFTER_S",
    "TEXT_MAX",
    "age_words",
    "cap_text",
    "clean_field",
    "decided_posix",
    "slack_escape",
    "stale_note",
    "stop_age",
    "stop_line",
]

#: characters kept of one name in an alert (run ids, agents, tasks, reasons are far shorter)
FIELD_MAX = 100
#: characters of one alert message (Slack advises under 4,000 for a message's text)
TEXT_MAX = 3000

_ELLIPSIS = "…"


def clean_field(text: str, limit: int = FIELD_MAX) -> str:
    """``text`` as one printable line of at most ``limit`` characters.

    Characters that are not printable (C0/C1 controls, newlines, DEL, bidi overrides and other
    format characters, line/paragraph separators, unassigned code points) are shown as
    ``\\x0a``/``\\u202e``, so what the operator reads is what the record held; a longer
    result is cut and ends with ``…``.
    """
    head = text[:limit]  # never more than ``limit`` characters are looked at
    if not head.isprintable():
        head = "".join(ch if ch.isprintable() else _visible(ch) for ch in head)
    if len(text) > limit or len(head) > limit:
        head = head[: limit - 1] + _ELLIPSIS
    return head


def cap_text(text: str, limit: int = TEXT_MAX) -> str:
    """``text`` cut to ``limit`` characters, ending with ``…`` when it was cut."""
    if limit < 1:
        raise ValueError(f"cap_text: limit must be >= 1, got {limit}")
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def slack_escape(text: str) -> str:
    """``text`` with ``&``, ``<``, ``>`` as Slack's entities (``&`` first, so an entity the
    text already holds is shown as typed, never decoded)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def stop_line(decision: Decision) -> str:
    """The seed's alert line, e.g. ``🛑 Multi-Agent run run_742 stopped: ownership_conflict,
    handoff=planner -> researcher, task=refund_check``; every name shown by
    :func:`~baton.sinks.alert_text.clean_field` (one line, capped)."""
    return (
        f"🛑 Multi-Agent run {clean_field(decision.run_id)} stopped: "
        f"{clean_field(decision.reason)}, "
        f"handoff={_name(decision.from_agent)} -> {_name(decision.to_agent)}, "
        f"task={_name(decision.task_id)}"
    )


def _name(value: str | None) -> str:
    return clean_field(value) if value else "?"


def _visible(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


#: a stop decided longer ago than this is announced with its age: an alerter that was down
#: announces what it missed, and a genuine signed stop written to gov.stops again is
#: announced anew by an alerter that no longer remembers it (h44b F1): on-call sees which
STALE_AFTER_S = 300.0


def stop_age(decision: Any) -> float | None:
    """Seconds since ``decision`` was decided, by this host's clock (None: no time)."""
    decided = decision.decided_at
    if decided is None:
        return None
    decided = decided.replace(tzinfo=UTC) if decided.tzinfo is None else decided
    return (datetime.now(UTC) - decided).total_seconds()


def decided_posix(decision: Any) -> float | None:
    """When ``decision`` was decided, in POSIX seconds (None: no time; naive is UTC)."""
    decided = decision.decided_at
    if decided is None:
        return None
    return (decided.replace(tzinfo=UTC) if decided.tzinfo is None else decided).timestamp()


def stale_note(age_s: float | None) -> str:
    """`` (decided 2 h ago)`` for a stop older than STALE_AFTER_S, else ``""``."""
    if age_s is None or age_s <= STALE_AFTER_S:
        return ""
    return f" (decided {age_words(age_s)} ago)"


def age_words(age_s: float) -> str:
    """``2 h``, ``3 d``, ``5 min``, ``40 s``: an age in its largest whole unit (a negative
    one, a clock ahead, in seconds: ``-30 s``)."""
    for unit, seconds in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if age_s >= seconds:
            return f"{age_s / seconds:,.0f} {unit}"
    return f"{age_s:,.0f} s"
