"""Session 10: the trust gaps session 9's attacks left open, each closed and attacked again:
the SDK taking a twin request's answer, forged rows in ``baton approvals --limit``, a slow
``/metrics`` client, unbounded SDK timeouts, unbounded CLI durations."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import math
import socket
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import orjson
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from baton.cli.approvals_audit import pending_approvals
from baton.cli.main import _register, cli
from baton.processors import metrics_serve
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.metrics_serve import new_registry, serve_metrics
from baton.processors.recorded import input_text
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome, Phase, Reason
from baton.schemas.events import HandoffCompleted, HandoffRequested
from baton.schemas.settings import Settings
from baton.streams.sdk import ApproverClient, GovernanceClient
from baton.streams.sdk.base import answers_approval, answers_request
from baton.streams.sdk.operators import OperatorClient
from baton.streams.sdk.options import MAX_APPROVAL_WAIT_S, ClientSettings
from tests.chdb_audit import chdb_audit
from tests.helpers import wait_for
from tests.unit.test_approvals_forged_rows import _asked_now, _shows_another
from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit

REQUESTS = "gov.handoff.requests"


class _Message:
    """A decision as the client's reader gets it from gov.decisions."""

    def __init__(self, decision: Decision) -> None:
        self._value = decision.to_json()

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return "gov.decisions"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


class _Worker:
    """The worker's batch path (decide, publishable copies, chain links) on one partition."""

    def __init__(self) -> None:
        self.states: dict[bytes, RunState] = {}
        self.proc = BatchProcessor(policy_with(), 1, self.states, worker="w")
        self.offset = 0

    def decide(self, value: bytes, run_id: str = "run-1") -> Decision:
        self.offset += 1
        record = InputRecord(REQUESTS, 0, self.offset, run_id.encode(), value)
        out = self.proc.process([record], datetime.now(UTC))
        [(_, decision)] = out.decisions
        return decision


class _Offline:
    """A GovernanceClient whose channel sends nothing: the test hands its reader records and
    reads what it would have published."""

    def __init__(self, timeout: float = 10) -> None:
        self.client = GovernanceClient("127.0.0.1:1", timeout=timeout)
        self.sent: list[bytes] = []
        channel = self.client.channel
        channel.connect = lambda: None  # type: ignore[method-assign]
        channel.flush = lambda timeout: 0  # type: ignore[method-assign]

        def submit(
            _topic: str, _key: bytes, value: bytes, *, wait_key: Any = None, waiter: Any = None,
            **_: Any,
        ) -> None:  # fmt: skip
            if waiter is not None and wait_key is not None:
                channel.waiters.register(wait_key, waiter)
            self.sent.append(value)

        channel.submit = submit  # type: ignore[method-assign]

    def call(self, event: HandoffRequested | HandoffCompleted, read: Any, **kw: Any) -> Decision:
        """``check`` (``report``) ``event`` while the reader reads ``read(sent bytes)``."""
        client = self.client
        call = client.check if isinstance(event, HandoffRequested) else client.report
        phase = Phase.PRE_HANDOFF if isinstance(event, HandoffRequested) else Phase.POST_HANDOFF
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(call, event, **kw)  # type: ignore[arg-type]
            key = (event.run_id, event.request_id, str(phase))
            wait_for(lambda: client.channel.waiters.awaited(key), 5, message="the waiter")
            client.channel._dispatch([_Message(d) for d in read(self.sent[-1])])
            return answer.result(15)  # type: ignore[no-any-return]


def _handoff(**fields: Any) -> HandoffRequested:
    base: dict[str, Any] = dict(
        request_id="h1", run_id="run-1", task_id="t1", from_agent="planner",
        to_agent="researcher", event_time=datetime.now(UTC),
    )  # fmt: skip
    return HandoffRequested(**{**base, **fields})


# ------------------------------------------------------------------ 1: twins under one request id

TWINS = {
    "tools": ({"tools": ["web.search"]}, {"tools": ["web.search", "billing.refund.create"]}),
    "estimated_usd": ({"estimated_usd": 0.01}, {"estimated_usd": 900.0}),
    "estimated_tool_calls": ({"estimated_tool_calls": 1}, {"estimated_tool_calls": 10_000}),
    "task_kind": ({"task_kind": "research"}, {"task_kind": "refund_issue"}),
}


