"""Posts alert text to a Slack-compatible webhook from a bounded queue, in a thread of its own.

The alerter's consume loop only calls :meth:`WebhookSender.submit`, which never blocks: a
webhook that hangs or fails costs the loop nothing, so it keeps reading, deduplicating and
folding storms. The sender thread posts what is queued (several queued alerts go out as one
post of up to ``max_post_chars``), retries a failed post with exponential backoff (honouring
``Retry-After``, capped), and gives up on it after ``attempts``. When the queue is full, an
alert is dropped and counted; one log line says so when the backlog starts and one with the
count when there is room again, and that count is posted with the next batch.

The URL is a secret: for Slack the path *is* the credential. It appears in logs and error
messages only as :func:`mask_url` shows it (scheme and host), never whole.

Guarantees: ``submit`` returns at once; ``finished`` counts accepted alerts whose post
succeeded or was given up, in the order they were accepted (so "finished >= n" means the
first n are done); :meth:`close` returns by its deadline (plus a fifth of a second). Not
guaranteed: delivery — a post given up, dropped for a full queue, or still queued at the
shutdown deadline is counted and logged, not retried later; a post that reached the server
but whose answer was lost is posted again (duplicates are possible).
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from baton.schemas.errors import ConfigError
from baton.sinks.alert_text import TEXT_MAX, cap_text, slack_escape

__all__ = [
    "PostOutcome",
    "WebhookSender",
    "backoff_delay",
    "check_webhook_url",
    "mask_url",
    "post_once",
    "post_webhook",
    "slack_body",
]

log = logging.getLogger(__name__)

#: a post callable: (url, text, timeout in seconds) -> outcome; never raises
Post = Callable[[str, str, float], "PostOutcome"]


@dataclass(frozen=True, slots=True)
class PostOutcome:
    """What one POST achieved. ``problem`` is safe to log (never holds the URL)."""

    ok: bool
    problem: str = ""
    #: worth another attempt (timeouts, connection errors, 408/425/429, 5xx)
    retry: bool = True
    #: seconds the server asked us to wait (``Retry-After``), when it said so
    retry_after: float | None = None


def mask_url(url: str) -> str:
    """``url`` fit for a log line: scheme and host (and port) kept, user, path and query
    masked — ``https://hooks.slack.com/services/***``."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "<webhook URL, not parseable>"
    if not parts.scheme or not host:
        return "<webhook URL without scheme or host>"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    masked = f"{parts.scheme}://{netloc}"
    first, _, rest = parts.path.lstrip("/").partition("/")
    if first and (rest or parts.query or parts.fragment):
        masked += f"/{first}/***"  # the first segment (e.g. /services) says which API it is
    elif first or parts.query or parts.fragment:
        masked += "/***"
    return masked


def check_webhook_url(url: str) -> None:
    """Refuse a webhook URL that cannot work, naming it only masked."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            f"webhook URL {mask_url(url)}: expected http://… or https://… with a host "
            f"(--webhook-url / BATON_WEBHOOK_URL)"
        )


def slack_body(text: str) -> bytes:
    """Slack's incoming-webhook JSON for ``text``: ``{"text": …}``, escaped and capped."""
    return orjson.dumps({"text": slack_escape(cap_text(text, TEXT_MAX))})


