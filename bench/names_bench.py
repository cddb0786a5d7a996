"""CPU cost of the name rule (baton.schemas.names) on the parse path: µs per event, alternated.

Compares, in one process and alternating rounds, validating a handoff whose seven name fields
are checked and folded (the real ``HandoffRequested``) with the same model whose name fields
are plain bounded strings (what parsing cost before the rule), for ASCII names and for names
that take the Unicode path; a completion of 64 tools of 256 ASCII characters next to one of
64 tools of 256 distinct Han letters (the hostile case: at most 20x); ``normal_name`` alone;
and a table of ``parse_event`` per event for legitimate names of several scripts and hostile
ones (refused, holding composing marks, past the per-event budget), against an ASCII handoff
and the 64-ASCII-tools completion. With ``--against OLD_NAMES_PY`` (a ``schemas/names.py`` of
another commit, e.g. ``git show HEAD~2:schemas/names.py > /tmp/names_old.py``), each name list
is also folded by that version's ``normal_name``, alternating in the same run; with
``--events-against OLD_EVENTS_PY`` (``git show 94df207:schemas/events.py > /tmp/events_old.py``)
the parse_event table has that version's column too. CPU time (``time.process_time``), best of
the rounds: ``python -m bench.names_bench [--events N] [--rounds R] [--against FILE]
[--events-against FILE]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from pydantic import Field

from baton.schemas.events import HandoffRequested, parse_event
from baton.schemas.names import normal_name

PlainName = Annotated[str, Field(min_length=1, max_length=256)]


class PlainHandoff(HandoffRequested):
    """HandoffRequested with its name fields as plain bounded strings (no check, no fold)."""

    tenant: PlainName = "default"
    task_kind: PlainName | None = None
    from_agent: PlainName
    to_agent: PlainName
    action: PlainName | None = None
    tool: PlainName | None = None
    tools: Annotated[list[PlainName], Field(max_length=64)] | None = None


def _doc(names: list[str]) -> dict[str, Any]:
    tenant, source, target, action, tool, used = names
    return {
        "type": "handoff_requested",
        "request_id": "run-1:7",
        "run_id": "run-1",
        "tenant": tenant,
        "task_id": "t7",
        "from_agent": source,
        "to_agent": target,
        "action": action,
        "tool": tool,
        "tools": [tool, used],
        "event_time": "2026-03-01T09:00:00Z",
    }


ASCII = ["acme", "Planner", "billing_agent", "billing.refund.create", "stripe.refund", "web.search"]
UNICODE = ["ácme", "Plánner", "研究者", "billing.réfund", "ｓｔｒｉｐｅ.refund", "web.search"]


def _completion(tools: list[str]) -> bytes:
    doc = {
        "type": "handoff_completed",
        "request_id": "run-1:7",
        "run_id": "run-1",
        "task_id": "t7",
        "agent": "billing_agent",
        "tools": tools,
        "event_time": "2026-03-01T09:00:05Z",
    }
    return orjson.dumps(doc)


_HAN = [chr(c) for c in range(0x4E00, 0x9FFF)]
ASCII_TOOLS = [f"t{i}" + "x" * 250 for i in range(64)]
HAN_TOOLS = ["".join(_HAN[i * 256 : (i + 1) * 256]) for i in range(64)]


def _handoff(names: list[str], tools: list[str]) -> bytes:
    tenant, source, target, action, tool = names
    return orjson.dumps(dict(_doc([tenant, source, target, action, tool, tool]), tools=tools))


_DEVANAGARI = "एजेंटकार्यकर्ता"  # letters with vowel signs and a virama: marks
_MARKED = "a\u0301"  # composes to á: CPython's NFKC takes its slow path on the whole name


def _tools(make: Callable[[int], str], count: int = 64) -> list[str]:
    return [make(i) for i in range(count)]


def _han(i: int, length: int = 256) -> str:
    return "".join(_HAN[(i * length + k) % len(_HAN)] for k in range(length))


#: parse_event CPU per event: legitimate names, then hostile ones (refused, or costly to
#: accept); each list holds a few distinct events, so that no memo answers for the next
PARSE_CASES: dict[str, list[bytes]] = {
    "handoff, ASCII names": [_handoff(ASCII[:5], ["web.search"])],
    "handoff, Japanese names": [
        _handoff(
            ["アクメ", "企画担当", "研究者", "請求.返金.作成", "検索"], ["検索", "ウェブ.閲覧"]
        )
    ],
    "handoff, Cyrillic, Arabic, Devanagari names": [
        _handoff(["акме", "планировщик", "исследователь", "возврат.создать", "поиск"], ["поиск"]),
        _handoff(["شركة", "مخطط", "وكيل١", "استرداد", "بحث"], ["بحث"]),
        _handoff(["कंपनी", "योजनाकार", "एजेंट१", "धनवापसी", "खोज"], ["खोज"]),
    ],
    "completion, 64 ASCII tools x 256 (the reference)": [
        _completion(_tools(lambda i, k=k: f"t{k}.{i}" + "x" * 240)) for k in range(4)
    ],
    "completion, 64 Han tools x 256": [
        _completion(_tools(lambda i, k=k: _han(i + 64 * k))) for k in range(4)
    ],
    "completion, 64 Han tools x 256, each refused (a Cyrillic letter)": [
        _completion(_tools(lambda i, k=k: _han(i + 64 * k, 255) + "я")) for k in range(4)
    ],
    "completion, 64 Han tools x 256, each refused (a leading U+0301)": [
        _completion(_tools(lambda i, k=k: "\u0301" + _han(i + 64 * k, 255))) for k in range(4)
    ],
    "completion, 64 Han tools x 256, each with a composing mark": [
        _completion(_tools(lambda i, k=k: _MARKED + _han(i + 64 * k, 254))) for k in range(4)
    ],
    "completion, 64 Devanagari tools x 256": [
        _completion(_tools(lambda i, k=k: (_DEVANAGARI * 18)[:252] + f"{i:02d}{k:02d}"))
        for k in range(4)
    ],
    "completion, 64 short tools, each refused (Han + Cyrillic)": [
        _completion(_tools(lambda i, k=k: f"研究者я{i}.{k}")) for k in range(4)
    ],
    "completion, 64 ASCII tools, each refused (a space)": [
        _completion(_tools(lambda i, k=k: f"tool {i}.{k}")) for k in range(4)
    ],
    "completion, 4 tools x 256 with a composing mark (1,024: the budget)": [
        _completion(_tools(lambda i, k=k: _MARKED + _han(i + 4 * k, 254), 4)) for k in range(4)
    ],
    "completion, 3 such tools and a 4th refused at its end": [
        _completion(
            _tools(lambda i, k=k: _MARKED + _han(i + 4 * k, 253) + ("я" if i == 3 else "a"), 4)
        )
        for k in range(4)
    ],
    "completion, 8 tools x 256 with a composing mark (2,048: past the budget)": [
        _completion(_tools(lambda i, k=k: _MARKED + _han(i + 8 * k, 254), 8)) for k in range(4)
    ],
}


Parse = Callable[[bytes], object]


def _parse_cpu_us(events: list[bytes], n: int, parse: Parse = parse_event) -> float:
    """CPU µs per ``parse`` of ``events`` (n in all, cycling); a refusal counts too."""
    start = time.process_time()
    for i in range(n):
        try:  # noqa: SIM105 - a with-statement per call would be measured too
            parse(events[i % len(events)])
        except ValueError:  # EventError, of either version
            pass
    return (time.process_time() - start) / n * 1e6


def _parse_table(rounds: int, n: int, against: str | None) -> None:
    """The parse_event table: this tree's, and (``against``: an events.py of another
    commit, parsing with this tree's names module) that version's in the same rounds."""
    versions: dict[str, Parse] = {"this": parse_event}
    if against:
        versions["against"] = _load_module(against, "events_against").parse_event
    rows: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):  # alternate cases and versions, so noise hits every one alike
        for name, events in PARSE_CASES.items():
            count = n // 20 if len(events[0]) > 4000 else n
            for version, parse in versions.items():
                rows.setdefault((name, version), []).append(_parse_cpu_us(events, count, parse))
    best = {key: min(values) for key, values in rows.items()}
    small = best[("handoff, ASCII names", "this")]
    big = best[("completion, 64 ASCII tools x 256 (the reference)", "this")]
    head = "".join(f" {v + ' µs':>11}" for v in versions)
    title = "parse_event, CPU per event (best of the rounds)"
    print(f"\n{title:<72}{head} {'x handoff':>10} {'x ref':>6}")
    for name in PARSE_CASES:
        cells = "".join(f" {best[(name, v)]:>11.1f}" for v in versions)
        this = best[(name, "this")]
        print(f"{name:<72}{cells} {this / small:>10.1f} {this / big:>6.1f}")


def _load_module(path: str, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


def _load(path: str) -> Callable[[str], str]:
    """``normal_name`` of the names module at ``path`` (another commit's, for comparison)."""
    return _load_module(path, "names_against").normal_name  # type: ignore[no-any-return]


def _cpu_us(fn: Callable[[], object], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", help="a names.py of another commit, to compare with")
    parser.add_argument(
        "--events-against", help="an events.py of another commit, for the parse_event table"
    )
    args = parser.parse_args()
    rows: dict[str, list[float]] = {}
    for label, names in (("ASCII names", ASCII), ("Unicode names", UNICODE)):
        doc = _doc(names)
        raw = orjson.dumps(doc)
        cases = {
            f"validate, plain names ({label})": lambda d=doc: PlainHandoff.model_validate(d),
            f"validate, checked+folded ({label})": lambda d=doc: HandoffRequested.model_validate(d),
            f"parse_event bytes ({label})": lambda r=raw: parse_event(r, b"run-1"),
        }
        for _ in range(args.rounds):  # alternate, so noise hits every case alike
            for name, fn in cases.items():
                rows.setdefault(name, []).append(_cpu_us(fn, args.events))
    completions = {
        "parse_event completion, 64 ASCII tools x 256": _completion(ASCII_TOOLS),
        "parse_event completion, 64 Han tools x 256": _completion(HAN_TOOLS),
    }
    for _ in range(args.rounds):
        for name, raw in completions.items():
            rows.setdefault(name, []).append(
                _cpu_us(lambda r=raw: _parse_cpu_us([r], 1), args.events // 20)
            )
    if args.against:
        versions = {"this": normal_name, "against": _load(args.against)}
        lists = {"6 ASCII names": ASCII, "6 Unicode names": UNICODE, "64 Han tools": HAN_TOOLS}
        for _ in range(args.rounds):  # alternate the versions, so noise hits both alike
            for label, names in lists.items():
                for version, fold_name in versions.items():
                    rows.setdefault(f"normal_name x {label} ({version})", []).append(
                        _cpu_us(lambda f=fold_name, ns=names: [f(n) for n in ns], args.events // 20)
                    )
    for word in ("billing_agent", "Plánner", "研究者"):
        rows[f"normal_name({word!r})"] = [
            _cpu_us(lambda w=word: normal_name(w), args.events * 5) for _ in range(args.rounds)
        ]
    print(f"{'case':<56} {'best µs':>8} {'median µs':>10}")
    for name, values in rows.items():
        ordered = sorted(values)
        print(f"{name:<56} {ordered[0]:>8.2f} {ordered[len(ordered) // 2]:>10.2f}")
    _parse_table(args.rounds, args.events, args.events_against)


if __name__ == "__main__":
    main()
