"""Random and hostile records through a real worker and audit sink, amid good traffic.

One stack for the module (the session's Tansu broker, a ``baton worker`` and a ``baton sink``
subprocess holding chDB); hypothesis draws the records of each example: good runs (handoffs,
completions, retries, reused request ids, approvals, run_finished) interleaved with what a
careless or hostile client with write access to the run topics may publish. Each example
checks, end to end:

(a) the worker and the sink are still running;
(b) every record ends as exactly one decided input (its decisions carry its partition and
    offset) or exactly one dead letter (by the original's topic, partition and offset), with
    the ``error_kind`` its fault deserves; a misrouted record is forwarded once and decided;
    a retry (the same bytes again) is answered by re-emitting the decisions of the record it
    repeats, which carry that record's offset: each of them once more per retry;
(c) every decision published is in ``governance.decisions FINAL`` or ``governance.rejected``;
(d) the good runs are decided exactly as the pure engine decides their events offline.

A good run's events are published in three rounds (requests, then approvals, then requests
again), each round decided before the next: between a run's two topics the worker's order is
the order it fetched them (docs/guarantees.md), so rounds make the offline order the real one.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import Phase as Stage
from hypothesis import strategies as st

from baton.processors.batch import FORWARDED_FROM
from baton.processors.engine import Origin, approval_id_for, decide
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome, Phase
from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    HandoffCompleted,
    HandoffRequested,
    RunFinished,
    _Event,
    parse_event,
)
from baton.schemas.policy import parse_policy
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for
from baton.streams.topics import TopicCatalog
from tests.helpers import wait_for
from tests.stack import Collector, SinkProcess, WorkerProcess, fresh_topics, wait_deciding

pytestmark = pytest.mark.integration

PARTITIONS = 4
#: small enough that a hostile run of long ids reaches it within one example; the good runs
#: stay far below it (checked offline before they are published)
STATE_MAX_BYTES = 16 * 1024
FUZZ_POLICY = """\
multi_agent:
  max_agents_per_run: 4
  max_handoffs: 8
  max_delegation_depth: 3
  shared_max_usd: 30
  shared_max_tool_calls: 120
  require_approval_for: ["billing.refund.*"]
  approval:
    ttl_seconds: 3600
    approvers: ["oncall-*", "finance-*"]
  tools:
    block: ["shell.*"]
  detect_delegation_cycles: true
tenants:
  acme:
    max_handoffs: 12
    shared_max_usd: 50