@pytest.mark.parametrize("field", sorted(TWINS))
def test_a_check_never_takes_the_allow_of_a_twin_that_differs_only_in_what_no_field_repeats(
    field: str,
) -> None:
    """Two requests under one run and request id that differ only in ``tools``, an estimate
    or ``task_kind``: the worker allows the harmless one and refuses ours
    (request_id_reused), but our call took the harmless one's allow (every field a decision
    repeats was the same), and its forbidden tool went ungated."""
    harmless, ours = (_handoff(**fields) for fields in TWINS[field])
    worker = _Worker()
    allowed = worker.decide(harmless.to_json())
    assert allowed.outcome == Outcome.ALLOW
    refused: list[Decision] = []

    def read(sent: bytes) -> list[Decision]:
        refused.append(worker.decide(sent))
        return [allowed, refused[0]]

    answer = _Offline().call(ours, read)
    assert (refused[0].outcome, refused[0].reason) == (Outcome.STOP, Reason.REQUEST_ID_REUSED)
    assert answer.decision_id == refused[0].decision_id


def test_a_report_takes_its_own_record_not_a_twin_reports_of_another_cost() -> None:
    """Two reports under one request id that differ only in their cost: each is counted under
    its own key, and each caller must get the record of its own (its spend), not the twin's."""
    worker = _Worker()
    worker.decide(_handoff().to_json())
    now = datetime.now(UTC)
    report = dict(request_id="h1", run_id="run-1", task_id="t1", agent="researcher")
    cheap = HandoffCompleted(**report, cost_usd=0.01, event_time=now)
    dear = HandoffCompleted(**report, cost_usd=5.0, event_time=now)
    cheap_record = worker.decide(cheap.to_json())
    own: list[Decision] = []

    def read(sent: bytes) -> list[Decision]:
        own.append(worker.decide(sent))
        return [cheap_record, own[0]]

    answer = _Offline().call(dear, read)
    assert answer.decision_id == own[0].decision_id != cheap_record.decision_id
    assert answer.spent_usd == pytest.approx(5.01)


def test_a_twins_retry_answered_from_the_runs_state_is_not_taken_either() -> None:
    """The harmless twin sends its request again after ours: the worker answers it from the
    run's state with a re-emitted copy of its allow, which repeats every field ours does."""
    harmless, ours = (_handoff(**fields) for fields in TWINS["tools"])
    worker = _Worker()
    allowed = worker.decide(harmless.to_json())
    read_by_ours: list[Decision] = []

    def read(sent: bytes) -> list[Decision]:
        copy = worker.decide(harmless.to_json())
        assert copy.reemitted and copy.decision_id == allowed.decision_id
        read_by_ours.extend([copy, worker.decide(sent)])
        return read_by_ours

    answer = _Offline().call(ours, read)
    assert answer.reason == Reason.REQUEST_ID_REUSED


def test_our_own_retry_answered_from_the_runs_state_is_still_ours() -> None:
    """A check sent again after a crash of the orchestrator (the same request, another
    ``event_time`` and ``decide_by``) whose original decision was published before the new
    client read: the re-emitted copy is its answer (docs/client.md, Retries)."""
    worker = _Worker()
    first = _handoff(event_time=datetime(2026, 11, 30, 9, 0, tzinfo=UTC))
    allowed = worker.decide(first.to_json())

    def read(sent: bytes) -> list[Decision]:
        copy = worker.decide(sent)
        assert copy.reemitted and copy.input == input_text(
            HandoffRequested.model_validate_json(sent)
        )
        return [copy]

    answer = _Offline().call(first.model_copy(update={"event_time": datetime.now(UTC)}), read)
    assert (answer.decision_id, answer.outcome) == (allowed.decision_id, Outcome.ALLOW)


@pytest.mark.parametrize(
    "said",
    [None, "", "not json", "[]", '"x"', "1e999", '{"type": "handoff_requested"}'],
)
def test_a_decision_whose_input_is_missing_or_not_our_request_answers_nothing(
    said: str | None,
) -> None:
    event = _handoff()
    own = _Worker().decide(event.to_json())
    answers = answers_request(event)
    assert answers(own)
    assert not answers(dataclasses.replace(own, input=said))


