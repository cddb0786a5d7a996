"""The one normal form of names (agents, tools, actions, tenants, approvers): what a name may hold.

A name is how the policy picks a rule (``roles.<agent>``, a tool in ``tools.block``, a
tenant's limits) and how the engine tells agents apart (ownership, ``max_bounces``,
self-approval). Compared as raw text, look-alikes escaped the policy: ``"Researcher"``,
``"researcher "``, a zero-width space inside, a Cyrillic ``е`` in a Latin name, or the
fullwidth ``ｒｅｓｅａｒｃｈｅｒ`` each named an agent with no role (unrestricted), a fresh
``max_bounces`` pair, or a tool the block list did not match.

So every name is checked and folded once, where it enters Baton (event fields, policy keys
and globs), and only the folded form travels on:

* a name holds printable characters only (Python's ``str.isprintable``): no whitespace at
  all, no control, zero-width, bidi or unassigned code points, and none that renders as
  nothing or a blank though Python calls it printable (every Default_Ignorable_Code_Point:
  U+034F, variation selectors, Mongolian free variation selectors, Khmer inherent vowels;
  the Hangul fillers; the Braille blank U+2800); a name is refused, never repaired (an
  event: a ``bad_name`` dead letter; a policy: a load error naming the key);
* it holds at least one letter or digit, and a combining mark only after a letter, digit or
  mark (a lone U+0301 is no name); a policy glob need hold no letter (``*``);
* its letters *and digits* come from one script (Latin, Greek, Cyrillic, ...; Latin may mix
  with the Chinese, Japanese and Korean scripts as names written in those do), a character
  counting for every script in its Script_Extensions, so a Cyrillic ``е`` cannot pass for a
  Latin ``e`` nor an Arabic-Indic zero ``٠`` for a dot; ASCII digits go with every script;
* it is compared, stored and recorded in its normal form: NFKC, then case folded, then NFKC
  again (``fold``), so ``Billing.Refund.Create`` is ``billing.refund.create`` and
  ``ｒｅｓｅａｒｃｈｅｒ`` is ``researcher``; the Turkish capital ``İ`` (U+0130), which case
  folds to ``i`` + U+0307 COMBINING DOT ABOVE (a plain-looking ``i``), folds to ``i``, so
  ``BİLLING`` is ``billing``. A folded name is at most 256 characters.

The character tests run in C (``baton.schemas.name_scripts``): a name of 256 letters of any
script costs a few microseconds, so a flood of long non-ASCII names cannot stall a worker.
An event's names are checked together (``fold_event_names``), bounded twice over: past
``MAX_EVENT_NAME_CHARS`` characters in names that are not pure ASCII the event is refused
before any of them is checked (CPython's NFKC takes its slow path, ~0.1 µs a character, on a
name holding a composing mark), and its first bad name ends it (explaining a refusal runs
every script rule: 64 refused names cost 25-60 times an ASCII event of their size).

Not guaranteed: two different names in one script that look alike (``l`` and ``1``, a
whole-Cyrillic ``раура``) stay two names; ids (``run_id``, ``task_id``, ``request_id``)
are not names and are compared exactly, byte for byte.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Final

from baton.schemas.name_scripts import (
    BASE,
    INVISIBLE,
    SUSPECT,
    mixed_pair,
    one_script,
    script_of,
    shown_in_one_script,
    stray_mark,
)

__all__ = [
    "MAX_EVENT_NAME_CHARS",
    "MAX_NAME",
    "EventNameRefused",
    "fold",
    "fold_event_names",
    "fold_glob",
    "fold_keys",
    "name_problem",
    "normal_name",
]

#: the longest name, before and after folding (NFKC can make one character eighteen)
MAX_NAME = 256
#: characters in the names of one event that are not pure ASCII, all its name fields together.
#: Checking and folding such a name costs ~0.05-0.2 µs a character (CPython's NFKC takes its
#: slow path once a composing mark is in it; the script rules scan it in C), where an ASCII
#: name costs a few passes in C: past this budget an event is refused before any is checked
MAX_EVENT_NAME_CHARS = 1024


def fold(text: str) -> str:
    """``text`` in the normal form names are compared in: NFKC, case folded, NFKC again.

    Safe on any text (it checks nothing); the normal form of a folded text is itself.
    """
    if text.isascii():
        return text.lower()  # the same as the general path for ASCII, ten times faster
    # the Turkish capital I with dot (U+0130) case folds to i + U+0307 COMBINING DOT ABOVE,
    # which renders as a plain i: "BİLLING" is "billing", and so is "bi\u0307lling". Every
    # dot after the i goes, not one: with one a pass, "bi\u0307\u0307lling" folded to
    # "bi\u0307lling" and that again to "billing", so a name the SDK folded was another
    # name once the worker folded it again (an approval-gated action allowed, session 29)
    normal = unicodedata.normalize("NFKC", text)
    folded = _DOTTED_I.sub("i", normal.casefold())
    # NFKC again only if case folding changed something: normalizing costs ~0.1 µs a
    # character once a mark is in the text (CPython's full path), the same again for nothing
    return folded if folded == normal else unicodedata.normalize("NFKC", folded)


def name_problem(text: str) -> str | None:
    """None when ``text`` may be a name; else what is wrong with it, naming the character."""
    return _checked(text)[0]


def normal_name(text: str) -> str:
    """``text`` folded (``fold``), or ValueError naming the bad character or the length.

    The pydantic validator of every name field: its messages start with "bad name" (an
    event's ``bad_name`` dead letter) or hold "out of range" (``out_of_range``).
    """
    folded = _RECENT.get(text)
    if folded is not None:
        return folded  # a name seen lately: one dict look-up (most names repeat)
    if (
        text.isascii()
        and text.isprintable()
        and " " not in text
        and 0 < len(text) <= MAX_NAME
        and (text[0].isalnum() or _ASCII_BASE.search(text))
    ):
        return _remembered(text, text.lower())  # a few passes in C, no Unicode tables
    past = _folds_past_max(text)
    if past is not None:
        raise ValueError(
            f"out of range: name {_shown(text)} folds (NFKC) to more than {MAX_NAME} "
            f"characters (its first {past[0]} to {past[1]})"
        )
    problem, folded = _checked(text)
    if problem is not None:
        raise ValueError(
            f"bad name {_shown(text)}: {problem}; expected printable characters of one "
            "script, a letter or digit among them, no spaces or invisible characters"
        )
    if len(folded) > MAX_NAME:
        raise ValueError(
            f"out of range: name {_shown(text)} folds (NFKC) to {len(folded)} characters, "
            f"more than {MAX_NAME}"
        )
    return _remembered(text, folded)


#: names longer than this are folded a piece at a time first (``_folds_past_max``): the first piece
_PROBED = 16
#: characters the pieces' folds may count twice where they meet (a mark at the start of one
#: composing with the letter ending the other, or freeing that letter's marks to compose: at
#: most 3 each, the longest canonical decomposition being 4; an "i" + U+0307 split: 1)
_PIECE_SLACK = 8


def _folds_past_max(text: str) -> tuple[int, int] | None:
    """(characters read, what they fold to) once ``text`` surely folds to more than MAX_NAME
    characters, found by folding it a piece at a time (``_PROBED`` characters, then each piece
    twice the last) until the pieces' folds pass MAX_NAME with the slack of every meeting
    taken off, so the work stays near MAX_NAME characters of output; else None.

    NFKC expands a character up to 18 (U+FDFA; the squared katakana words 4-6) and its cost
    grows with what it writes: a 256-character name of them took 230-580 µs to fold before
    it was refused as too long (~4x the 64-ASCII-tools completion; 7x after three costly
    names, past the 3.4x the budget of non-ASCII characters was measured to leave). Only a
    name holding a character with a decomposition (not NFKD-normalized: one pass in C) can
    expand at all; one folding to at most MAX_NAME is never refused here."""
    if len(text) <= _PROBED or text.isascii() or unicodedata.is_normalized("NFKD", text):
        return None
    written = pieces = start = 0
    size = _PROBED
    while start < len(text):
        written += len(fold(text[start : start + size]))
        pieces += 1
        start, size = start + size, 2 * size  # few calls for a name that does not expand
        if written - _PIECE_SLACK * pieces > MAX_NAME:  # a meeting after each piece, at most
            return min(start, len(text)), written
    return None


class EventNameRefused(ValueError):
    """A name of an event refused: ``loc`` is where (its field, and its index in a list),
    ``name`` the value there."""

    def __init__(self, loc: tuple[str | int, ...], message: str, name: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.name = name


def fold_event_names(
    doc: dict[str, Any], names: tuple[str, ...], lists: tuple[str, ...], max_items: int
) -> dict[str, Any]:
    """``doc`` (an event's fields) with the names it holds folded: the fields ``names`` hold a
    name each, the fields ``lists`` a list of at most ``max_items`` names. A copy when a name
    changes; ``doc`` itself is never changed.

    An event whose non-ASCII names pass ``MAX_EVENT_NAME_CHARS`` is refused before any of
    them is checked (they are checked after the pass that counts them, unless seen lately),
    and the first bad name ends the event (one refusal per event, however many names it
    holds: a refusal costs the most): ``EventNameRefused`` naming the field. A value that is
    no name of a bounded length (not a string, empty, too long, a list too long) is left as
    it is, for the model's own bounds to refuse.
    """
    # one pass; an ASCII name seen lately (nearly every name) is folded inline: this runs for
    # every event
    spent = 0
    folded: dict[tuple[str, int | None], str] = {}
    later: list[tuple[str, str, int | None]] = []
    recent = _RECENT
    for field in names:
        value = doc.get(field)
        if type(value) is str:
            name = recent.get(value)
            if name is None or not value.isascii():
                spent = _fold_one(value, field, None, name, spent, folded, later)
            elif name != value:
                folded[field, None] = name
    for field in lists:
        values = doc.get(field)
        if type(values) is list and len(values) <= max_items:
            for at, value in enumerate(values):
                if type(value) is str:
                    name = recent.get(value)
                    if name is None or not value.isascii():
                        spent = _fold_one(value, field, at, name, spent, folded, later)
                    elif name != value:
                        folded[field, at] = name
    for value, field, spot in later:  # within the budget: now worth checking
        name = _event_name(value, field, spot)
        if name != value:
            folded[field, spot] = name
    return _with(doc, folded) if folded else doc


def _fold_one(
    value: str,
    field: str,
    at: int | None,
    name: str | None,
    spent: int,
    folded: dict[tuple[str, int | None], str],
    later: list[tuple[str, str, int | None]],
) -> int:
    """Fold ``value`` (``name``: its normal form when seen lately) into ``folded`` now, if it
    is ASCII or seen lately, or put it in ``later``; the non-ASCII characters spent so far,
    past the budget an EventNameRefused."""
    if value.isascii():  # and not seen lately
        if not 0 < len(value) <= MAX_NAME:
            return spent
        name = _event_name(value, field, at)
    else:
        if len(value) > MAX_NAME:
            return spent
        spent += len(value)
        if spent > MAX_EVENT_NAME_CHARS:
            raise EventNameRefused(_loc(field, at), _over_budget(spent), value)
        if name is None:
            later.append((value, field, at))
            return spent
    if name != value:
        folded[field, at] = name
    return spent


def _with(doc: dict[str, Any], folded: dict[tuple[str, int | None], str]) -> dict[str, Any]:
    """A copy of ``doc`` with the ``folded`` names (by field, and index in a list) in place."""
    out = dict(doc)
    for (field, at), name in folded.items():
        if at is None:
            out[field] = name
        else:
            if out[field] is doc[field]:
                out[field] = list(doc[field])
            out[field][at] = name
    return out


def _loc(field: str, at: int | None) -> tuple[str | int, ...]:
    return (field,) if at is None else (field, at)


def _over_budget(spent: int) -> str:
    return (
        f"bad name: this name takes the event past {MAX_EVENT_NAME_CHARS} characters in names "
        f"that are not pure ASCII ({spent} so far), the budget per event that bounds what "
        "checking them costs; the event is refused unchecked"
    )


def _event_name(text: str, field: str, at: int | None) -> str:
    try:
        return normal_name(text)
    except ValueError as exc:
        raise EventNameRefused(_loc(field, at), str(exc), text) from None


#: names seen lately -> their normal form; only names that passed, of at most 64 characters,
#: at most 2,048 of them (~1 MB at worst): a flood of new names only empties it, each name
#: then costs its checks again (a few microseconds, in C), never more
_RECENT: Final[dict[str, str]] = {}
_RECENT_MAX, _RECENT_LONGEST = 2048, 64


def _remembered(text: str, folded: str) -> str:
    if len(text) <= _RECENT_LONGEST:
        if len(_RECENT) >= _RECENT_MAX:
            _RECENT.clear()
        _RECENT[text] = folded
    return folded


def _checked(text: str, glob: bool = False) -> tuple[str | None, str]:
    """(what is wrong with ``text`` as a name, or a glob, or None; ``text`` folded): one
    fold for both. A glob (``*``) need not hold a letter or digit."""
    if not text:
        return "it is empty", text
    if not text.isprintable() or " " in text:
        return _first_invisible(text), text
    folded = fold(text)
    if text.isascii():
        return (None if glob or _ASCII_BASE.search(text) else _NO_BASE), folded
    if folded != text and (not folded.isprintable() or " " in folded):
        return _folds_to(folded), folded
    # the common case in one call; every invisible character of ``text`` is one in its fold
    # (NFKC keeps them), so the fold alone is checked: tests/unit/test_events_names.py
    if not glob and shown_in_one_script(folded):
        return None, folded
    problem = _hidden(text, folded)
    if problem is not None:
        return problem, folded
    if not glob and BASE.search(folded) is None:
        return _NO_BASE, folded
    if glob and one_script(folded):
        return None, folded
    # shown, based and not of one script: mixed (the scan is not made again for a name)
    return _mixed(folded), folded


_NO_BASE = "it holds no letter or digit"


def _hidden(text: str, folded: str) -> str | None:
    """What in ``text`` (or its fold) shows nothing: an invisible character, or a combining
    mark with nothing to sit on; None when all shows. One pass over each in the common case
    (``SUSPECT`` finds nothing)."""
    suspect = SUSPECT.search(text) is not None
    hidden = INVISIBLE.search(text) if suspect else None
    if hidden is not None:
        return f"{_described(text, hidden.start())} renders as nothing or a blank"
    if folded != text:
        suspect = SUSPECT.search(folded) is not None
        if (
            not folded.isprintable()
            or " " in folded
            or (suspect and INVISIBLE.search(folded) is not None)
        ):
            return _folds_to(folded)
    stray = stray_mark(folded) if suspect else None
    if stray is not None:
        where = _described(folded, stray)
        return f"{where} is a combining mark with no letter or digit to sit on"
    return None


def _folds_to(folded: str) -> str:
    return f"it folds (NFKC) to {_shown(folded)}, which holds a space or an invisible character"


_ASCII_BASE = re.compile("[0-9A-Za-z]")
#: an i and the combining dots above it (U+0307) that case folding leaves of U+0130
_DOTTED_I = re.compile("i\u0307+")


def _mixed(folded: str) -> str:
    """What mixes scripts in ``folded``: the two characters of no common script."""
    first, other = mixed_pair(folded)
    if first == other:  # not reached: shown_in_one_script and the tests behind it disagree
        return f"it is not of one script ({_shown(folded)})"
    codes = sorted({script_of(folded[first]), script_of(folded[other])})
    return (
        f"it mixes the scripts {', '.join(codes)}: {_described(folded, other)} is not of the "
        f"script of {_described(folded, first)}"
    )


def fold_glob(pattern: str) -> str:
    """A policy glob over names, folded like the names it matches (``[A-Z]*`` is ``[a-z]*``).

    A glob holding a space or an invisible character can match no name: refused
    (ValueError), so that a block list with a stray space does not silently block nothing.
    """
    problem = _checked(pattern, glob=True)[0]
    if problem is not None:
        raise ValueError(
            f"glob {_shown(pattern)} can match no name: {problem}; names hold printable "
            "characters of one script, no spaces"
        )
    return fold(pattern)


def fold_keys(mapping: Any, what: str) -> Any:
    """A policy mapping keyed by names (roles, tenants, keys) with its keys folded; ValueError
    naming both keys when two fold to one name (which rule applies would be a coin toss).

    Anything but a mapping of string keys is returned as is, for pydantic to refuse."""
    if not isinstance(mapping, Mapping):
        return mapping
    folded: dict[Any, Any] = {}
    first: dict[Any, Any] = {}
    for key, value in mapping.items():
        try:
            name = normal_name(key) if isinstance(key, str) else key
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
        if name in folded:
            raise ValueError(
                f"{what} {_shown(first[name])} and {_shown(key)} are one name once folded "
                f"(NFKC, case: {_shown(name)}); keep one of them"
            )
        folded[name], first[name] = value, key
    return folded


def _first_invisible(text: str) -> str:
    for at, ch in enumerate(text):
        if ch == " " or not ch.isprintable():
            return _described(text, at)
    return "an invisible character"  # not reached: the caller saw one


def _described(text: str, at: int) -> str:
    """The character of ``text`` at ``at`` by code point and Unicode name, and its index."""
    ch = text[at]
    return f"U+{ord(ch):04X} {unicodedata.name(ch, 'control character')} at index {at}"


def _shown(text: str) -> str:
    """``text`` in double quotes, invisible characters escaped, cut at 80 characters."""
    shown = '"' + (text if text.isprintable() else ascii(text)[1:-1]) + '"'
    return shown if len(shown) <= 80 else shown[:77] + "..."
