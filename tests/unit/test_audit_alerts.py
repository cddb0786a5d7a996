"""Stop alerts without a broker: the seed's line, dedup by decision_id, storm folding, hostile
names and records, the webhook sender's queue, retries, masking and shutdown."""

from __future__ import annotations

import logging
import threading
import time
import tracemalloc
from dataclasses import replace

import orjson
import pytest

from baton.schemas.decision import Decision, Outcome, Phase
from baton.schemas.errors import ConfigError
from baton.sinks.alert_offsets import CommitPoints
from baton.sinks.alert_post import PostOutcome, backoff_delay, mask_url, post_once, slack_body
from baton.sinks.alert_records import MAX_RECORD_BYTES, BadRecord, SkippedRecords, read_stop
from baton.sinks.alert_text import FIELD_MAX, TEXT_MAX, clean_field
from baton.sinks.alert_webhook import WebhookSender
from baton.sinks.alerts import AlertMessage, StopAlerter, _announce, stop_line
from tests.helpers import wait_for

pytestmark = pytest.mark.unit


def _stop(i: int = 742, reason: str = "ownership_conflict", tenant: str = "acme") -> Decision:
    return Decision(
        decision_id=f"d{i}",
        request_id=f"r{i}",
        run_id=f"run_{i}",
        tenant=tenant,
        phase=Phase.PRE_HANDOFF,
        outcome=Outcome.STOP,
        reason=reason,
        from_agent="planner",
        to_agent="researcher",
        task_id="refund_check",
    )


def test_stop_line_is_exactly_the_seeds_format() -> None:
    assert stop_line(_stop()) == (
        "🛑 Multi-Agent run run_742 stopped: ownership_conflict, "
        "handoff=planner -> researcher, task=refund_check"
    )


def test_stop_line_names_missing_agents_and_task_with_a_question_mark() -> None:
    bare = replace(_stop(), from_agent=None, to_agent=None, task_id=None)
    assert stop_line(bare).endswith("handoff=? -> ?, task=?")


def test_a_redelivered_stop_is_announced_once() -> None:
    alerter = StopAlerter(storm_threshold=0)
    first = alerter.offer(_stop(), now=0.0)
    again = alerter.offer(_stop(), now=1.0)
    assert [m.text for m in first] == [stop_line(_stop())]
    assert again == []
    assert alerter.duplicates == 1


def test_dedup_memory_is_bounded_and_forgets_the_oldest() -> None:
    alerter = StopAlerter(storm_threshold=0, remember=3)
    for i in range(4):
        alerter.offer(_stop(i), now=float(i))
    assert alerter.offer(_stop(3), now=10.0) == []  # still remembered
    assert len(alerter.offer(_stop(0), now=11.0)) == 1  # forgotten: announced again


def test_non_stop_decisions_are_not_announced() -> None:
    allow = replace(_stop(), outcome=Outcome.ALLOW, reason="ok")
    assert StopAlerter().offer(allow, now=0.0) == []


def test_a_storm_folds_into_one_summary_per_window() -> None:
    alerter = StopAlerter(storm_threshold=3, storm_window_s=5.0)
    out = []
    for i in range(50):  # 50 stops within 1 s
        reason = "shared_budget_exceeded" if i % 5 == 0 else "ownership_conflict"
        out += alerter.offer(_stop(i, reason, "acme" if i < 40 else "globex"), now=i * 0.02)
    assert [m.storm for m in out] == [False, False]  # the two before the threshold
    assert alerter.holding == 48
    assert alerter.tick(now=4.9) == []  # window not over yet
    [summary] = alerter.tick(now=5.04)
    assert summary.storm and summary.stops == 48
    assert summary.text.startswith(
        "🛑 Stop storm: 48 stops in 5.0 s across 48 Multi-Agent runs (run_2, run_3, run_4, "
        "run_5, run_6, run_7, run_8, run_9, run_10, run_11 and 38 more): "
    )
    assert "ownership_conflict ×39" in summary.text and "shared_budget_exceeded ×9" in summary.text
    assert "tenants: acme ×38, globex ×10" in summary.text
    assert "first: Multi-Agent run run_2 stopped: ownership_conflict" in summary.text


def test_after_a_quiet_window_stops_are_announced_one_by_one_again() -> None:
    alerter = StopAlerter(storm_threshold=3, storm_window_s=5.0)
    for i in range(10):
        alerter.offer(_stop(i), now=0.1 * i)
    assert len(alerter.tick(now=6.0)) == 1  # the summary; 8 in the window: still storming
    assert alerter.tick(now=11.5) == []  # a window with nothing: the storm is over
    out = alerter.offer(_stop(99), now=12.0)
    assert [m.text for m in out] == [stop_line(_stop(99))]