def test_a_twin_differing_by_one_and_true_or_one_point_oh_is_another_request() -> None:
    """1 == 1.0 == True: inputs compared as dicts would match across those."""
    event = _handoff(estimated_tool_calls=1)
    own = _Worker().decide(event.to_json())
    assert own.input is not None
    answers = answers_request(event.model_copy(update={"event_time": datetime.now(UTC)}))
    assert answers(own)
    for other in ("true", "1.0"):
        forged = own.input.replace('"estimated_tool_calls":1', f'"estimated_tool_calls":{other}')
        assert forged != own.input
        assert not answers(dataclasses.replace(own, input=forged))


def test_an_approval_decision_naming_no_approval_or_another_request_answers_nothing() -> None:
    asked = Decision(
        decision_id="d1", request_id="h1", run_id="run-1", tenant="default",
        phase=Phase.PRE_HANDOFF, outcome=Outcome.APPROVAL_REQUIRED, reason="approval_pending",
        approval_id="apr_1", request_digest="aaaa", chain_hash="c" * 32,
    )  # fmt: skip
    answer = dataclasses.replace(asked, phase=Phase.APPROVAL, outcome=Outcome.ALLOW)
    answers = answers_approval(asked)
    assert answers(answer)
    assert answers(dataclasses.replace(answer, request_digest=None))
    assert not answers(dataclasses.replace(answer, approval_id=None))
    assert not answers(dataclasses.replace(answer, approval_id="apr_2"))
    assert not answers(dataclasses.replace(answer, request_digest="bbbb"))
    assert not answers_approval(dataclasses.replace(asked, approval_id=None))(answer)


def test_matching_our_own_decision_costs_one_string_comparison() -> None:
    """The reader matches every decision read under a waiter's key: our own request's must
    be the same string (no parse), which holds when input_text of the parsed event is
    input_text of the event as the SDK sent it."""
    event = _handoff(tools=["a", "b"], estimated_usd=0.1 + 0.2, task_kind="K\u212a")
    sent = event.to_json()
    own = _Worker().decide(sent)
    assert own.input == input_text(HandoffRequested.model_validate_json(sent))
    assert own.input == input_text(event)
    assert orjson.loads(own.input)["tools"] == ["a", "b"]


# ------------------------------------------------------------------ 4: the SDK's timeouts bounded

BAD_SECONDS = [1e308, math.inf, -math.inf, math.nan, -1.0, 0, 3600.5, "5", True, None]


@pytest.mark.parametrize("value", [v for v in BAD_SECONDS if v is not None])
@pytest.mark.parametrize("name", ["timeout", "connect_timeout"])
def test_a_client_refuses_a_timeout_that_is_no_bounded_number_of_seconds(
    name: str, value: object
) -> None:
    with pytest.raises(ValueError, match=rf"^{name}: must be .*3600.*got "):
        GovernanceClient("127.0.0.1:1", **{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [v for v in BAD_SECONDS if v is not None])
def test_a_check_refuses_an_unbounded_timeout_before_publishing_anything(value: object) -> None:
    """check(timeout=1e308) raised OverflowError (its decide_by is past datetime's range),
    nan a ValueError about NaN to integer, negative gave a stop without saying why."""
    offline = _Offline()
    for call in (offline.client.check, offline.client.report):
        event: Any = _handoff() if call == offline.client.check else _report()
        with pytest.raises(ValueError, match=r"^timeout: must be .*3600"):
            call(event, timeout=value)  # type: ignore[arg-type]
    assert offline.sent == []


@pytest.mark.parametrize("value", [10**9, -1, 1.5, True, math.nan])
def test_a_check_refuses_a_retry_count_out_of_bounds(value: object) -> None:
    offline = _Offline()
    with pytest.raises(ValueError, match=r"^retries: must be an integer, 0 <= retries <= 100"):
        offline.client.check(_handoff(), retries=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^retries: "):
        GovernanceClient("127.0.0.1:1", retries=value)  # type: ignore[arg-type]
    assert offline.sent == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATON_CLIENT_TIMEOUT_S", "1e308"),
        ("BATON_CLIENT_RETRIES", "1000000000"),
        ("BATON_CLIENT_DELIVERY_TIMEOUT_S", "1e308"),
        ("BATON_CLIENT_FETCH_WAIT_MS", "99999999999"),
        ("BATON_CLIENT_TIMEOUT_S", "inf"),
    ],
)
def test_client_settings_refuse_unbounded_numbers(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("BATON_").lower()):
        ClientSettings()


