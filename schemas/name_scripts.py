"""The character rules of a non-ASCII name, as precompiled ``regex`` patterns run in C.

``baton.schemas.names`` says what a name may hold; this module holds the Unicode property
tests that say it, one pass in C each, so that a name of 256 letters costs the same few
microseconds whatever its script (a per-letter script lookup in Python cost ~8.5 ms of CPU
for an event of 64 such names: a hostile client could stall a partition).

* ``INVISIBLE``: a code point that renders as nothing or as a blank and that Python still
  calls printable: every Default_Ignorable_Code_Point (U+034F, variation selectors,
  Mongolian free variation selectors, Khmer inherent vowels, ...), the Hangul fillers and
  the Braille blank U+2800;
* ``BASE``: a letter or a digit, which every name needs at least one of;
* ``stray_mark``: a combining mark with no letter, digit or mark before it to sit on;
* ``one_script``: the script rule over letters *and digits* by their Script_Extensions
  (UTS #24), so an Arabic-Indic zero ``٠`` (a dot) or an Oriya zero ``୦`` (an ``o``) in a
  Latin name mixes two scripts; ASCII digits (script Common) go with every script;
* ``shown_in_one_script``: all of them on an accepted name in as few calls as it takes (a
  call costs more than a pass on a short name): one without marks, four with.
"""

from __future__ import annotations

import functools

import regex

__all__ = [
    "BASE",
    "INVISIBLE",
    "SUSPECT",
    "compile_patterns",
    "mixed_pair",
    "one_script",
    "script_of",
    "shown_in_one_script",
    "stray_mark",
]

#: the ISO 15924 codes of Unicode's scripts (Common, Inherited and Unknown left out), the
#: most written first; a code this ``regex`` does not know (an older Unicode) is skipped
_CODES_TEXT = (
    "Latn Hani Cyrl Grek Arab Hang Hira Kana Deva Hebr Thai Bopo Copt Armn Syrc Thaa Nkoo "
    "Samr Mand Beng Guru Gujr Orya Taml Telu Knda Mlym Sinh Laoo Tibt Mymr Geor Ethi Cher "
    "Cans Ogam Runr Tglg Hano Buhd Tagb Khmr Mong Limb Tale Talu Bugi Lana Bali Sund Batk "
    "Lepc Olck Brai Glag Tfng Yiii Lisu Vaii Bamu Sylo Phag Saur Kali Rjng Java Cham Tavt "
    "Mtei Linb Lyci Cari Ital Goth Perm Ugar Xpeo Dsrt Shaw Osma Osge Elba Aghb Vith Todr "
    "Lina Cprt Armi Palm Nbat Hatr Phnx Lydi Sidt Mero Merc Khar Sarb Narb Mani Avst Prti "
    "Phli Phlp Orkh Hung Rohg Gara Yezi Sogo Sogd Ougr Chrs Elym Brah Kthi Sora Cakm Mahj "
    "Shrd Khoj Mult Sind Gran Tutg Newa Tirh Sidd Modi Takr Ahom Dogr Wara Diak Nand Zanb "
    "Soyo Pauc Sunu Bhks Marc Gonm Gong Tols Maka Kawi Xsux Pcun Cpmn Egyp Hluw Gukh Mroo "
    "Tnsa Bass Hmng Krai Medf Berf Miao Tang Nshu Kits Jurc Dupl Sgnw Hmnp Toto Wcho Nagm "
    "Onao Tayo Mend Adlm Seal Hrkt"
)
_SCRIPT_CODES = _CODES_TEXT.split()

#: scripts a name may mix: Latin with the ones Chinese, Japanese and Korean names are written
#: in (Unicode's UTS #39 "highly restrictive" sets); any other mix is refused
MIXABLE = (("Latn", "Hani", "Hira", "Kana"), ("Latn", "Hani", "Bopo"), ("Latn", "Hani", "Hang"))


def _known(code: str) -> bool:
    try:
        regex.compile(rf"\p{{scx={code}}}")
    except regex.error:
        return False
    return True


@functools.cache  # (lazy: ~170 compiles, ~15 ms; an ASCII name never needs them)
def _scripts() -> list[str]:
    return [code for code in _SCRIPT_CODES if _known(code)]


_FILLERS = r"\u115F\u1160\u3164\uFFA0"  # Hangul fillers: letters (Lo) that show nothing
_INVISIBLE = rf"[\p{{Default_Ignorable_Code_Point}}{_FILLERS}\u2800]"
INVISIBLE = regex.compile(_INVISIBLE)
#: what may hide something, found in one pass: a mark (every printable default-ignorable code
#: point is a mark but the Hangul fillers), a Hangul filler, the Braille blank
SUSPECT = regex.compile(rf"[\p{{M}}{_FILLERS}\u2800]")
BASE = regex.compile(r"[\p{L}\p{N}]")
_MARK = regex.compile(r"\p{M}")
_STRAY_AFTER = regex.compile(r"[^\p{L}\p{N}\p{M}]\p{M}")

#: a character the script rule does not count: not a letter or digit, or of every script
_FREE = r"[^\p{L}\p{N}]\p{scx=Zyyy}\p{scx=Zinh}"