def test_shutdown_flushes_what_a_storm_holds() -> None:
    alerter = StopAlerter(storm_threshold=2, storm_window_s=60.0)
    for i in range(5):
        alerter.offer(_stop(i), now=float(i))
    [summary] = alerter.flush(now=5.0)
    assert summary.stops == 4 and alerter.holding == 0


def test_threshold_zero_never_folds() -> None:
    alerter = StopAlerter(storm_threshold=0, storm_window_s=1.0)
    out = [m for i in range(100) for m in alerter.offer(_stop(i), now=0.0)]
    assert len(out) == 100 and not any(m.storm for m in out)


def test_invalid_storm_settings_are_refused_naming_the_values() -> None:
    with pytest.raises(ValueError, match=r"got -1, 5\.0, 10"):
        StopAlerter(storm_threshold=-1, storm_window_s=5.0, remember=10)


# --------------------------------------------------------------------- hostile names


def test_a_newline_in_a_name_cannot_forge_a_second_alert_line() -> None:
    forged = replace(_stop(), run_id="run_1\n🛑 Multi-Agent run run_2 stopped: killed")
    line = stop_line(forged)
    assert "\n" not in line
    assert line.startswith("🛑 Multi-Agent run run_1\\x0a🛑 Multi-Agent run run_2 stopped: killed")


def test_terminal_escapes_and_bidi_overrides_are_shown_not_obeyed() -> None:
    hostile = replace(_stop(), from_agent="\x1b[2J\x1b[31mroot", to_agent="evil\u202egnp.exe")
    line = stop_line(hostile)
    assert "handoff=\\x1b[2J\\x1b[31mroot -> evil\\u202egnp.exe" in line
    assert line.isprintable()


def test_a_60_kb_name_is_cut_to_a_hundred_characters() -> None:
    line = stop_line(replace(_stop(), reason="r" * 60_000, run_id="x" * 60_000))
    assert len(line) < 400
    assert f"run {'x' * (FIELD_MAX - 1)}… stopped: {'r' * (FIELD_MAX - 1)}…," in line


def test_clean_field_caps_after_making_characters_visible() -> None:
    assert clean_field("\n" * 50, limit=10) == "\\x0a\\x0a\\…"
    assert clean_field("ok", limit=10) == "ok"
    assert clean_field("abcdefghijk", limit=10) == "abcdefghi…"


def test_slack_control_sequences_are_escaped_in_the_webhook_body() -> None:
    text = "run <!channel> by <@U123> <http://evil|click> & <!here> already &lt;"
    body = orjson.loads(slack_body(text))
    assert body == {
        "text": "run &lt;!channel&gt; by &lt;@U123&gt; &lt;http://evil|click&gt; &amp; "
        "&lt;!here&gt; already &amp;lt;"
    }
    assert not any(c in body["text"] for c in "<>")


def test_a_webhook_body_is_capped() -> None:
    assert len(orjson.loads(slack_body("&" * 100_000))["text"]) <= TEXT_MAX * len("&amp;")


def test_dedup_memory_holds_digests_not_60_kb_ids() -> None:
    alerter = StopAlerter(storm_threshold=0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(300):  # 18 MB of ids if they were kept
            alerter.offer(replace(_stop(i), decision_id=f"{i}" + "x" * 60_000), now=float(i))
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1_000_000, kept
    assert alerter.offer(replace(_stop(7), decision_id="7" + "x" * 60_000), now=400.0) == []


def test_a_storm_of_hostile_names_holds_counts_not_stops_and_its_summary_is_capped() -> None:
    alerter = StopAlerter(storm_threshold=2, storm_window_s=60.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):  # 60 MB of names if the storm kept the stops
            big = f"{i:05d}" + "n" * 10_000
            alerter.offer(replace(_stop(i, reason=big, tenant=big), run_id=big), now=0.001 * i)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert alerter.holding == 1999
    assert kept < 3_000_000, kept
    [summary] = alerter.flush(now=3.0)
    assert summary.storm and summary.stops == 1999
    assert len(summary.text) <= TEXT_MAX
    assert summary.text.startswith("🛑 Stop storm: 1999 stops in 3.0 s across 1999 Multi-Agent")


def test_a_storm_summary_lists_ten_reasons_and_counts_the_rest_as_others() -> None:
    alerter = StopAlerter(storm_threshold=1, storm_window_s=60.0)
    for i in range(150):
        alerter.offer(_stop(i, reason=f"reason_{i:03d}"), now=0.0)
    [summary] = alerter.flush(now=1.0)
    # 100 reasons counted by name, the other 50 as "(others)"; ten shown
    assert "(others) ×50" in summary.text and "91 more reasons" in summary.text


# --------------------------------------------------------------------- records that are not stops


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"\xff\xfe\x00", "not_json"),
        (b"[" * 100_000, "not_json"),  # nesting deeper than the parser goes
        (b'{"decision_id": "d", "run_id": ', "not_json"),
        (b"[1, 2]", "not_a_decision"),
        (b'{"decision_id": 5}', "not_a_decision"),
        (b'"\\ud800"', "not_json"),  # a lone surrogate cannot be printed
        (b" " * (MAX_RECORD_BYTES + 1), "too_large"),
    ],
)
def test_a_record_that_is_not_a_decision_is_classified_never_raised(
    value: bytes | None, kind: str
) -> None:
    bad = read_stop(value)
    assert isinstance(bad, BadRecord) and bad.kind == kind
    assert bad.detail.isprintable() and len(bad.detail) <= 200