def post_once(url: str, text: str, timeout_s: float) -> PostOutcome:
    """One POST of :func:`slack_body` to ``url``; every failure is an outcome, none raises."""
    try:
        request = urllib.request.Request(
            url, data=slack_body(text), method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            if 200 <= response.status < 300:
                return PostOutcome(ok=True)
            return PostOutcome(ok=False, problem=f"HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        retry_after = _seconds(exc.headers.get("Retry-After") if exc.headers else None)
        exc.close()
        # 400 invalid_payload, 403, 404 no_service, 410 channel_is_archived: trying again
        # cannot help; a timeout, a rate limit or a server error may pass
        retry = exc.code in (408, 425, 429) or exc.code >= 500
        return PostOutcome(False, f"HTTP {exc.code}", retry, retry_after)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        return PostOutcome(False, _scrub(f"{type(exc).__name__}: {reason}", url))
    except ValueError as exc:  # a URL urllib cannot use; its message quotes the URL
        return PostOutcome(False, _scrub(f"invalid URL: {exc}", url), retry=False)


def backoff_delay(
    attempt: int, base_s: float, cap_s: float, retry_after: float | None = None
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (0-based): ``base_s·2^attempt``,
    at least what the server asked (``Retry-After``), never more than ``cap_s``."""
    delay = base_s * 2 ** min(attempt, 30)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, cap_s)


def post_webhook(url: str, text: str, timeout_s: float = 5.0, attempts: int = 3) -> bool:
    """POST ``text`` to ``url`` now (blocking: for one-shot commands such as ``baton alerts
    check``), retried with backoff; False when it never succeeded (logged, never raised)."""
    return _deliver(
        post_once,
        url,
        text,
        attempts=attempts,
        timeout_s=timeout_s,
        backoff_s=0.5,
        max_backoff_s=30.0,
        pause=_sleep,
        remaining=lambda: None,
    )


class WebhookSender:
    """The sender thread and its bounded queue (see the module docstring).

    ``post`` and ``clock`` are given so tests can replace the network and time.
    """

    def __init__(
        self,
        url: str,
        *,
        capacity: int = 100,
        attempts: int = 3,
        timeout_s: float = 5.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_post_chars: int = TEXT_MAX,
        post: Post = post_once,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_webhook_url(url)
        if capacity < 1 or attempts < 1 or timeout_s <= 0 or backoff_s < 0 or max_post_chars < 1:
            raise ValueError(
                f"WebhookSender: capacity >= 1, attempts >= 1, timeout_s > 0, backoff_s >= 0 "
                f"and max_post_chars >= 1 expected, got {capacity}, {attempts}, {timeout_s}, "
                f"{backoff_s}, {max_post_chars}"
            )
        self.url = url
        self.masked_url = mask_url(url)
        self.capacity = capacity
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_post_chars = max_post_chars
        self._post = post
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._closing = False
        self._deadline: float | None = None  # set by close(): no attempt or wait goes past it
        self._overflow = 0  # alerts dropped since the last report of drops
        self.accepted = 0
        self.finished = 0
        self.posted = 0
        self.failed = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="alerts-webhook", daemon=True)

    def start(self) -> WebhookSender:
        log.info("alerts: posting to webhook %s", self.masked_url)
        self._thread.start()
        return self

    def submit(self, text: str) -> bool:
        """Queue ``text`` for posting; False (counted, never blocking) when the queue is full
        or the sender is closing."""
        with self._cond:
            if self._closing or len(self._queue) >= self.capacity:
                self.dropped += 1
                self._overflow += 1
                if self._overflow == 1:
                    log.warning(
                        "alerts: webhook %s is behind (%d alerts queued): alerts are dropped "
                        "and counted until it catches up; the console still gets every line",
                        self.masked_url,
                        len(self._queue),
                    )
                return False
            self._queue.append(cap_text(text, self.max_post_chars))
            self.accepted += 1
            self._cond.notify_all()
            return True

    def progress(self) -> tuple[int, int]:
        """``(accepted, finished)``: alerts queued so far, and how many of the first of them
        are done (posted or given up)."""
        with self._cond:
            return self.accepted, self.finished

    def close(self, drain_s: float = 10.0) -> int:
        """Stop accepting, post what is queued until ``drain_s`` seconds from now, and return
        how many accepted alerts were not posted by then (logged)."""
        with self._cond:
            self._closing = True
            self._deadline = self._clock() + max(drain_s, 0.0)
            self._cond.notify_all()
        if self._thread.is_alive():
            # an attempt started after close() ends by the deadline (its timeout is cut to it);
            # one started before may hang longer: the daemon thread is left to it
            self._thread.join(max(drain_s, 0.0) + 0.2)
        with self._cond:
            left = self.accepted - self.finished
        if left:
            log.error(
                "alerts: webhook %s: %d alert(s) not posted by the shutdown deadline (%g s); "
                "they were printed on the console",
                self.masked_url,
                left,
                drain_s,
            )
        return left

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return  # closing, and everything is done
                texts = self._take()
                dropped, self._overflow = self._overflow, 0
            text = "\n".join(texts)
            if dropped:
                log.warning(
                    "alerts: webhook %s: %d alert(s) were dropped while it was behind",
                    self.masked_url,
                    dropped,
                )
                text += (
                    f"\n⚠️ {dropped} more alert(s) were not posted here: the webhook was behind "
                    f"(every alert is on the alerter's console)"
                )
            ok = _deliver(
                self._post,
                self.url,
                text,
                attempts=self.attempts,
                timeout_s=self.timeout_s,
                backoff_s=self.backoff_s,
                max_backoff_s=self.max_backoff_s,
                pause=self._pause,
                remaining=self._remaining,
            )
            with self._cond:
                self.finished += len(texts)
                if ok:
                    self.posted += len(texts)
                else:
                    self.failed += len(texts)
                self._cond.notify_all()

    def _take(self) -> list[str]:
        """The oldest queued alerts that fit one post (at least one); caller holds the lock."""
        texts = [self._queue.popleft()]
        size = len(texts[0])
        while self._queue and size + 1 + len(self._queue[0]) <= self.max_post_chars:
            size += 1 + len(self._queue[0])
            texts.append(self._queue.popleft())
        return texts

    def _remaining(self) -> float | None:
        with self._cond:
            deadline = self._deadline
        return None if deadline is None else deadline - self._clock()

    def _pause(self, delay: float) -> bool:
        """Wait ``delay`` seconds, cut short by the shutdown deadline; False once it passed."""
        end = self._clock() + delay
        with self._cond:
            while True:
                limit = end if self._deadline is None else min(end, self._deadline)
                left = limit - self._clock()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._deadline is None or self._clock() < self._deadline


def _deliver(
    post: Post,
    url: str,
    text: str,
    *,
    attempts: int,
    timeout_s: float,
    backoff_s: float,
    max_backoff_s: float,
    pause: Callable[[float], bool],
    remaining: Callable[[], float | None],
) -> bool:
    """Post ``text`` with up to ``attempts`` tries and backoff between them; True once posted."""
    masked = mask_url(url)
    problem = "no attempt made"
    tried = 0
    for attempt in range(attempts):
        left = remaining()
        if left is not None and left <= 0:
            problem = "the shutdown deadline passed"
            break
        outcome = post(url, text, timeout_s if left is None else min(timeout_s, left))
        tried += 1
        if outcome.ok:
            return True
        problem = outcome.problem
        log.warning(
            "alerts: webhook %s failed (attempt %d of %d): %s", masked, tried, attempts, problem
        )
        if not outcome.retry or attempt + 1 == attempts:
            break
        delay = backoff_delay(attempt, backoff_s, max_backoff_s, outcome.retry_after)
        if not pause(delay):
            problem = f"{problem}; the shutdown deadline passed"
            break
    lines = text.count("\n") + 1
    log.error(
        "alerts: webhook %s: gave up after %d attempt(s) (%s); %d line(s) not posted "
        "(they were printed on the console)",
        masked,
        tried,
        problem,
        lines,
    )
    return False


def _sleep(delay: float) -> bool:
    time.sleep(delay)
    return True


def _seconds(header: str | None) -> float | None:
    """A ``Retry-After`` in seconds (the HTTP-date form is not used by webhooks: ignored)."""
    try:
        value = float(header) if header is not None else None
    except ValueError:
        return None
    return value if value is not None and 0 <= value < float("inf") else None


def _scrub(message: str, url: str) -> str:
    """``message`` with ``url`` masked, and any secret part of it (user, password, path,
    query) seen alone replaced by ``***``."""
    message = message.replace(url, mask_url(url))
    try:
        parts = urlsplit(url)
        secrets = [parts.path, parts.query, parts.username, parts.password, parts.fragment]
    except ValueError:
        return message
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message