@pytest.mark.parametrize("value", [1e308, math.inf, math.nan, -5.0, 0])
def test_wait_for_approval_refuses_an_unbounded_timeout(value: float) -> None:
    client = _Offline().client
    asked = _asked()
    with pytest.raises(ValueError, match=r"^timeout: must be 0 < timeout <= 31622460 seconds"):
        client.wait_for_approval(asked, timeout=value)


def test_wait_for_approval_of_an_expiry_in_a_far_year_waits_a_bounded_time() -> None:
    """The default wait runs to the approval's expiry: a decision naming year 9999 (made by
    hand, or read from a forged row) made a wait threading refuses (OverflowError)."""
    far = _asked(approval_expires_at=datetime(9999, 12, 31, tzinfo=UTC))
    assert GovernanceClient._approval_wait(far, None) == MAX_APPROVAL_WAIT_S


@pytest.mark.parametrize("value", [1e308, math.inf, math.nan, -1.0, "1"])
def test_close_and_flush_refuse_an_unbounded_timeout(value: object) -> None:
    client = GovernanceClient("127.0.0.1:1")
    with pytest.raises(ValueError, match=r"^timeout: must be .*0 <= timeout <= 3600"):
        client.flush(value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^timeout: must be .*0 <= timeout <= 3600"):
        client.close(value)  # type: ignore[arg-type]
    client.close(0)  # zero is a poll: allowed


@pytest.mark.parametrize("value", [1e308, math.inf, math.nan, -1.0])
def test_approvers_and_operators_refuse_an_unbounded_timeout_before_publishing(
    value: float,
) -> None:
    approver = ApproverClient("127.0.0.1:1")
    operator = OperatorClient("127.0.0.1:1")
    sent: list[object] = []
    for client in (approver, operator):
        client.channel.connect = lambda: None  # type: ignore[method-assign]
        client.channel.submit = lambda *a, **k: sent.append(a)  # type: ignore[method-assign]
        client.channel.publish = lambda *a, **k: sent.append(a)  # type: ignore[method-assign]
    with pytest.raises(ValueError, match=r"^timeout: must be 0 < timeout <= 3600"):
        approver.grant(_asked(), approver="boss", wait=True, timeout=value)
    with pytest.raises(ValueError, match=r"^timeout: must be 0 < timeout <= 3600"):
        operator.kill(run_id="run-1", wait=True, timeout=value)
    assert sent == []


def _report() -> HandoffCompleted:
    return HandoffCompleted(
        request_id="h1", run_id="run-1", task_id="t1", agent="researcher",
        event_time=datetime.now(UTC),
    )  # fmt: skip


def _asked(**fields: Any) -> Decision:
    return Decision(
        decision_id="d1", request_id="h1", run_id="run-1", tenant="default",
        phase=Phase.PRE_HANDOFF, outcome=Outcome.APPROVAL_REQUIRED, reason="approval_pending",
        approval_id="apr_1", request_digest="aaaa", **fields,
    )  # fmt: skip


# ------------------------------------------------------------------ 5: CLI and settings bounds


def _option(path: str, name: str) -> click.Parameter:
    """The click parameter ``name`` of ``baton <path>`` (a command or a group's own)."""
    _register()
    command: Any = cli
    for part in path.split():
        command = command.commands[part]
    [param] = [p for p in command.params if name in getattr(p, "opts", ())]
    return param  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "option", "value"),
    [
        ("up", "--restart-window-s", "1e308"),
        ("up", "--restart-window-s", "86401"),
        ("up", "--restart-limit", "99999999999999999999"),
        ("alerts", "--storm-window", "1e308"),
        ("alerts", "--max-age", "1e308"),
        ("alerts", "--storm-threshold", "99999999999999999999"),
        ("sink", "--report-every", "1e308"),
        ("worker", "--transaction-timeout-ms", "99999999999"),
        ("worker", "--fetch-max-wait-ms", "99999999999"),
        ("worker", "--max-runs", "99999999999999999999"),
        ("worker", "--max-state-bytes", "99999999999999999999"),
        ("sink", "--sink-batch-size", "99999999999999999999"),
        ("demo", "--timeout", "1e308"),
        ("demo", "--runs", "99999999999999999999"),
        ("demo", "--burst", "99999999999999999999"),
    ],
)
def test_a_cli_option_refuses_a_number_past_its_bound(path: str, option: str, value: str) -> None:
    """`baton up --restart-window-s 1e308` was accepted (every exit ever counted), as were
    an alerter storm window that never ended (every later stop folded away unannounced), a
    transaction timeout or fetch wait past the int32 a Kafka request carries, and limits
    past anything a worker or the sink can hold."""
    param = _option(path, option)
    with pytest.raises(click.BadParameter):
        param.type.convert(value, param, None)
    for bad in ("nan", "inf", "-1"):
        with pytest.raises(click.BadParameter):
            param.type.convert(bad, param, None)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATON_TRANSACTION_TIMEOUT_MS", "99999999999"),
        ("BATON_FETCH_MAX_WAIT_MS", "99999999999"),
        ("BATON_MAX_RUNS", "99999999999999999999"),
        ("BATON_MAX_STATE_BYTES", "99999999999999999999"),
        ("BATON_SINK_BATCH_SIZE", "99999999999999999999"),
    ],
)
def test_a_setting_refuses_a_number_past_its_bound(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("BATON_").lower()):
        Settings()


