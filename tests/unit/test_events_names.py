"""Names at the schema boundary: a look-alike is refused or folded, never a new name; 1e400."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from baton.schemas.events import (
    ApprovalGranted,
    EventError,
    HandoffCompleted,
    HandoffRequested,
    KillSwitch,
    parse_control_event,
    parse_event,
)
from baton.schemas.name_scripts import INVISIBLE
from baton.schemas.names import MAX_NAME, fold, fold_glob, normal_name
from baton.schemas.signing import approval_payload, control_payload

pytestmark = pytest.mark.unit

WHEN = "2026-03-01T09:00:00Z"


def _requested(**fields: Any) -> bytes:
    doc = {
        "type": "handoff_requested",
        "request_id": "req-1",
        "run_id": "run-1",
        "task_id": "refund_check",
        "from_agent": "planner",
        "to_agent": "researcher",
        "event_time": WHEN,
        **fields,
    }
    return orjson.dumps(doc)


def _refusal(raw: bytes) -> EventError:
    with pytest.raises(EventError) as info:
        parse_event(raw)
    return info.value


LOOK_ALIKES = {
    "trailing space": ("researcher ", "U+0020 SPACE"),
    "leading space": (" researcher", "U+0020 SPACE"),
    "inner space": ("re searcher", "U+0020 SPACE"),
    "no-break space": ("researcher\u00a0", "U+00A0 NO-BREAK SPACE"),
    "tab": ("researcher\t", "U+0009"),
    "zero-width space": ("res\u200bearcher", "U+200B ZERO WIDTH SPACE"),
    "zero-width joiner": ("research\u200der", "U+200D ZERO WIDTH JOINER"),
    "byte order mark": ("\ufeffresearcher", "U+FEFF"),
    "right-to-left override": ("\u202eresearcher", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    "NUL": ("researcher\x00", "U+0000"),
    "Cyrillic e": ("r\u0435searcher", "mixes the scripts Cyrl, Latn"),
    "Greek o": ("plann\u03bfr", "mixes the scripts Grek, Latn"),
    "spacing diaeresis": ("researcher\u00a8", "folds (NFKC)"),
}


@pytest.mark.parametrize("name", list(LOOK_ALIKES))
@pytest.mark.parametrize("field", ["to_agent", "from_agent", "tool", "action", "tenant"])
def test_a_look_alike_name_is_a_bad_name_dead_letter_naming_field_and_character(
    field: str, name: str
) -> None:
    text, said = LOOK_ALIKES[name]
    error = _refusal(_requested(**{field: text}))
    assert error.kind == "bad_name"
    assert f"handoff_requested: {field}: bad name" in str(error)
    assert said in str(error)
    assert "expected printable characters of one script" in str(error)


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Researcher", "researcher"),
        ("RESEARCHER", "researcher"),
        ("\uff32\uff45\uff53\uff45\uff41\uff52\uff43\uff48\uff45\uff52", "researcher"),  # fullwidth
        ("Billing.Refund.Create", "billing.refund.create"),
        ("\ufb01le.read", "file.read"),  # the "fi" ligature
        ("Stra\u00dfe", "strasse"),
        ("\u2168_agent", "ix_agent"),  # ROMAN NUMERAL NINE
        ("\u03a3\u039f\u03a6\u0399\u0391", "\u03c3\u03bf\u03c6\u03b9\u03b1"),  # Greek, one script
        ("\u7814\u7a76researcher", "\u7814\u7a76researcher"),  # Han with Latin: allowed
        ("\u30ea\u30b5\u30fc\u30c1\u30e3\u30fc", "\u30ea\u30b5\u30fc\u30c1\u30e3\u30fc"),
    ],
)
def test_a_name_in_another_case_or_width_is_the_same_name(text: str, folded: str) -> None:
    event = parse_event(_requested(to_agent=text, tool=text, action=text, tenant=text))
    assert isinstance(event, HandoffRequested)
    assert (event.to_agent, event.tool, event.action, event.tenant) == (folded,) * 4


def test_every_name_field_of_every_event_is_checked_and_folded() -> None:
    # a field added as a plain str would skip the rule: each name field refuses a zero-width
    # space and folds case, in the SDK's models as on the wire
    cases: list[tuple[type[Any], dict[str, Any], list[str]]] = [
        (
            HandoffRequested,
            {"request_id": "r", "run_id": "x", "task_id": "t", "from_agent": "a", "to_agent": "b"},
            ["tenant", "task_kind", "from_agent", "to_agent", "action", "tool"],
        ),
        (
            HandoffCompleted,
            {"request_id": "r", "run_id": "x", "task_id": "t", "agent": "a"},
            ["tenant", "agent", "status"],
        ),
        (ApprovalGranted, {"approval_id": "p", "run_id": "x", "approver": "a"}, ["approver"]),
        (KillSwitch, {"scope": "global", "operator": "o"}, ["operator", "tenant"]),
    ]
    for model, base, fields in cases:
        for field in fields:
            made = model(**{**base, field: "Agent_X", "event_time": WHEN})
            assert getattr(made, field) == "agent_x", (model.__name__, field)
            with pytest.raises(ValueError, match="bad name"):
                model(**{**base, field: "agent\u200bx", "event_time": WHEN})
    listed = HandoffRequested(**cases[0][1], tools=["Web.Search"], event_time=WHEN)
    assert listed.tools == ["web.search"]
    with pytest.raises(ValueError, match="bad name"):
        HandoffCompleted(**cases[1][1], tools=["web.search "], event_time=WHEN)


def test_ids_are_not_names_and_keep_their_case() -> None:
    event = parse_event(_requested(run_id="Run-1", task_id="Task A", request_id="Req 1"), b"Run-1")
    assert (event.run_id, event.task_id, event.request_id) == ("Run-1", "Task A", "Req 1")


def test_a_name_that_folds_past_256_characters_is_out_of_range() -> None:
    # U+337F (a square "株式会社") is one character that NFKC makes four
    error = _refusal(_requested(to_agent="\u337f" * 100))
    assert error.kind == "out_of_range"
    assert "folds (NFKC) to more than 256 characters (its first 100 to 400)" in str(error)


def test_a_control_event_names_are_checked_too() -> None:
    kill = {"type": "kill_switch", "scope": "tenant", "tenant": "Acme", "operator": "OnCall"}
    event = parse_control_event(orjson.dumps({**kill, "event_time": WHEN}))
    assert isinstance(event, KillSwitch)
    assert (event.tenant, event.operator, event.target) == ("acme", "oncall", "acme")
    with pytest.raises(EventError) as info:
        parse_control_event(orjson.dumps({**kill, "tenant": "acme\u200b", "event_time": WHEN}))
    assert info.value.kind == "bad_name"


# ------------------------------------------------------------------ properties of the form


@given(st.text(max_size=40))
def test_a_name_is_refused_or_folded_to_a_fixed_point(text: str) -> None:
    try:
        name = normal_name(text)
    except ValueError as exc:
        assert "bad name" in str(exc) or "out of range" in str(exc)
        return
    assert normal_name(name) == name == fold(name)  # the normal form of a name is itself
    assert name.isprintable() and " " not in name and 0 < len(name) <= MAX_NAME
    assert unicodedata.normalize("NFKC", name) == name
    assert name.casefold() == name or unicodedata.normalize("NFKC", name.casefold()) == name


@given(st.text(st.characters(codec="ascii", exclude_characters=" "), min_size=1, max_size=30))
def test_every_case_spelling_of_an_ascii_name_is_one_name(text: str) -> None:
    if not text.isprintable() or not any(ch.isalnum() for ch in text):
        with pytest.raises(ValueError, match="bad name"):
            normal_name(text)
        return
    assert normal_name(text.upper()) == normal_name(text.lower()) == normal_name(text.swapcase())


@given(st.text(min_size=1, max_size=30), st.sampled_from(["\u200b", "\u200d", "\u2060", "\xa0"]))
def test_an_invisible_character_anywhere_is_refused(text: str, invisible: str) -> None:
    for at in (0, len(text) // 2, len(text)):
        with pytest.raises(ValueError):
            normal_name(text[:at] + invisible + text[at:])


def test_a_glob_with_a_space_is_refused_and_a_glob_folds_like_names() -> None:
    assert fold_glob("Billing.*") == "billing.*"
    assert fold_glob("[A-Z]*") == "[a-z]*"
    with pytest.raises(ValueError, match="can match no name"):
        fold_glob("billing.refund.create ")


# ------------------------------------------------------------------ signatures


def test_a_signer_signs_the_folded_name_whatever_the_case_it_gives() -> None:
    t = datetime(2026, 3, 1, tzinfo=UTC)
    grant = [approval_payload("apr_1", "Run-1", "d", "grant", who, t) for who in ("Lead", "lead")]
    assert grant[0] == grant[1]
    tenant = [
        control_payload("kill_switch", "tenant", t_, "OnCall", "", t) for t_ in ("Acme", "acme")
    ]
    assert tenant[0] == tenant[1]
    # a run id is an id: its case is part of what is signed
    runs = [control_payload("kill_switch", "run", r, "oncall", "", t) for r in ("Run-1", "run-1")]
    assert runs[0] != runs[1]


# ------------------------------------------------------------------ numbers no float holds


@pytest.mark.parametrize(
    ("field", "text", "where"),
    [
        ("cost_usd", b"1e400", "cost_usd"),
        ("cost_usd", b"-1E+999", "cost_usd"),
        ("tool_calls", b"1" + b"0" * 400, "tool_calls"),
        ("tools", b'["a", 1e400]', "tools[1]"),
        ("extra", b'{"deep": [1, 2, 1e999]}', "extra.deep[2]"),
    ],
)
def test_a_number_no_float_holds_is_out_of_range_naming_its_field(
    field: str, text: bytes, where: str
) -> None:
    completed = {
        "type": "handoff_completed",
        "request_id": "r",
        "run_id": "run-1",
        "task_id": "t",
        "agent": "a",
        "event_time": WHEN,
    }
    raw = orjson.dumps(completed)[:-1] + b',"' + field.encode() + b'":' + text + b"}"
    error = _refusal(raw)
    assert error.kind == "out_of_range"
    assert f"handoff_completed: {where}: number " in str(error)
    assert "is out of range (it overflows a 64-bit float" in str(error)


def test_nan_and_infinity_literals_stay_not_json() -> None:
    raw = _requested(estimated_usd=1.0).replace(b"1.0", b"Infinity")
    assert _refusal(raw).kind == "not_json"


@pytest.mark.parametrize("depth", [10, 900, 990, 5000])
def test_a_deeply_nested_1e400_is_one_event_error_with_a_bounded_message(depth: int) -> None:
    raw = b'{"type":"handoff_completed","x":' + b"[" * depth + b"1e400" + b"]" * depth + b"}"
    error = _refusal(raw)  # never RecursionError: parse_event raises EventError only
    assert error.kind in ("out_of_range", "not_json")
    assert len(str(error)) < 400


def test_the_exported_event_schemas_state_the_name_rule() -> None:
    from baton.schemas.export import NAMES_COMMENT, json_schemas

    events = {n: s for n, s in json_schemas().items() if n not in ("decision.schema.json",)}
    events.pop("policy.schema.json")
    assert len(events) == 8
    assert all(schema["$comment"] == NAMES_COMMENT for schema in events.values())
    assert "bad_name" in NAMES_COMMENT and "NFKC" in NAMES_COMMENT


WORLD_NAMES = [
    *("Nguyễn", "Müller", "エージェント", "えーじぇんと", "에이전트", "代理", "agent_日本", "وكيل"),
    *("एजेंट", "ตัวแทน", "סוכן", "агент", "πράκτορας", "O'Brien", "<@U123>", "agent-1.2"),
]


@pytest.mark.parametrize("name", WORLD_NAMES)
def test_names_written_in_one_script_of_any_language_are_names(name: str) -> None:
    # the script rule refuses a mix (a Cyrillic letter in a Latin name), not a language
    assert normal_name(name) == fold(name)


def test_no_printable_default_ignorable_code_point_passes_inside_a_name() -> None:
    # every one of them (CGJ, variation selectors, Mongolian FVS, Khmer inherent vowels,
    # Hangul fillers, ...), found from Unicode's own property, not a list of ours
    hidden = regex.findall(r"\p{Default_Ignorable_Code_Point}", "".join(map(chr, range(0x110000))))
    assert len(hidden) > 4_000  # the property is there (E0000..E0FFF alone is 4,096)
    for ch in hidden:
        with pytest.raises(ValueError, match=f"bad name .*U\\+{ord(ch):04X}"):
            normal_name(f"she{ch}ll.exec")


@pytest.mark.parametrize(
    "name", ["\u3164", "\u115fab", "\u1160", "\uffa0x", "a\u2800", "\u2800\u2800", "\u17b5"]
)
def test_hangul_fillers_and_the_braille_blank_are_refused_in_events(name: str) -> None:
    error = _refusal(_requested(to_agent=name))
    assert error.kind == "bad_name"
    assert "renders as nothing or a blank" in str(error)


@pytest.mark.parametrize("name", ["\u0301", "_", "-", ".", "*", "\u2192", "\u00b7\u00b7"])
def test_a_name_of_no_letter_or_digit_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="no letter or digit"):
        normal_name(name)


@pytest.mark.parametrize("name", ["\u0301abc", "_\u0301x", "a.\u0308b", "x-\u20dd"])
def test_a_combining_mark_with_nothing_to_sit_on_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="combining mark with no letter or digit to sit on"):
        normal_name(name)


@pytest.mark.parametrize(
    "name",
    ["billing\u0660refund", "billing\u06f0refund", "pr\u0b66c.kill", "agent\u0967", "\u0430gent1"],
)
def test_a_digit_of_another_script_mixes_scripts(name: str) -> None:
    with pytest.raises(ValueError, match="mixes the scripts"):
        normal_name(name)


@pytest.mark.parametrize(
    "name", ["\u0648\u0643\u064a\u0644\u0661", "\u090f\u091c\u0947\u0902\u091f\u0967", "agent_7"]
)
def test_digits_of_the_names_own_script_or_ascii_digits_are_allowed(name: str) -> None:
    assert normal_name(name) == fold(name)
    assert normal_name("\u0430\u0433\u0435\u043d\u04422") == "\u0430\u0433\u0435\u043d\u04422"


@pytest.mark.parametrize(
    "name",
    [
        "B\u0130LLING.REFUND",
        "bi\u0307lling.refund",
        "B\u0130lling.Refund",
        # every dot after the i goes, not one a fold: with one, the SDK's folded name was
        # another name once the worker folded it again (session 29: an approval-gated
        # action sent as "bi\u0307\u0307lling.refund.create" was allowed)
        "bi\u0307\u0307lling.refund",
        "bi\u0307\u0307\u0307lling.refund",
        "B\u0130\u0307LLING.REFUND",
        "BI\u0307\u0307LLING.REFUND",
    ],
)
def test_the_turkish_dotted_capital_i_folds_to_a_plain_i(name: str) -> None:
    assert normal_name(name) == "billing.refund"
    assert fold(fold(name)) == fold(name)


# the characters whose folds interact: i and its dotted and dotless kin, the dot above and
# other marks, compatibility forms that NFKC makes an i or an I, letters case folding expands
_FOLD_KIN = (
    "iI\u0130\u0131\u0307\u0308\u0323\u2071\u1d62\u24d8\uff49\uff29\u00df\u03c2\u03a3\u1e9e\u212a"
)


@given(st.text(st.sampled_from(_FOLD_KIN + "bl."), max_size=12))
def test_a_fold_is_its_own_fold(text: str) -> None:
    assert fold(fold(text)) == fold(text)


def test_a_raw_event_s_name_with_extra_dots_is_the_name_the_policy_gates() -> None:
    event = parse_event(_requested(action="bi\u0307\u0307lling.refund.create"))
    assert isinstance(event, HandoffRequested)
    assert event.action == "billing.refund.create"


def test_a_refused_mix_names_both_characters() -> None:
    error = _refusal(_requested(tool="pr\u0b66c.kill"))
    assert "U+0B66 ORIYA DIGIT ZERO at index 2" in str(error)
    assert "U+0070 LATIN SMALL LETTER P at index 0" in str(error)


def test_every_invisible_character_stays_one_in_the_fold() -> None:
    # names.py checks only a name's fold on its common path: NFKC must keep them all
    invisible = regex.findall(INVISIBLE.pattern, "".join(map(chr, range(0x110000))))
    for ch in invisible:
        folded = fold(f"a{ch}b")
        assert INVISIBLE.search(folded) or not folded.isprintable(), f"U+{ord(ch):04X}"
