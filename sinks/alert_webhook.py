"""Posts alert text to a Slack-compatible webhook from a bounded queue, in a thread of its own.

The alerter's consume loop only calls :meth:`WebhookSender.submit`, which never blocks: a
webhook that hangs or fails costs the loop nothing, so it keeps reading, deduplicating and
folding storms. The sender thread posts what is queued (several queued alerts go out as one
post of up to ``max_post_chars``), retries a failed post with exponential backoff (honouring
``Retry-After``, capped), and gives up on it after ``attempts``. When the queue is full, an
alert is dropped and counted; one log line says so when the backlog starts and one with the
count when there is room again, and that count is posted with the next batch.

Each post goes through :func:`~baton.sinks.alert_post.deliver` (retries, backoff, the URL
masked in every log line).

Guarantees: ``submit`` returns at once; ``finished`` counts accepted alerts whose post
succeeded or was given up, in the order they were accepted (so "finished >= n" means the
first n are done); :meth:`close` returns by its deadline (plus a fifth of a second). Not
guaranteed: delivery — a post given up, dropped for a full queue, or still queued at the
shutdown deadline is counted and logged, not retried later; a post that reached the server
but whose answer was lost is posted again (duplicates are possible).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from baton.sinks.alert_post import Post, check_webhook_url, deliver, mask_url, post_once
from baton.sinks.alert_text import TEXT_MAX, cap_text

__all__ = ["WebhookSender"]

log = logging.getLogger(__name__)


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
            ok = deliver(
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