# ------------------------------------------------------------------ 2: forged rows and --limit


def _forged_copies(asked: Decision, n: int) -> list[Decision]:
    """``n`` rows under ``asked``'s approval id that do not hold together, each with its own
    decision id, put ahead of the worker's row."""
    return [
        dataclasses.replace(
            _shows_another(asked), decision_id=f"{i:032x}", decided_at=_before(asked, n - i)
        )
        for i in range(n)
    ]


def _before(asked: Decision, seconds: int) -> datetime:
    assert asked.decided_at is not None
    return asked.decided_at - timedelta(seconds=seconds)


def test_forged_rows_ahead_of_a_pending_approval_never_push_it_out_of_the_limit(
    tmp_path: Path,
) -> None:
    """`baton approvals --limit 5` read the 5 oldest pending rows and then left out those
    that do not hold together: 5 forged rows put ahead of the real approval listed nothing."""
    asked = _asked_now()
    chdb = tmp_path / "chdb"
    chdb_audit(chdb, [asked, *_forged_copies(asked, 30)]).close()
    _register()
    result = CliRunner().invoke(
        cli, ["approvals", "-f", "json", "--limit", "5", "--dsn", f"chdb://{chdb}"]
    )
    assert result.exit_code == 0, result.output
    listed = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [(row["approval_id"], row["to_agent"]) for row in listed] == [
        (asked.approval_id, "billing_agent")
    ]
    # the forged rows are named (the first 20) and counted, never listed
    assert result.stderr.count("not listed: its record does not hold together") == 20
    assert "10 more records that do not hold together not listed" in result.stderr


def test_a_listing_counts_an_approval_once_and_says_where_it_stopped(tmp_path: Path) -> None:
    asked = _asked_now()
    twin = dataclasses.replace(asked, decision_id="d" * 32)  # holds together: the same request
    client = chdb_audit(tmp_path / "chdb", [*_forged_copies(asked, 12), asked, twin])
    try:
        whole = pending_approvals(client, limit=10)
        cut = pending_approvals(client, limit=10, max_rows=6)
    finally:
        client.close()
    assert [p.asked.approval_id for p in whole.pending] == [asked.approval_id]
    assert (len(whole.skipped), whole.stopped_at) == (12, None)
    assert (cut.pending, len(cut.skipped), cut.stopped_at) == ([], 6, 6)


# ------------------------------------------------------------------ 3: a hostile /metrics client


def _trickle(url: str, n: int, stop: threading.Event) -> list[socket.socket]:
    """``n`` connections that send a request a byte every 0.3 s (never idle)."""
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    conns = [socket.create_connection((host, int(port)), timeout=5) for _ in range(n)]
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000

    def run() -> None:
        for i in range(len(request)):
            if stop.wait(0.3):
                return
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.send(request[i : i + 1])

    threading.Thread(target=run, daemon=True).start()
    return conns


