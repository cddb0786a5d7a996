"""One alert posted to a Slack-compatible webhook, retried with backoff; never raises.

The URL is a secret: for Slack the path *is* the credential. It appears in logs and error
messages only as :func:`mask_url` shows it (scheme and host), never whole. Not guaranteed:
a post that reached the server but whose answer was lost is posted again (duplicates are
possible). The alerter posts through :class:`~baton.sinks.alert_webhook.WebhookSender`,
which calls :func:`deliver` from a thread of its own.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from baton.schemas.errors import ConfigError
from baton.sinks.alert_text import TEXT_MAX, cap_text, slack_escape

__all__ = [
    "Post",
    "PostOutcome",
    "backoff_delay",
    "check_webhook_url",
    "deliver",
    "mask_url",
    "post_once",
    "post_webhook",
    "slack_body",
]

log = logging.getLogger("baton.sinks.alert_webhook")

#: a post callable: (url, text, timeout in seconds) -> outcome; never raises
Post = Callable[[str, str, float], "PostOutcome"]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Answers a redirect with its own status, never a request elsewhere: urllib followed a
    webhook's 302 with a GET of any http(s) URL it named (a service on the alerter's host) and
    counted the alert as delivered."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _opener(sockets: list[socket.socket], ended: threading.Event) -> urllib.request.OpenerDirector:
    """An opener that follows no redirect and lists every socket it connects (through a
    proxy too), so the post's deadline can end them: urllib's timeout bounds each read, and
    an endpoint answering a byte within it held a post of timeout 2 s for 31 s. Both the
    plain socket (while it connects: a proxy's CONNECT, the TLS handshake) and, for https,
    the TLS socket that replaces it (wrapping detaches the plain one: shutting that did
    nothing, and a trickled answer over https held the post 6.7 s past a 1 s deadline) are
    listed; one listed after the deadline is shut at once."""

    def listed(sock: socket.socket) -> None:
        sockets.append(sock)
        if ended.is_set():  # (the deadline's _end sets it before it reads the list)
            _shut(sock)

    def listing(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        class Listed(base):  # type: ignore[valid-type,misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                create = self._create_connection  # type: ignore[has-type]

                def created(*args: Any, **kwargs: Any) -> socket.socket:
                    sock = create(*args, **kwargs)
                    listed(sock)
                    return sock

                self._create_connection = created

            def connect(self) -> None:
                try:
                    super().connect()
                finally:
                    if self.sock is not None:
                        listed(self.sock)

        return Listed

    plain, tls = listing(http.client.HTTPConnection), listing(http.client.HTTPSConnection)

    class _Http(urllib.request.HTTPHandler):
        def http_open(self, req: Any) -> Any:
            return self.do_open(plain, req)

    class _Https(urllib.request.HTTPSHandler):
        def https_open(self, req: Any) -> Any:
            extra = (
                {"check_hostname": self._check_hostname} if hasattr(self, "_check_hostname") else {}
            )
            return self.do_open(tls, req, context=self._context, **extra)  # type: ignore[attr-defined]

    return urllib.request.build_opener(_NoRedirect, _Http, _Https)


def _end(sockets: list[socket.socket], ended: threading.Event) -> None:
    """The post's deadline: shut its sockets (a read blocked on them returns at once)."""
    ended.set()
    for sock in list(sockets):
        _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


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
    """One POST of :func:`slack_body` to ``url``, answered within ``timeout_s`` in all (its
    sockets are shut then); every failure is an outcome, none raises."""
    sockets: list[socket.socket] = []
    ended = threading.Event()
    deadline = threading.Timer(timeout_s, _end, (sockets, ended))
    deadline.daemon = True
    deadline.start()
    try:
        outcome = _post(url, text, timeout_s, _opener(sockets, ended))
    finally:
        deadline.cancel()
    # past the deadline a retryable failure is what the shut socket raised: say why; a
    # permanent one (an HTTP 4xx, a redirect, a bad URL) is the server's or the URL's own
    # answer, whenever it came: relabelled retryable, a 404 was posted again and again
    if ended.is_set() and not outcome.ok and outcome.retry:
        return PostOutcome(False, f"no whole answer within {timeout_s:g} s")
    return outcome


def _post(
    url: str, text: str, timeout_s: float, opener: urllib.request.OpenerDirector
) -> PostOutcome:
    try:
        request = urllib.request.Request(
            url, data=slack_body(text), method="POST", headers={"Content-Type": "application/json"}
        )
        with opener.open(request, timeout=timeout_s) as response:
            if 200 <= response.status < 300:
                return PostOutcome(ok=True)
            return PostOutcome(ok=False, problem=f"HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        retry_after = _seconds(exc.headers.get("Retry-After") if exc.headers else None)
        exc.close()
        # 400 invalid_payload, 403, 404 no_service, 410 channel_is_archived, a redirect (never
        # followed): trying again cannot help; a timeout, a rate limit or a server error may pass
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
    return deliver(
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


def deliver(
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
