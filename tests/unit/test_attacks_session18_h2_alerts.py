"""Session 18 (H2): an HTTP 4xx that arrives as a webhook post's deadline fires stays permanent.

``post_once`` relabelled every failure finished after its deadline "no whole answer within N s",
retryable: a 404 (a deleted webhook) or 410 (an archived channel) answered just then was posted
again up to ``attempts`` times, as a timeout would be.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from baton.sinks import alert_post
from baton.sinks.alert_post import PostOutcome, deliver, post_once

pytestmark = pytest.mark.unit


def _answered_as_the_deadline_fires(outcome: PostOutcome) -> Any:
    def post(url: str, text: str, timeout_s: float, opener: Any) -> PostOutcome:
        time.sleep(timeout_s + 0.1)  # the deadline (a timer thread) fires meanwhile
        return outcome

    return post


@pytest.mark.parametrize("status", [404, 410])
def test_a_4xx_answered_at_the_deadline_is_not_posted_again(
    monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    monkeypatch.setattr(
        alert_post,
        "_post",
        _answered_as_the_deadline_fires(PostOutcome(False, f"HTTP {status}", retry=False)),
    )
    outcome = post_once("http://127.0.0.1:9/hook", "stop", 0.05)
    assert (outcome.ok, outcome.problem, outcome.retry) == (False, f"HTTP {status}", False)
    posts = []

    def counted(url: str, text: str, timeout_s: float) -> PostOutcome:
        posts.append(timeout_s)
        return post_once(url, text, timeout_s)

    assert not deliver(
        counted,
        "http://127.0.0.1:9/hook",
        "stop",
        attempts=3,
        timeout_s=0.05,
        backoff_s=0.0,
        max_backoff_s=0.0,
        pause=lambda s: True,
        remaining=lambda: None,
    )
    assert len(posts) == 1
    # a failure the deadline caused (what the shut socket raised) is still named and retried
    shut = PostOutcome(False, "URLError: [Errno 104] Connection reset by peer")
    monkeypatch.setattr(alert_post, "_post", _answered_as_the_deadline_fires(shut))
    outcome = post_once("http://127.0.0.1:9/hook", "stop", 0.05)
    assert (outcome.problem, outcome.retry) == ("no whole answer within 0.05 s", True)