"""
POLICY = parse_policy(FUZZ_POLICY)
#: one clock for every good event and for the offline replay: with a TTL of an hour and no
#: max_run_seconds, no good decision depends on when the worker makes it
NOW = datetime.now(UTC).replace(microsecond=0)

AGENTS = ["planner", "researcher", "writer", "billing_agent", "analyst", "oncall-bob"]
TASKS = ["plan", "research", "refund_check", "invoice_1", "notes", "deep"]
ACTIONS = [None, None, None, "billing.refund.create", "search.web"]
TOOLS = [None, None, None, "shell.exec", "web.search"]

REQUESTS, APPROVALS = "requests", "approvals"
DECIDED = frozenset({"decided"})
PHASE_OF: dict[type[_Event], Phase] = {
    HandoffRequested: Phase.PRE_HANDOFF,
    HandoffCompleted: Phase.POST_HANDOFF,
    ApprovalGranted: Phase.APPROVAL,
    ApprovalDenied: Phase.APPROVAL,
    RunFinished: Phase.CONTROL,
}
#: kinds that mean a bug in Baton rather than in the record: never expected
BUG_KINDS = {"engine_error", "state_unreadable", "routing"}


# =========================================================================== records


@dataclass
class Rec:
    """One record to publish, and what must become of it."""

    topic: str  # REQUESTS or APPROVALS
    key: bytes | None
    value: bytes | None
    #: DECIDED, or the dead-letter error_kinds acceptable for it
    expect: frozenset[str]
    what: str  # which generator made it, for failure messages
    run: str | None = None  # decided records: the run its decisions belong to
    phase: Phase | None = None  # decided records: the phase of its decisions
    partition: int | None = None  # set: published to this partition (misrouted)
    headers: list[tuple[str, bytes]] | None = None
    landed: tuple[int, int] | None = None  # (partition, offset), once published
    #: a retry: the earlier record this one repeats byte for byte. Baton answers it by
    #: re-emitting that record's decisions (they carry the earlier record's offset)
    repeats: Rec | None = None

    def show(self) -> str:
        value = repr(self.value[:120]) if self.value is not None else "None"
        key = repr(self.key[:60]) if self.key is not None else "None"
        return f"{self.what} {self.topic}@{self.landed} key={key} value={value}"


def decided(event: _Event, what: str, topic: str = REQUESTS, **kw: Any) -> Rec:
    run = event.run_id  # type: ignore[attr-defined]
    return Rec(
        topic, run.encode(), event.to_json(), DECIDED, what, run, PHASE_OF[type(event)], **kw
    )


def dead(
    key: bytes | None, value: bytes | None, kinds: str, what: str, topic: str = REQUESTS
) -> Rec:
    return Rec(topic, key, value, frozenset(kinds.split()), what)


def raw_json(doc: dict[str, Any], **raw_fields: str) -> bytes:
    """``doc`` as JSON, with some fields written as raw JSON text (NaN, 2**64, deep arrays)."""
    text = orjson.dumps({k: v for k, v in doc.items() if k not in raw_fields})
    extra = "".join(f',"{k}":{v}' for k, v in raw_fields.items())
    return text[:-1] + extra.encode() + b"}"


def handoff_doc(run: str, request_id: str, **kw: Any) -> dict[str, Any]:
    return {
        "type": "handoff_requested",
        "request_id": request_id,
        "run_id": run,
        "task_id": "t",
        "from_agent": "planner",
        "to_agent": "researcher",
        "event_time": NOW.isoformat(),
        **kw,
    }


def completed_doc(run: str, request_id: str, **kw: Any) -> dict[str, Any]:
    return {
        "type": "handoff_completed",
        "request_id": request_id,
        "run_id": run,
        "task_id": "t",
        "agent": "researcher",
        "cost_usd": 1.0,
        "event_time": NOW.isoformat(),
        **kw,
    }


# =========================================================================== good runs


class RunScript:
    """Draws one run's events round by round; remembers what a later event may refer to."""

    def __init__(self, data: st.DataObject, run: str, tenant: str, what: str) -> None:
        self.data, self.run, self.tenant, self.what = data, run, tenant, what
        self.rounds: list[list[Rec]] = [[], [], []]
        self.handoffs: list[HandoffRequested] = []
        #: request id -> the costs reported under it so far
        self.costs: dict[str, set[float]] = {}
        #: the run's records but retries, newest last: a retry repeats one of the newest
        #: three, so its decisions are still among the six a run keeps verbatim (an older
        #: one is answered reply_not_kept: see test_a_retry_of_an_old_request_is_answered)
        self.fresh: list[Rec] = []
        #: those answered again from the run's record (not a request_id_reused refusal,
        #: which is made anew, at the retry's own offset)
        self.kept: set[int] = set()
        #: the answers on gov.approvals and the request each answers (name_approvals)
        self.answers: list[tuple[Rec, HandoffRequested]] = []
        self.n = 0

    def draw(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self.data.draw(strategy)

    def pick(self, items: list[Any]) -> Any:
        """One of ``items``, drawn by index (hypothesis shows draws: indexes stay short)."""
        return items[self.draw(st.integers(0, len(items) - 1))]

    def emit(
        self, rnd: int, event: _Event, what: str, topic: str = REQUESTS, kept: bool = True
    ) -> Rec:
        rec = decided(event, f"{self.what}:{what}", topic)
        self.add(rnd, rec, kept)
        return rec

    def add(self, rnd: int, rec: Rec, kept: bool = True) -> None:
        self.rounds[rnd].append(rec)
        self.fresh.append(rec)
        if kept:
            self.kept.add(id(rec))

    def handoff(self, rnd: int, **override: Any) -> None:
        self.n += 1
        task = self.draw(st.sampled_from(TASKS))
        fields: dict[str, Any] = dict(
            request_id=f"{self.run[:240]}-h{self.n}",
            run_id=self.run,
            tenant=self.tenant,
            task_id=task,
            parent_task_id=self.draw(st.sampled_from([None, None, *TASKS])),
            from_agent=self.draw(st.sampled_from(AGENTS)),
            to_agent=self.draw(st.sampled_from(AGENTS)),
            action=self.draw(st.sampled_from(ACTIONS)),
            tool=self.draw(st.sampled_from(TOOLS)),
            estimated_usd=self.draw(st.sampled_from([None, None, 0.5, 4.0, 12.5])),
            estimated_tool_calls=self.draw(st.sampled_from([None, None, 3, 40])),
            event_time=NOW,
        )
        fields.update(override)
        event = HandoffRequested(**fields)
        self.handoffs.append(event)
        self.emit(rnd, event, "handoff")

    def complete(self, rnd: int) -> None:
        if not self.handoffs:
            return self.handoff(rnd)
        h = self.pick(self.handoffs)
        cost = self.draw(st.sampled_from([0.0, 0.25, 3.0, 7.5, 14.0]))
        costs = self.costs.setdefault(h.request_id, set())
        while cost in costs:  # another report under a used request id, never a plain retry
            cost += 1.0
        reused = bool(costs)
        costs.add(cost)
        event = HandoffCompleted(
            request_id=h.request_id,
            run_id=self.run,
            tenant=self.tenant,
            task_id=h.task_id,
            agent=h.to_agent,
            cost_usd=cost,
            tool_calls=self.draw(st.integers(0, 45)),
            status=self.draw(st.sampled_from(["ok", "ok", "failed"])),
            event_time=NOW,
        )
        self.emit(rnd, event, "report_reused" if reused else "completed")
        return None

    def retry(self, rnd: int) -> None:
        """Repeat one of the run's newest three records, when it is kept and on this round's
        topic: within a round the worker's order between the two topics is its
        fetch order, so only then is the repeated one surely among the run's newest six."""
        topic = APPROVALS if rnd == 1 else REQUESTS
        if self.fresh:
            rec = self.pick(self.fresh[-3:])
            if rec.topic == topic and id(rec) in self.kept:
                self.rounds[rnd].append(replace(rec, what=f"{self.what}:retry", repeats=rec))

    def reuse(self, rnd: int) -> None:
        """An earlier request id with another request (another agent): request_id_reused."""
        if not self.handoffs:
            return self.handoff(rnd)
        h = self.pick(self.handoffs)
        other = self.draw(st.sampled_from([a for a in AGENTS if a != h.to_agent]))
        self.emit(rnd, h.model_copy(update={"to_agent": other}), "request_reused", kept=False)
        return None

    def approvals(self, rnd: int) -> None:
        """Every gated handoff gets something on gov.approvals (or nothing)."""
        for h in self.handoffs:
            if h.action != "billing.refund.create":
                continue
            approval = approval_id_for(h)
            how = self.draw(st.sampled_from(["grant", "deny", "self", "stranger", "twice", "none"]))
            if how == "none":
                continue
            approver = {
                "grant": "oncall-amy",
                "twice": "oncall-amy",
                "deny": "finance-joe",
                "self": h.from_agent,
                "stranger": "mallory",
            }[how]
            kind = ApprovalDenied if how == "deny" else ApprovalGranted
            event = kind(
                approval_id=approval,
                run_id=self.run,
                tenant=self.tenant,
                approver=approver,
                comment=f"{how} it",
                event_time=NOW,
            )
            rec = self.emit(rnd, event, f"approval_{how}", APPROVALS)
            self.answers.append((rec, h))
            if how == "twice":
                self.rounds[rnd].append(
                    again := replace(rec, what=f"{self.what}:again", repeats=rec)
                )
                self.answers.append((again, h))
        if self.draw(st.booleans()):  # a grant for an approval nobody asked for
            event = ApprovalGranted(
                approval_id=f"apr_nothing-{self.run[:200]}",
                run_id=self.run,
                tenant=self.tenant,
                approver="oncall-amy",
                event_time=NOW,
            )
            self.emit(rnd, event, "approval_unknown", APPROVALS)

    def name_approvals(self) -> None:
        """Once round 0 landed: the answers name the approval ids of the run's life (an
        approval id covers where the life began, decision_builder.life_of)."""
        _, state = replay_offline(self, rounds=1)
        for rec, request in self.answers:
            assert rec.value is not None
            event = parse_event(rec.value, rec.key)
            named = approval_id_for(request, state.life)
            rec.value = event.model_copy(update={"approval_id": named}).to_json()

    def ops(self, rnd: int, count: int) -> None:
        for _ in range(count):
            op = self.draw(st.sampled_from(["handoff"] * 4 + ["complete"] * 2 + ["retry", "reuse"]))
            getattr(self, op)(rnd)

    def finish(self, rnd: int) -> None:
        event = RunFinished(run_id=self.run, tenant=self.tenant, event_time=NOW)
        self.emit(rnd, event, "run_finished")


def good_run(data: st.DataObject, run: str) -> RunScript:
    script = RunScript(data, run, data.draw(st.sampled_from(["default", "acme"])), "good")
    script.ops(0, data.draw(st.integers(3, 9)))
    script.approvals(1)
    script.ops(2, data.draw(st.integers(1, 5)))
    if data.draw(st.booleans()):
        script.finish(2)
        if data.draw(st.booleans()):
            script.handoff(2)  # after the finish: stopped
    return script


def replay_offline(
    script: RunScript, rounds: int = 3
) -> tuple[list[tuple[str, str, str, str]], RunState]:
    """The run's events, as published (its first ``rounds``), through the pure engine."""
    state: RunState | None = None
    out: list[tuple[str, str, str, str]] = []
    for rec in (r for rnd in script.rounds[:rounds] for r in sorted(rnd, key=_landed)):
        assert rec.value is not None
        event = parse_event(rec.value, rec.key)
        # where the worker read it: a run's first event marks every id of its life
        origin = Origin(None, *_landed(rec))
        state, decisions = decide(state, event, POLICY, NOW, origin=origin)
        out.extend(_summary(d) for d in decisions)
    assert state is not None
    return out, state


def _landed(rec: Rec) -> tuple[int, int]:
    assert rec.landed is not None
    return rec.landed


def _summary(d: Decision) -> tuple[str, str, str, str]:
    return (d.decision_id, str(d.phase), str(d.outcome), str(d.reason))


# =========================================================================== hostile runs


def hostile_runs(data: st.DataObject, nonce: str) -> list[RunScript]:
    """Runs of valid but extreme events: every one is decided (none is compared offline)."""
    long_id = ("L" + nonce).ljust(256, "L")
    weird = f"run-\u202e<!channel>-\U0001f642-\x00-{nonce}"
    scripts = []
    for run, what in ((long_id, "long_ids"), (weird, "weird_names")):
        s = RunScript(data, run, "t" * 256 if what == "long_ids" else "<@U123>", what)
        long = "x" * 256 if what == "long_ids" else weird
        # names may not hold the bidi override or NUL an id may (a bad_name dead letter:
        # MUTATIONS["agent_look_alike"]); the weirdest a name may be, Slack markup and emoji
        name = "x" * 256 if what == "long_ids" else f"<!channel>-\U0001f642-{nonce}"
        for rnd in (0, 1, 2):  # drawn in the order they are published (retries look back)
            if rnd == 1:
                s.approvals(1)
                continue
            for _ in range(data.draw(st.integers(4, 12))):
                op = data.draw(
                    st.sampled_from(["extreme", "extreme", "huge_cost", "retry", "reuse", "pad"])
                )
                if op == "extreme":
                    s.handoff(
                        rnd,
                        task_id=data.draw(st.sampled_from([long, *TASKS])),
                        from_agent=data.draw(st.sampled_from([name, *AGENTS])),
                        to_agent=data.draw(st.sampled_from([name, "a" * 255 + "\u00e9"])),
                        action=data.draw(st.sampled_from([name, "billing.refund.create"])),
                        estimated_usd=data.draw(st.sampled_from([None, 0.0, 1_000_000.0])),
                        estimated_tool_calls=data.draw(st.sampled_from([None, 1_000_000])),
                        event_time=data.draw(
                            st.sampled_from(
                                [
                                    NOW,
                                    datetime(2000, 1, 1, tzinfo=UTC),
                                    datetime(2199, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                                ]
                            )
                        ),
                    )
                elif op == "huge_cost" and s.handoffs:
                    h = s.pick(s.handoffs)
                    s.n += 1
                    event = HandoffCompleted(
                        request_id=f"{h.request_id}-c{s.n}",
                        run_id=run,
                        tenant=s.tenant,
                        task_id=h.task_id,
                        agent=h.to_agent,
                        cost_usd=1_000_000.0,
                        tool_calls=1_000_000,
                        status=name,
                        event_time=NOW,
                    )
                    s.emit(rnd, event, "huge_cost")
                elif op == "pad":  # a 60 KB event (of blanks between its fields): decided
                    # (a 60 KB field Baton does not know is refused since session 27)
                    s.n += 1
                    doc = handoff_doc(run, f"{run[:240]}-pad{s.n}", tenant=s.tenant)
                    rec = Rec(
                        REQUESTS,
                        run.encode(),
                        b"{" + b" " * 60_000 + orjson.dumps(doc)[1:],
                        DECIDED,
                        f"{what}:padded_60KB",
                        run,
                        Phase.PRE_HANDOFF,
                    )
                    s.add(rnd, rec)
                elif op in ("retry", "reuse"):
                    getattr(s, op)(rnd)
        s.reuse(2)  # whatever was drawn: one reused request id, one retry per run
        s.retry(2)
        s.finish(2)
        s.handoff(2)  # stopped: run_finished
        scripts.append(s)
    # a run of long request ids that outgrows its state budget: stopped, run_state_limit
    bloat = RunScript(data, f"bloat-{nonce}", "default", "bloater")
    for i in range(60):
        rid = f"{bloat.run}-{i}-".ljust(256, "r")
        event = HandoffRequested(
            request_id=rid,
            run_id=bloat.run,
            task_id=f"t{i % 3}",
            from_agent="planner",
            to_agent="researcher",
            event_time=NOW,
        )
        bloat.emit(0 if i < 40 else 2, event, "long_request_id")
    scripts.append(bloat)
    return scripts


#: a valid event with one field replaced by raw JSON text: kind -> (event, field, the JSON
#: texts to draw from, the dead-letter kinds it must get)
MUTATIONS: dict[str, tuple[str, str, list[str], str]] = {
    "cost_1e308": ("completed", "cost_usd", ["1e308"], "out_of_range"),
    "cost_1e20": ("completed", "cost_usd", ["1e20", "1000000.01"], "out_of_range"),
    "cost_negative": ("completed", "cost_usd", ["-0.01"], "out_of_range"),
    "cost_1e400": ("completed", "cost_usd", ["1e400"], "out_of_range"),
    "calls_2**63": ("completed", "tool_calls", [str(2**63), "-1", "1000001"], "out_of_range"),
    "calls_2**64": ("completed", "tool_calls", [str(2**64)], "out_of_range"),
    "estimate_1e7": ("handoff", "estimated_usd", ["1e7"], "out_of_range"),
    "nan_literal": ("completed", "cost_usd", ["NaN", "Infinity", "-Infinity"], "not_json"),
    "nan_text": ("completed", "cost_usd", ['"NaN"', '"-Infinity"'], "schema"),
    "far_time": (
        "completed",
        "event_time",
        [
            '"0001-01-01T00:00:00Z"',
            '"1971-01-01T00:00:00Z"',
            '"1999-12-31T23:59:59Z"',
            '"2200-01-01T00:00:00Z"',
            '"9999-12-31T23:59:59Z"',
            "0",
        ],
        "out_of_range",
    ),
    "task_60KB": ("handoff", "task_id", [orjson.dumps("x" * 60_000).decode()], "out_of_range"),
    "agent_300": ("handoff", "to_agent", [orjson.dumps("a" * 300).decode()], "out_of_range"),
    "agent_look_alike": (
        "handoff",
        "to_agent",
        [orjson.dumps(n).decode() for n in ("researcher ", "res\u200bearcher", "r\u0435searcher")],
        "bad_name",
    ),
    "request_id_300": ("handoff", "request_id", [orjson.dumps("r" * 300).decode()], "out_of_range"),
    "value_70KB": ("handoff", "pad", [orjson.dumps("p" * 70_000).decode()], "oversized"),
    "nested_object_id": ("handoff", "task_id", ['{"a":{"b":[1]}}'], "schema"),
    "deep_nesting": ("handoff", "x", ["[" * 3000 + "]" * 3000], "not_json"),
    "unknown_type": ("handoff", "type", ['"handoff_teleported"'], "unknown_type"),
    "type_not_text": ("handoff", "type", ["5", "null"], "schema"),
    "comment_60KB": ("denied", "comment", [orjson.dumps("c" * 60_000).decode()], "out_of_range"),
}


def _doc(kind: str, run: str, rid: str) -> dict[str, Any]:
    if kind == "handoff":
        return handoff_doc(run, f"poison-{rid}")
    if kind == "completed":
        return completed_doc(run, f"poison-{rid}")
    return {
        "type": "approval_denied",
        "approval_id": f"apr_poison-{rid}",
        "run_id": run,
        "approver": "finance-joe",
        "event_time": NOW.isoformat(),
    }


def _valid(run: str, rid: str) -> bytes:
    return orjson.dumps(_doc("handoff", run, rid))


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=12,
    )


def _others(d: st.DataObject, run: str, rid: str, kind: str) -> Rec:
    """The junk that is not one field of a valid event: bytes, shapes, keys, odd places."""
    key = run.encode()
    if kind == "random_bytes":
        key_ = d.draw(st.one_of(st.none(), st.binary(min_size=1, max_size=40)))
        kinds = "missing_key" if key_ is None else "not_json schema unknown_type"
        return dead(key_, d.draw(st.binary(max_size=300)), kinds, kind)
    if kind == "random_json":
        value = orjson.dumps(d.draw(_json_values()))
        return dead(d.draw(st.binary(min_size=1, max_size=40)), value, "schema unknown_type", kind)
    if kind == "null_value":
        return dead(d.draw(st.sampled_from([None, key])), None, "empty", kind)
    if kind == "empty_value":
        return dead(key, b"", "not_json", kind)
    if kind == "array":
        return dead(key, b"[1,2,3]", "schema", kind)
    if kind == "bom":
        return dead(key, b"\xef\xbb\xbf" + _valid(run, rid), "not_json", kind)
    if kind == "not_utf8_value":
        return dead(key, _valid(run, rid).replace(b'"t"', b'"\xff\xfe"'), "not_json", kind)
    if kind == "control_on_run_topic":
        kill = {"type": "kill_switch", "scope": "global", "operator": "x", "event_time": "2026"}
        return dead(key, orjson.dumps(kill), "unknown_type", kind)
    if kind == "no_type":
        return dead(key, orjson.dumps({"run_id": run, "request_id": rid}), "schema", kind)
    if kind == "no_key":
        return dead(None, _valid(run, rid), "missing_key", kind)
    if kind == "empty_key":
        return dead(b"", _valid(run, rid), "key_mismatch", kind)
    if kind == "wrong_key":
        return dead(f"other-{rid}".encode(), _valid(run, rid), "key_mismatch", kind)
    if kind == "key_of_other_payload":
        return dead(key, _valid(f"other-{rid}", rid), "key_mismatch", kind)
    if kind == "non_utf8_key":
        key = b"\xff\xfe" + key  # the payload says what it decodes to
        return dead(key, _valid(key.decode("utf-8", "replace"), rid), "key_mismatch", kind)
    if kind == "key_60KB":
        return dead(b"k" * 60_000, _valid(run, rid), "out_of_range", kind)
    if kind == "run_id_300":
        long = run.ljust(300, "x")
        return dead(long.encode(), _valid(long, rid), "out_of_range", kind)
    if kind == "handoff_on_approvals_topic":
        return dead(key, _valid(run, rid), "wrong_topic", kind, APPROVALS)
    if kind == "grant_on_requests_topic":
        grant = {"type": "approval_granted", "approval_id": f"apr_{rid}", "run_id": run}
        grant |= {"approver": "oncall-amy", "event_time": NOW.isoformat()}
        return dead(key, orjson.dumps(grant), "wrong_topic", kind)
    # misplaced records (a client with another partitioner), each on a run of its own
    own = f"m-{rid}"
    wrong = (partition_for(own.encode(), PARTITIONS) + 1) % PARTITIONS
    if kind == "misrouted":  # forwarded to its run's partition, then decided
        return replace(decided(parse_event(_valid(own, rid)), kind), partition=wrong)
    if kind == "forged_forward_header":  # claims to be forwarded already: never bounced
        rec = dead(own.encode(), _valid(own, rid), "misrouted", kind)
        return replace(rec, partition=wrong, headers=[(FORWARDED_FROM, b"forged/0/0")])
    assert kind == "misrouted_with_70KB_headers", kind
    rec = dead(own.encode(), _valid(own, rid), "out_of_range", kind)
    return replace(rec, partition=wrong, headers=[(f"h{i}", b"v" * 7000) for i in range(10)])


OTHER_JUNK = [
    "random_bytes",
    "random_json",
    "null_value",
    "empty_value",
    "array",
    "bom",
    "not_utf8_value",
    "control_on_run_topic",
    "no_type",
    "no_key",
    "empty_key",
    "wrong_key",
    "key_of_other_payload",
    "non_utf8_key",
    "key_60KB",
    "run_id_300",
    "handoff_on_approvals_topic",
    "grant_on_requests_topic",
    "misrouted",
    "forged_forward_header",
    "misrouted_with_70KB_headers",
]
JUNK_KINDS = sorted(MUTATIONS) + OTHER_JUNK


def junk(d: st.DataObject, kind: str, run: str, rid: str) -> Rec:
    """One record of ``kind`` that a hostile or broken client may publish, on ``run``."""
    if kind in MUTATIONS:
        event, name, texts, kinds = MUTATIONS[kind]
        value = raw_json(_doc(event, run, rid), **{name: d.draw(st.sampled_from(texts))})
        return dead(run.encode(), value, kinds, kind, APPROVALS if event == "denied" else REQUESTS)
    return _others(d, run, rid, kind)


# =========================================================================== the stack


@dataclass
class FuzzStack:
    bootstrap: str
    catalog: TopicCatalog
    worker: WorkerProcess
    sink: SinkProcess
    decisions: Collector
    deadletters: Collector
    forwards: ForwardWatcher

    def topic(self, name: str) -> str:
        return self.catalog.requests if name == REQUESTS else self.catalog.approvals

    def logs(self) -> str:
        return f"--- worker\n{self.worker.log()[-4000:]}\n--- sink\n{self.sink.log(3000)}"


class ForwardWatcher:
    """Reads the run topics in a thread; keeps, for every record the worker forwarded to its
    run's partition, where the copy is, by where the original was."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.copies: dict[tuple[str, int, int], list[tuple[str, int, int]]] = defaultdict(list)
        self._stop = threading.Event()
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"fw-{topics[0]}", "log_level": 0}
        )
        self._consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(PARTITIONS)]
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            for name, value in msg.headers() or ():
                if name == FORWARDED_FROM:
                    topic, partition, offset = value.decode().rsplit("/", 2)
                    where = (msg.topic(), msg.partition(), msg.offset())
                    self.copies[(topic, int(partition), int(offset))].append(where)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


@pytest.fixture(scope="module")
def fuzz_stack(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzStack]:
    with fuzz_stack_in(broker, tmp_path_factory.mktemp("fuzz")) as stack:
        yield stack


@contextmanager
def fuzz_stack_in(
    broker: EmbeddedBroker, workdir: Path, env: dict[str, str] | None = None
) -> Iterator[FuzzStack]:
    """The module's stack in ``workdir``, its worker and sink given ``env`` too
    (tests/integration/test_compiled_core.py: ``PYTHONPATH`` the compiled build)."""
    prefix = f"z{uuid.uuid4().hex[:8]}."
    (workdir / "policy.yaml").write_text(FUZZ_POLICY)
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    worker = WorkerProcess(
        broker.bootstrap,
        prefix,
        workdir,
        partitions=PARTITIONS,
        policy=workdir / "policy.yaml",
        extra_env={"BATON_RUN_STATE_MAX_BYTES": str(STATE_MAX_BYTES), **(env or {})},
    )
    (workdir / "chdb").mkdir()
    sink = SinkProcess(
        broker.bootstrap, prefix, workdir / "chdb", workdir / "sink.log", extra_env=env
    )
    collectors: list[Collector] = []
    try:
        collectors += [
            Collector(broker.bootstrap, catalog.decisions),
            Collector(broker.bootstrap, catalog.deadletter, decisions=False),
            ForwardWatcher(broker.bootstrap, [catalog.requests, catalog.approvals]),
        ]
        try:
            wait_deciding(broker.bootstrap, catalog)
        except Exception as exc:
            raise AssertionError(f"worker did not start: {exc}\n{worker.log()}") from exc
        sink.wait_ready()
        yield FuzzStack(broker.bootstrap, catalog, worker, sink, *collectors)  # type: ignore[arg-type]
    finally:
        worker.stop()
        sink.stop()
        for c in collectors:
            c.close()


# =========================================================================== the test


def publish(stack: FuzzStack, records: list[Rec]) -> None:
    """Produce ``records`` in order (murmur2, like Faust); note where each one landed."""
    producer = Producer(
        {"bootstrap.servers": stack.bootstrap, "partitioner": "murmur2_random", "linger.ms": 2}
    )
    errors: list[str] = []

    def delivered(rec: Rec) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"{rec.show()}: {err}")
            else:
                rec.landed = (msg.partition(), msg.offset())

        return on_delivery

    for rec in records:
        kw: dict[str, Any] = {} if rec.partition is None else {"partition": rec.partition}
        if rec.headers:
            kw["headers"] = rec.headers
        producer.produce(
            stack.topic(rec.topic), rec.value, rec.key, on_delivery=delivered(rec), **kw
        )
        producer.poll(0)
    assert producer.flush(30) == 0 and not errors, errors[:3]


class Ledger:
    """What became of each published record: its dead letters and the decisions it made."""

    def __init__(self, stack: FuzzStack, records: list[Rec], runs: set[str]) -> None:
        self.stack, self.records, self.runs = stack, records, runs
        self.by_position: dict[tuple[str, int, int], Rec] = {}
        for rec in records:
            assert rec.landed is not None
            self.by_position[(stack.topic(rec.topic), *rec.landed)] = rec

    def settle(self) -> tuple[dict[int, list[str]], dict[int, list[Decision]], list[str]]:
        """(dead-letter kinds, decisions) per record (by index), and unexplained outputs."""
        stack = self.stack
        copies = dict(stack.forwards.copies)
        origin: dict[tuple[str, int, int], tuple[str, int, int]] = {}
        for original, where in copies.items():
            if original in self.by_position:  # not a forged header
                for copy in where:
                    origin[copy] = original
        index = {id(rec): i for i, rec in enumerate(self.records)}
        dead: dict[int, list[str]] = defaultdict(list)
        made: dict[int, list[Decision]] = defaultdict(list)
        stray: list[str] = []
        for raw in list(stack.deadletters.records):
            env = orjson.loads(raw)  # type: ignore[arg-type]
            where = (env["topic"], env["partition"], env["offset"])
            rec = self.by_position.get(origin.get(where, where))
            if rec is not None:
                dead[index[id(rec)]].append(env["error_kind"])
            elif env["key"] in self.runs:
                stray.append(f"dead letter at {where} of no record: {env['error']}")
        for d in list(stack.decisions.records):
            assert isinstance(d, Decision)
            if d.partition is None or d.offset is None:
                continue  # a timer's decision (approval expiry, eviction): none expected here
            candidates = []
            for topic in (stack.catalog.requests, stack.catalog.approvals):
                where = (topic, d.partition, d.offset)
                rec = self.by_position.get(origin.get(where, where))
                if rec is not None and rec.key == d.run_id.encode():
                    candidates.append(rec)
            if len(candidates) > 1:  # the same run at the same offset of both topics
                candidates = [r for r in candidates if r.phase == d.phase]
            if len(candidates) == 1:
                made[index[id(candidates[0])]].append(d)
            elif d.run_id in self.runs:
                stray.append(f"decision {_summary(d)} of {d.run_id!r} from {candidates}")
        return dead, made, stray

    def wait(self, what: str, timeout: float = 30.0) -> None:
        """Until every record ended as expected (``problems`` is empty)."""
        wait_for(
            lambda: not self.problems(),
            timeout,
            interval=0.2,
            message=lambda: (
                f"{what}: each of {len(self.records)} records decided or dead-lettered once, "
                "as expected:\n" + "\n".join(self.problems()[:15]) + "\n" + self.stack.logs()
            ),
        )

    def problems(self) -> list[str]:
        dead, made, stray = self.settle()
        out = list(stray)
        copies = self.stack.forwards.copies
        retries: Counter[int] = Counter(id(r.repeats) for r in self.records if r.repeats)
        for i, rec in enumerate(self.records):
            where = (self.stack.topic(rec.topic), *rec.landed)  # type: ignore[misc]
            kinds, decisions = dead.get(i, []), made.get(i, [])
            forwarded = len(copies.get(where, ()))
            if rec.repeats is not None:  # answered under the record it repeats
                if kinds or decisions or forwarded:
                    out.append(
                        f"{rec.show()}: a retry with dead letters {kinds}, decisions at "
                        f"its own offset {[_summary(d) for d in decisions]}"
                    )
            elif rec.expect == DECIDED:
                # one emission, plus one re-emission per retry of it: each id (1 + retries) times
                emitted = Counter(d.decision_id for d in decisions)
                times = 1 + retries[id(rec)]
                if kinds or not emitted or set(emitted.values()) != {times} or forwarded > 1:
                    out.append(
                        f"{rec.show()}: dead letters {kinds}, decisions "
                        f"{[(_summary(d), d.partition, d.offset) for d in decisions]} "
                        f"(expected each {times} times)"
                    )
                elif rec.phase is not None and any(d.phase != rec.phase for d in decisions):
                    out.append(f"{rec.show()}: phases {[str(d.phase) for d in decisions]}")
                elif (rec.partition is not None) != (forwarded == 1):
                    out.append(f"{rec.show()}: forwarded {forwarded} times")
            elif len(kinds) != 1 or kinds[0] not in rec.expect or decisions:
                out.append(
                    f"{rec.show()}: dead letters {kinds} (expected one of {sorted(rec.expect)}),"
                    f" decisions {[_summary(d) for d in decisions]}"
                )
        return out


def interleave(rnd: random.Random, queues: list[list[Rec]]) -> list[Rec]:
    """Merge ``queues`` at random, each queue's order kept."""
    queues = [list(q) for q in queues if q]
    out: list[Rec] = []
    while queues:
        q = rnd.choice(queues)
        out.append(q.pop(0))
        if not q:
            queues.remove(q)
    return out


def audited(stack: FuzzStack, decisions: list[tuple[Decision, tuple[int, int]]]) -> list[str]:
    stored = {r[0] for r in stack.sink.query("SELECT decision_id FROM governance.decisions FINAL")}
    rejected = {
        (int(p), int(o))
        for p, o in stack.sink.query(
            "SELECT audit_partition, audit_offset FROM governance.rejected "
            f"WHERE audit_topic = '{stack.catalog.decisions}'"
        )
    }
    return [
        f"{_summary(d)} at {where}"
        for d, where in decisions
        if d.decision_id not in stored and where not in rejected
    ]


@settings(
    max_examples=5,
    deadline=None,
    # no shrinking: each step would run on the real stack for up to a minute; a failure
    # prints every record that went wrong instead
    phases=[Stage.explicit, Stage.reuse, Stage.generate],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=st.data())
def test_hostile_records_never_stop_or_fool_governance(
    fuzz_stack: FuzzStack, data: st.DataObject
) -> None:
    stack = fuzz_stack
    nonce = uuid.uuid4().hex[:8]
    good = [good_run(data, f"g{i}-{nonce}") for i in range(data.draw(st.integers(6, 10)))]
    hostile = hostile_runs(data, nonce)
    victims = [s.run for s in good]
    # every kind of junk at least once, then as many as hypothesis likes, in three rounds
    junk_rounds: list[list[Rec]] = [[], [], []]
    for i, kind in enumerate(JUNK_KINDS):
        junk_rounds[i % 3].append(junk(data, kind, f"j{i}-{nonce}", f"{nonce}-{i}"))
    for i in range(len(JUNK_KINDS), len(JUNK_KINDS) + data.draw(st.integers(60, 150))):
        # aimed at a good run (its key and run_id) or at a run of its own
        kind = data.draw(st.sampled_from(JUNK_KINDS))
        run = data.draw(st.sampled_from(victims)) if data.draw(st.booleans()) else f"j{i}-{nonce}"
        rec = junk(data, kind, run, f"{nonce}-{i}")
        rec.what += "@good_run" if run in victims else ""
        junk_rounds[data.draw(st.integers(0, 2))].append(rec)
    rnd = data.draw(st.randoms(use_true_random=False))
    runs = {s.run for s in good + hostile}
    runs |= {r.run for rnd_ in junk_rounds for r in rnd_ if r.run}
    records: list[Rec] = []
    for n in range(3):
        if n == 1:
            for script in good:
                script.name_approvals()
        batch = interleave(rnd, [s.rounds[n] for s in good + hostile] + [junk_rounds[n]])
        publish(stack, batch)
        records += batch
        ledger = Ledger(stack, records, runs)
        ledger.wait(f"round {n + 1} of 3")

    # (a) nothing stopped
    assert stack.worker.alive(), stack.logs()
    assert stack.sink.alive(), stack.logs()

    # (b) held: waited for above. No dead letter says "bug", and each fault was named
    dead, made, _ = ledger.settle()
    kinds = Counter(k for ks in dead.values() for k in ks)
    assert not BUG_KINDS & set(kinds), kinds
    assert {"not_json", "schema", "unknown_type", "oversized", "key_mismatch"} <= set(kinds)
    assert {"out_of_range", "missing_key", "empty", "wrong_topic", "misrouted"} <= set(kinds), kinds
    reasons = Counter(str(d.reason) for ds in made.values() for d in ds)
    assert reasons["run_state_limit"] >= 1 and reasons["request_id_reused"] >= 1, reasons

    # (d) good runs: as the pure engine decides them offline
    for script in good:
        expected, state = replay_offline(script)
        assert len(state.to_bytes()) < STATE_MAX_BYTES // 2, "a good run near the state budget"
        got = [_summary(d) for d in stack.decisions.for_run(script.run)]
        assert got == expected, f"{script.run}: worker vs offline engine\n" + "\n".join(
            f"  {g}\n  {e}\n" for g, e in zip(got, expected, strict=False)
        )

    # (c) every decision published is audited (or rejected by the sink, saying why)
    published = [
        (d, where)
        for run in runs
        for where, d in zip(
            list(stack.decisions.positions[run]), stack.decisions.for_run(run), strict=False
        )
    ]
    wait_for(
        lambda: not audited(stack, published),
        30,
        interval=0.3,
        message=lambda: (
            "every decision in the audit:\n"
            + "\n".join(audited(stack, published)[:10])
            + "\n"
            + stack.sink.log(3000)
        ),
    )
    assert stack.worker.alive() and stack.sink.alive(), stack.logs()


def _handoffs(run: str, n: int) -> list[HandoffRequested]:
    return [
        HandoffRequested(
            request_id=f"{run}-h{i}",
            run_id=run,
            task_id=f"t{i}",
            from_agent="planner",
            to_agent="researcher",
            event_time=NOW,
        )
        for i in range(1, n + 1)
    ]


def _answers(
    stack: FuzzStack, run: str, retry: Rec, marker: Rec, is_marker: Callable[[Decision], bool]
) -> list[Decision]:
    """Publish ``retry`` then ``marker`` (a new event on the same topic): once the marker is
    decided, so was the retry (one partition, in order). Returns the run's other decisions
    made since."""
    seen = len(stack.decisions.for_run(run))
    publish(stack, [retry, marker])
    wait_for(
        lambda: any(is_marker(d) for d in stack.decisions.for_run(run)[seen:]),
        20,
        message="the marker's decision",
    )
    return [d for d in stack.decisions.for_run(run)[seen:] if not is_marker(d)]


def test_a_retry_of_an_old_request_is_answered(fuzz_stack: FuzzStack) -> None:
    """A client retry of a request older than the run's newest six keys (whose decision the
    run no longer keeps) is answered, never met with silence (the client would time out)."""
    run = f"old-retry-{uuid.uuid4().hex[:8]}"
    handoffs = _handoffs(run, 8)
    records = [decided(h, "handoff") for h in handoffs]
    publish(fuzz_stack, records)
    first = fuzz_stack.decisions.wait_run(run, len(handoffs))[0]
    assert first.outcome == Outcome.ALLOW
    marker = handoffs[-1].model_copy(update={"request_id": f"{run}-marker", "task_id": "m"})
    answers = _answers(
        fuzz_stack,
        run,
        replace(records[0], landed=None),
        decided(marker, "marker"),
        lambda d: d.request_id == marker.request_id,
    )
    assert [d.request_id for d in answers] == [first.request_id], answers
    (answer,) = answers
    # the recorded decision again, or a stop: never a fresh allow
    assert answer.decision_id == first.decision_id or answer.outcome == Outcome.STOP, answer


def test_a_retry_of_an_old_refused_grant_is_answered(fuzz_stack: FuzzStack) -> None:
    run = f"old-grant-{uuid.uuid4().hex[:8]}"
    grant = ApprovalGranted(
        approval_id="apr_nobody_asked", run_id=run, approver="mallory", event_time=NOW
    )
    refused = decided(grant, "grant", APPROVALS)
    publish(fuzz_stack, [refused])
    (first,) = fuzz_stack.decisions.wait_run(run, 1)
    assert (first.outcome, first.reason) == (Outcome.RECORDED, "unknown_approval")
    handoffs = _handoffs(run, 6)
    publish(fuzz_stack, [decided(h, "handoff") for h in handoffs])
    fuzz_stack.decisions.wait_run(run, 7)
    marker = grant.model_copy(update={"approval_id": "apr_marker"})
    answers = _answers(
        fuzz_stack,
        run,
        replace(refused, landed=None),
        decided(marker, "marker", APPROVALS),
        lambda d: d.approval_id == "apr_marker",
    )
    assert len(answers) == 1 and answers[0].reason in ("unknown_approval", "reply_not_kept"), (
        answers
    )