def test_a_wrong_type_names_the_field_but_never_quotes_the_value() -> None:
    raw = orjson.dumps({**_stop().to_dict(), "depth": "SECRET-ish" * 1000})
    bad = read_stop(raw)
    assert isinstance(bad, BadRecord) and bad.kind == "not_a_decision"
    assert bad.detail.startswith("depth: ") and "SECRET" not in bad.detail


def test_a_valid_stop_with_a_500_kb_run_id_is_read_and_announced_capped() -> None:
    decision = read_stop(replace(_stop(), run_id="r" * 500_000).to_json())
    assert isinstance(decision, Decision)
    assert len(stop_line(decision)) < 400


def test_bad_records_are_logged_once_per_kind_then_once_a_minute_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    skipped = SkippedRecords(interval_s=60.0)
    caplog.set_level(logging.ERROR, logger="baton")
    for i in range(1000):  # a flood within 10 s
        skipped.skip(BadRecord("not_json", "Invalid JSON"), f"gov.stops[0]@{i}", now=i * 0.01)
    skipped.skip(BadRecord("empty", "no value"), "gov.stops[1]@0", now=5.0)
    assert [r.getMessage() for r in caplog.records] == [
        "alerts: gov.stops[0]@0 skipped (not_json): Invalid JSON",
        "alerts: gov.stops[1]@0 skipped (empty): no value",
    ]
    assert skipped.skip(BadRecord("not_json", "Invalid JSON"), "gov.stops[0]@1000", now=60.0)
    assert (
        caplog.records[-1]
        .getMessage()
        .endswith("; 999 more not_json record(s) skipped since the last such line")
    )
    assert skipped.counts == {"not_json": 1001, "empty": 1}


# --------------------------------------------------------------------- the webhook URL is a secret

SECRET_URL = "https://hooks.slack.com/services/T0001/B0001/XXXXSECRETXXXX"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (SECRET_URL, "https://hooks.slack.com/services/***"),
        (
            "https://user:pw@hooks.example.com:8443/hook?token=SECRET",
            "https://hooks.example.com:8443/hook/***",
        ),
        ("http://127.0.0.1:9000/services/T/B/SECRET#frag", "http://127.0.0.1:9000/services/***"),
        ("https://chat.example.com/?token=SECRET", "https://chat.example.com/***"),
        ("http://[::1]:80/x/SECRET", "http://[::1]:80/x/***"),
        ("https://hooks.example.com", "https://hooks.example.com"),
        ("hooks.slack.com/services/T/B/SECRET", "<webhook URL without scheme or host>"),
        ("http://h:notaport/SECRET", "<webhook URL, not parseable>"),
    ],
)
def test_mask_url_keeps_scheme_and_host_and_hides_the_rest(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url", ["hooks.slack.com/services/T/B/SECRET", "ftp://h/SECRET", "http:///SECRET", "x"]
)
def test_an_unusable_webhook_url_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(ConfigError, match=r"expected http://… or https://… with a host") as info:
        WebhookSender(url)
    assert "SECRET" not in str(info.value)


def test_an_error_that_quotes_the_url_is_scrubbed() -> None:
    # urllib's own message is "unknown url type: 'hooks.slack.com/services/…'"
    outcome = post_once("hooks.slack.com/services/T0001/B0001/XXXXSECRETXXXX", "hi", 1.0)
    assert not outcome.ok and not outcome.retry
    assert "SECRET" not in outcome.problem and "invalid URL" in outcome.problem


# --------------------------------------------------------------------- the sender thread