def _within(codes: tuple[str, ...]) -> str:
    """A pattern for the rest of a name, from its first counted character, in ``codes``."""
    scripts = "".join(rf"\p{{scx={code}}}" for code in codes)
    return rf"(?=[{scripts}])[{scripts}{_FREE}]*+\Z"


# the alternatives are tried in order, each failing at the first counted character unless
# it is of the alternative's scripts: a name costs one pass per script of that character,
# one test a character (single scripts first: a mixable set tests several a character).
# Two groups: Latin and the CJK scripts (which may mix), and the others; a first counted
# character of the first group never tries the ~170 others (a refused Han name cost 25 µs)
_MIXED = sorted({code for codes in MIXABLE for code in codes})
_ANY_MIXED = "[" + "".join(rf"\p{{scx={code}}}" for code in _MIXED) + "]"


def _one_script_text() -> str:
    return (
        rf"[{_FREE}]*+(?:\Z|(?={_ANY_MIXED})(?:"
        + "|".join(_within(codes) for codes in (*((code,) for code in _MIXED), *MIXABLE))
        + rf")|(?!{_ANY_MIXED})(?:"
        + "|".join(_within((code,)) for code in _scripts() if code not in _MIXED)
        + "))"
    )


# the patterns over every script are compiled when first used, not at import (~0.1 s of CPU
# at every `baton` start, `baton replay` included, which checks ASCII names only: the
# ``regex`` module's compile of ~170 scripts' properties)
@functools.cache
def _one_script_pattern() -> regex.Pattern[str]:
    return regex.compile("(?V1)" + _one_script_text())


# every check of a folded name in one call (the call, not the pass, is what a short name
# costs): nothing suspect, a letter or digit, one script
@functools.cache
def _shown_pattern() -> regex.Pattern[str]:
    return regex.compile(
        rf"(?sV1)(?!.*?[\p{{M}}{_FILLERS}\u2800])(?=.*?[\p{{L}}\p{{N}}])" + _one_script_text()
    )


@functools.cache
def _first_script_pattern() -> regex.Pattern[str]:
    return regex.compile("|".join(rf"(\p{{scx={code}}})" for code in _scripts()))


_COUNTED = regex.compile(rf"(?V1)[^{_FREE}]")


def compile_patterns() -> None:
    """Compile the patterns over every script now (~0.1 s of CPU), not at the first name that
    needs them: a worker calls it at its start, so that first non-ASCII name's batch is not
    held ~0.1 s on the event loop (a replay or a CLI command leaves them lazy)."""
    _one_script_pattern()
    _shown_pattern()
    _first_script_pattern()


def shown_in_one_script(folded: str) -> bool:
    """True when ``folded`` shows (no invisible character, no mark with nothing to sit on),
    holds a letter or digit and is of one script: a name, in one call (two with marks); when
    False, the other tests say why."""
    if _shown_pattern().match(folded) is not None:
        return True
    if SUSPECT.search(folded) is None:
        return False  # no mark: the one call said all
    # a name with marks (Devanagari, Thai, ...): one search a test, faster than lookaheads
    return (
        INVISIBLE.search(folded) is None
        and stray_mark(folded) is None
        and BASE.search(folded) is not None
        and one_script(folded)
    )


def stray_mark(folded: str) -> int | None:
    """The index of the first combining mark of ``folded`` with no letter, digit or mark
    before it, or None."""
    if _MARK.match(folded) is not None:
        return 0
    found = _STRAY_AFTER.search(folded)
    return None if found is None else found.start() + 1


def one_script(folded: str) -> bool:
    """True when the letters and digits of ``folded`` share a script (or a mixable set)."""
    return _one_script_pattern().match(folded) is not None


def mixed_pair(folded: str) -> tuple[int, int]:
    """The indexes of two characters of ``folded`` that share no script (or mixable set):
    the first one counted and the first one after it that its scripts do not reach. Call
    only when ``one_script`` is False."""
    first = _COUNTED.search(folded)
    if first is None:  # not reached: a name of no counted character is of one script
        return 0, 0
    at = first.start()
    code = script_of(folded[at])
    # the widest set first (every mixable set of the script): a character past its reach
    # is in none of them; if all is in reach, two mixable sets are mixed: the script's reach
    widest = tuple(sorted({c for codes in MIXABLE if code in codes for c in codes} | {code}))
    reached = _reach(widest).match(folded, at).end()  # type: ignore[union-attr]
    if reached == len(folded):
        reached = _reach((code,)).match(folded, at).end()  # type: ignore[union-attr]
    return at, min(reached, len(folded) - 1)


@functools.cache  # one pattern per script or mixable set: at most ~180
def _reach(codes: tuple[str, ...]) -> regex.Pattern[str]:
    scripts = "".join(rf"\p{{scx={code}}}" for code in codes)
    return regex.compile(rf"(?V1)[{scripts}{_FREE}]*+")


def script_of(ch: str) -> str:
    """The ISO 15924 code of a script of ``ch`` ("Zyyy" when it counts for none)."""
    found = _first_script_pattern().match(ch)
    return "Zyyy" if found is None or found.lastindex is None else _scripts()[found.lastindex - 1]