def test_clients_trickling_a_byte_every_few_seconds_never_hold_every_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Idle connections were closed after 10 s, but one sending a byte every few seconds
    kept its slot for ever: 32 of them and no scrape was answered."""
    monkeypatch.setattr(metrics_serve, "REQUEST_DEADLINE_S", 1.0)
    endpoint = serve_metrics(new_registry(), "127.0.0.1", 0)
    stop = threading.Event()
    conns = _trickle(endpoint.url, metrics_serve.MAX_CONNECTIONS, stop)
    try:
        time.sleep(1.5)  # past the deadline: every trickling connection was let go
        with urllib.request.urlopen(endpoint.url, timeout=5) as answer:
            assert b"process_cpu_seconds_total" in answer.read()
    finally:
        stop.set()
        for conn in conns:
            conn.close()
        endpoint.close()


def test_a_request_is_read_up_to_its_byte_bound_and_no_further() -> None:
    """100 header lines of 64 KB were read and held: 6.5 MB per connection, 32 at a time."""
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-Big: " + b"a" * 200_000 + b"\r\n")
        reader = io.BufferedReader(
            metrics_serve._DeadlineReader(ours, time.monotonic() + 5, 5.0, 64 * 1024)
        )
        read = 0
        while line := reader.readline(65537):
            read += len(line)
        assert read == metrics_serve.MAX_REQUEST_BYTES == 64 * 1024
    finally:
        ours.close()
        theirs.close()


def test_a_connection_past_its_deadline_reads_nothing_more() -> None:
    ours, theirs = socket.socketpair()
    try:
        reader = metrics_serve._DeadlineReader(ours, time.monotonic() - 1, 5.0, 1024)
        theirs.sendall(b"GET")
        with pytest.raises(TimeoutError, match="deadline"):
            reader.read(3)
    finally:
        ours.close()
        theirs.close()


def test_many_requests_on_one_connection_get_one_answer_and_a_close() -> None:
    endpoint = serve_metrics(new_registry(), "127.0.0.1", 0)
    host, port = endpoint.url.split("//")[1].split("/")[0].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 1000)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        assert answer.count(b"HTTP/1.") == 1 and b"process_cpu_seconds_total" in answer
    finally:
        endpoint.close()


def test_an_input_in_another_key_order_or_without_a_report_steps_of_zero_is_still_ours() -> None:
    """A worker of another version may write the input's keys in another order, or leave out
    a report's ``steps`` at its default (its request digest does): the same request."""
    report = _report()
    own = _Worker().decide(report.to_json())
    assert own.input is not None and '"steps":0' in own.input
    doc = orjson.loads(own.input)
    del doc["steps"]
    reordered = orjson.dumps(dict(reversed(list(doc.items())))).decode()
    answers = answers_request(report)
    assert answers(dataclasses.replace(own, input=reordered))
    doc["steps"] = False  # not 0: another request
    assert not answers(dataclasses.replace(own, input=orjson.dumps(doc).decode()))


def test_a_forged_input_far_longer_than_ours_is_refused_unparsed() -> None:
    event = _handoff()
    own = _Worker().decide(event.to_json())
    assert own.input is not None
    doc = orjson.loads(own.input)
    doc["event_time"] = "x" * 60_000  # only the timing differs, but no retry looks like it
    flood = dataclasses.replace(own, input=orjson.dumps(doc).decode())
    assert not answers_request(event)(flood)
    doc["event_time"] = "2026-11-30T05:00:00.123456+14:00"  # a retry's time, written otherwise
    assert answers_request(event)(dataclasses.replace(own, input=orjson.dumps(doc).decode()))


@pytest.mark.parametrize(
    ("model", "variable", "value"),
    [
        (Settings, "BATON_SESSION_TIMEOUT_S", "0.0001"),
        (ClientSettings, "BATON_CLIENT_DELIVERY_TIMEOUT_S", "0.0001"),
    ],
)
def test_a_duration_that_rounds_to_zero_milliseconds_is_refused(
    monkeypatch: pytest.MonkeyPatch, model: type[Settings], variable: str, value: str
) -> None:
    """int(0.0001 * 1000) is 0: session.timeout.ms 0 is refused by librdkafka (a traceback
    from the sink), message.timeout.ms 0 means never time out (a check queued while Kafka
    was down would be sent whenever it came back)."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("BATON_").lower()):
        model()
