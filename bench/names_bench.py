"""CPU cost of the name rule (baton.schemas.names) on the parse path: µs per event, alternated.

Compares, in one process and alternating rounds, validating a handoff whose seven name fields
are checked and folded (the real ``HandoffRequested``) with the same model whose name fields
are plain bounded strings (what parsing cost before the rule), for ASCII names and for names
that take the Unicode path; a completion of 64 tools of 256 ASCII characters next to one of
64 tools of 256 distinct Han letters (the hostile case: at most 20x); and ``normal_name``
alone. With ``--against OLD_NAMES_PY`` (a ``schemas/names.py`` of another commit, e.g.
``git show HEAD~2:schemas/names.py > /tmp/names_old.py``), each name list is also folded by that
version's ``normal_name``, alternating in the same run. CPU time (``time.process_time``), best
of the rounds: ``python -m bench.names_bench [--events N] [--rounds R] [--against FILE]``.
"""

from __future__ import annotations

import argparse
import importlib.util
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


def _load(path: str) -> Callable[[str], str]:
    """``normal_name`` of the names module at ``path`` (another commit's, for comparison)."""
    spec = importlib.util.spec_from_file_location("names_against", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.normal_name  # type: ignore[no-any-return]


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
                _cpu_us(lambda r=raw: parse_event(r), args.events // 20)
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


if __name__ == "__main__":
    main()
