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
  all, no control, zero-width, bidi or unassigned code points; a name is refused, never
  repaired (an event: a ``bad_name`` dead letter; a policy: a load error naming the key);
* its letters come from one script (Latin, Greek, Cyrillic, ...; Latin may mix with the
  Chinese, Japanese and Korean scripts as names written in those do), so a Cyrillic ``е``
  cannot pass for a Latin ``e``;
* it is compared, stored and recorded in its normal form: NFKC, then case folded, then NFKC
  again (``fold``), so ``Billing.Refund.Create`` is ``billing.refund.create`` and
  ``ｒｅｓｅａｒｃｈｅｒ`` is ``researcher``. A folded name is at most 256 characters.

Not guaranteed: two different names in one script that look alike (``l`` and ``1``, a
whole-Cyrillic ``раура``) stay two names; ids (``run_id``, ``task_id``, ``request_id``)
are not names and are compared exactly, byte for byte.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_NAME",
    "fold",
    "fold_glob",
    "fold_keys",
    "name_problem",
    "normal_name",
]

#: the longest name, before and after folding (NFKC can make one character eighteen)
MAX_NAME = 256

#: scripts a name may mix: Latin with the ones Chinese, Japanese and Korean names are written
#: in (Unicode's UTS #39 "highly restrictive" sets); any other mix is refused
_MIXABLE = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
#: the first word of a letter's Unicode name, where it is not the script's own name
_SCRIPT_ALIASES = {"CJK": "HAN", "KATAKANA-HIRAGANA": "KATAKANA"}


def fold(text: str) -> str:
    """``text`` in the normal form names are compared in: NFKC, case folded, NFKC again.

    Safe on any text (it checks nothing); the normal form of a folded text is itself.
    """
    if text.isascii():
        return text.lower()  # the same as the general path for ASCII, ten times faster
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def name_problem(text: str) -> str | None:
    """None when ``text`` may be a name; else what is wrong with it, naming the character."""
    return _checked(text)[0]


def normal_name(text: str) -> str:
    """``text`` folded (``fold``), or ValueError naming the bad character or the length.

    The pydantic validator of every name field: its messages start with "bad name" (an
    event's ``bad_name`` dead letter) or hold "out of range" (``out_of_range``).
    """
    if text.isascii() and text.isprintable() and " " not in text and 0 < len(text) <= MAX_NAME:
        return text.lower()  # most names: a few passes in C, no Unicode tables
    problem, folded = _checked(text)
    if problem is not None:
        raise ValueError(
            f"bad name {_shown(text)}: {problem}; expected printable characters of one "
            "script, no spaces or invisible characters"
        )
    if len(folded) > MAX_NAME:
        raise ValueError(
            f"out of range: name {_shown(text)} folds (NFKC) to {len(folded)} characters, "
            f"more than {MAX_NAME}"
        )
    return folded


def _checked(text: str) -> tuple[str | None, str]:
    """(what is wrong with ``text`` as a name or None, ``text`` folded): one fold for both."""
    if not text:
        return "it is empty", text
    if not text.isprintable() or " " in text:
        return _first_invisible(text), text
    folded = fold(text)
    if text.isascii():
        return None, folded
    if not folded.isprintable() or " " in folded:
        return (
            f"it folds (NFKC) to {_shown(folded)}, which holds a space or an invisible character",
            folded,
        )
    # letters below U+0250 are all Latin: only the others need their script looked up
    scripts = {_script(ch) for ch in folded if ch >= "\u0250" and ch.isalpha()}
    if scripts and any(ch < "\u0250" and ch.isalpha() for ch in folded):
        scripts.add("LATIN")
    scripts.discard("")
    if len(scripts) > 1 and not any(scripts <= allowed for allowed in _MIXABLE):
        return f"it mixes the scripts {', '.join(sorted(scripts))}", folded
    return None, folded


def fold_glob(pattern: str) -> str:
    """A policy glob over names, folded like the names it matches (``[A-Z]*`` is ``[a-z]*``).

    A glob holding a space or an invisible character can match no name: refused
    (ValueError), so that a block list with a stray space does not silently block nothing.
    """
    problem = name_problem(pattern)
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


def _script(ch: str) -> str:
    """The script of a letter at or above U+0250, from the first word of its Unicode name
    ("" when unnamed); remembered, up to 4,096 letters."""
    script = _SCRIPTS.get(ch)
    if script is None:
        word = unicodedata.name(ch, "").split(" ", 1)[0]
        script = _SCRIPT_ALIASES.get(word, word)
        if len(_SCRIPTS) >= 4096:
            _SCRIPTS.clear()
        _SCRIPTS[ch] = script
    return script


_SCRIPTS: dict[str, str] = {}


def _first_invisible(text: str) -> str:
    for at, ch in enumerate(text):
        if ch == " " or not ch.isprintable():
            code = f"U+{ord(ch):04X}"
            return f"{code} {unicodedata.name(ch, 'control character')} at index {at}"
    return "an invisible character"  # not reached: the caller saw one


def _shown(text: str) -> str:
    """``text`` in double quotes, invisible characters escaped, cut at 80 characters."""
    shown = '"' + (text if text.isprintable() else ascii(text)[1:-1]) + '"'
    return shown if len(shown) <= 80 else shown[:77] + "..."