class FakeHook:
    """The network replaced: answers posts with scripted outcomes; ``gate`` holds them."""

    def __init__(self, *outcomes: PostOutcome) -> None:
        self.script = list(outcomes)
        self.posts: list[tuple[float, str, float]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, url: str, text: str, timeout_s: float) -> PostOutcome:
        assert url == SECRET_URL
        self.posts.append((time.monotonic(), text, timeout_s))
        self.entered.set()
        if not self.gate.wait(timeout_s):
            return PostOutcome(False, "TimeoutError: timed out")
        return self.script.pop(0) if self.script else PostOutcome(ok=True)

    def lines(self) -> list[str]:
        return [line for _, text, _ in self.posts for line in text.split("\n")]


def _sender(hook: FakeHook, **kwargs: object) -> WebhookSender:
    kwargs = {"capacity": 3, "backoff_s": 0.01, "timeout_s": 5.0, **kwargs}
    return WebhookSender(SECRET_URL, post=hook, **kwargs).start()  # type: ignore[arg-type]


def test_submit_never_blocks_while_the_webhook_hangs_and_drops_are_counted_then_posted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="baton")
    hook = FakeHook()
    hook.gate.clear()  # the webhook hangs
    sender = _sender(hook)
    try:
        assert sender.submit("first")
        wait_for(hook.entered.is_set, message="the first post in flight")
        started = time.monotonic()
        accepted = [sender.submit(f"alert {i}") for i in range(1000)]
        assert time.monotonic() - started < 0.5  # 1000 submits, none waited for the hook
        assert accepted == [True] * 3 + [False] * 997  # the queue holds 3
        assert sender.dropped == 997
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "alerts are dropped and counted" in warnings[0]
        hook.gate.set()  # it recovers
        wait_for(lambda: sender.progress() == (4, 4), message="the queue drained")
    finally:
        assert sender.close(1.0) == 0
    assert hook.lines()[:4] == ["first", "alert 0", "alert 1", "alert 2"]
    assert hook.lines()[4].startswith("⚠️ 997 more alert(s) were not posted here")
    assert sender.posted == 4 and sender.failed == 0
    assert not any("SECRET" in r.getMessage() for r in caplog.records)


def test_a_failed_post_is_retried_with_growing_backoff_then_succeeds() -> None:
    hook = FakeHook(PostOutcome(False, "HTTP 503"), PostOutcome(False, "HTTP 500"))
    sender = _sender(hook, backoff_s=0.05, attempts=3)
    try:
        sender.submit("🛑 one")
        wait_for(lambda: sender.progress() == (1, 1), message="the post finished")
    finally:
        sender.close(1.0)
    times = [t for t, _, _ in hook.posts]
    assert len(times) == 3 and sender.posted == 1
    assert times[1] - times[0] >= 0.05 and times[2] - times[1] >= 0.1


