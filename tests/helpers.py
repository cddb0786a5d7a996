"""Polling helpers shared by the integration and fault tests (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from baton.schemas.events import HandoffRequested

__all__ = ["handoff", "wait_for"]

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that value.

    Raises ``AssertionError`` after ``timeout`` seconds, naming ``message`` (a string, or a
    callable evaluated at failure time so it can show the last observed state) and the last
    value or exception seen. Exceptions from the predicate count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # not ready yet: e.g. a topic that does not exist yet
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {text}; last: {last!r}"
            )
        time.sleep(interval)


def handoff(
    run: str,
    n: int,
    task: str,
    fr: str = "planner",
    to: str = "researcher",
    parent: str | None = None,
    **kw: Any,
) -> HandoffRequested:
    """Handoff number ``n`` of ``run`` (request id ``{run}-h{n}``), stamped now unless given."""
    kw.setdefault("event_time", datetime.now(UTC))
    return HandoffRequested(
        request_id=f"{run}-h{n}",
        run_id=run,
        task_id=task,
        parent_task_id=parent,
        from_agent=fr,
        to_agent=to,
        **kw,
    )