def test_a_post_the_server_refuses_for_good_is_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = FakeHook(PostOutcome(False, "HTTP 404", retry=False))
    sender = _sender(hook)
    try:
        sender.submit("🛑 one")
        wait_for(lambda: sender.progress() == (1, 1), message="the post given up")
    finally:
        sender.close(1.0)
    assert len(hook.posts) == 1 and sender.failed == 1
    assert any(
        "alerts: webhook https://hooks.slack.com/services/***: "
        "gave up after 1 attempt(s) (HTTP 404)" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize(
    ("max_post_chars", "posts"),
    [
        (100, ["first", "\n".join(f"queued alert {i}" for i in range(5))]),
        (25, ["first", *[f"queued alert {i}" for i in range(5)]]),  # 14 characters each
    ],
)
def test_alerts_queued_behind_a_slow_post_go_out_together_within_the_size_cap(
    max_post_chars: int, posts: list[str]
) -> None:
    hook = FakeHook()
    hook.gate.clear()
    sender = _sender(hook, capacity=10, max_post_chars=max_post_chars)
    try:
        sender.submit("first")
        wait_for(hook.entered.is_set, message="the first post in flight")
        for i in range(5):
            sender.submit(f"queued alert {i}")
        hook.gate.set()
        wait_for(lambda: sender.progress() == (6, 6), message="all posted")
    finally:
        sender.close(1.0)
    assert [text for _, text, _ in hook.posts] == posts


def test_shutdown_drains_by_its_deadline_while_the_webhook_hangs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = FakeHook()
    hook.gate.clear()  # hangs for good: every post waits out its timeout
    sender = _sender(hook, capacity=10, timeout_s=30.0)
    for i in range(5):
        sender.submit(f"alert {i}")
    wait_for(hook.entered.is_set, message="the first post in flight")
    started = time.monotonic()
    assert sender.close(0.3) == 5  # none posted
    assert time.monotonic() - started < 1.0  # the deadline and the join's 0.2 s grace
    assert not sender.submit("late")  # closed: refused, counted
    assert any(
        "5 alert(s) not posted by the shutdown deadline" in r.getMessage() for r in caplog.records
    )


def test_a_retry_never_waits_past_the_shutdown_deadline() -> None:
    hook = FakeHook(PostOutcome(False, "HTTP 429", retry_after=3600.0))
    sender = _sender(hook, max_backoff_s=60.0)
    sender.submit("alert")
    wait_for(lambda: len(hook.posts) == 1, message="the first attempt")
    started = time.monotonic()
    assert sender.close(0.2) == 0  # the 60 s Retry-After wait was cut at the deadline
    assert time.monotonic() - started < 1.0
    assert len(hook.posts) == 1 and sender.failed == 1


def test_backoff_doubles_honours_retry_after_and_is_capped() -> None:
    assert [backoff_delay(a, 0.5, 30.0) for a in range(7)] == [0.5, 1, 2, 4, 8, 16, 30]
    assert backoff_delay(0, 0.5, 30.0, retry_after=10.0) == 10.0
    assert backoff_delay(0, 0.5, 30.0, retry_after=1e9) == 30.0
    assert backoff_delay(10**6, 0.5, 30.0) == 30.0  # no overflow for a huge attempt number


# --------------------------------------------------------------------- what may be committed


def test_offsets_fall_due_only_once_the_sender_is_done_with_the_alerts_before_them() -> None:
    points = CommitPoints()
    for offset in range(3):
        points.read("gov.stops", 0, offset)
    points.mark(queued=2)  # two alerts queued for these three records
    assert points.due(finished=1) == {}  # one still being posted: nothing may be committed
    points.read("gov.stops", 1, 10)
    points.mark(queued=5)
    assert points.due(finished=2) == {("gov.stops", 0): 3}
    assert points.due(finished=4) == {}
    assert points.due(finished=5) == {("gov.stops", 0): 3, ("gov.stops", 1): 11}
    assert points.last_due == {("gov.stops", 0): 3, ("gov.stops", 1): 11} and len(points) == 0


def test_marks_stay_few_while_the_sender_is_stuck() -> None:
    points = CommitPoints()
    for offset in range(10_000):  # records that queue no alert (not stops, duplicates)
        points.read("gov.stops", 0, offset)
        points.mark(queued=7)
    assert len(points) == 1
    assert points.due(finished=7) == {("gov.stops", 0): 10_000}


def test_a_revoked_partition_is_never_committed_by_this_member() -> None:
    points = CommitPoints()
    points.read("gov.stops", 0, 4)
    points.read("gov.stops", 1, 8)
    points.mark(queued=0)
    assert points.due(finished=0) == {("gov.stops", 0): 5, ("gov.stops", 1): 9}
    points.read("gov.stops", 1, 9)
    points.mark(queued=1)
    points.revoke([("gov.stops", 1)])
    assert points.last_due == {("gov.stops", 0): 5}
    assert points.due(finished=1) == {("gov.stops", 0): 5}


class _Record:
    """A consumed record, as far as the alerter looks at it."""

    def __init__(self, value: bytes | None, offset: int = 0) -> None:
        self._value, self._offset = value, offset

    def error(self) -> None:
        return None

    def value(self) -> bytes | None:
        return self._value

    def topic(self) -> str:
        return "gov.stops"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def test_a_record_the_alerter_cannot_take_is_skipped_as_unexpected_and_the_next_one_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Fragile(StopAlerter):
        def offer(
            self, decision: Decision, now: float, wall: float | None = None
        ) -> list[AlertMessage]:
            if decision.run_id == "run_1":
                raise RuntimeError("a bug\nmeeting run_1")
            return super().offer(decision, now, wall)

    alerter, skipped = Fragile(storm_threshold=0), SkippedRecords()
    bad = _announce(alerter, skipped, _Record(_stop(1).to_json(), 7), max_age_s=0)
    good = _announce(alerter, skipped, _Record(_stop(2).to_json(), 8), max_age_s=0)
    assert bad == [] and [m.text for m in good] == [stop_line(_stop(2))]
    assert skipped.counts == {"unexpected": 1}
    assert caplog.records[-1].getMessage() == (
        "alerts: gov.stops[0]@7 skipped (unexpected): RuntimeError: a bug\\x0ameeting run_1"
    )
