"""Polling helpers shared by the integration and fault tests (never a bare sleep)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from baton.schemas.events import HandoffCompleted, HandoffRequested

__all__ = ["handoff", "handoff_round", "start_rounds", "wait_for"]

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


def handoff_round(
    runs: list[str], i: int, cost_usd: float, now: datetime
) -> list[HandoffRequested | HandoffCompleted]:
    """Round ``i`` of steady traffic: handoff i of every run (planner -> researcher, task
    ``t{i}``) and its completion costing ``cost_usd`` and one tool call."""
    batch: list[HandoffRequested | HandoffCompleted] = []
    for run in runs:
        batch.append(
            HandoffRequested(
                request_id=f"{run}-h{i}",
                run_id=run,
                task_id=f"t{i}",
                from_agent="planner",
                to_agent="researcher",
                event_time=now,
            )
        )
        batch.append(
            HandoffCompleted(
                request_id=f"{run}-h{i}",
                run_id=run,
                task_id=f"t{i}",
                agent="researcher",
                cost_usd=cost_usd,
                tool_calls=1,
                event_time=now,
            )
        )
    return batch


def start_rounds(
    send: Callable[[list[Any]], None],
    runs: list[str],
    rounds: int,
    cost_usd: float,
    pause_s: float = 0.3,
) -> tuple[threading.Thread, threading.Event]:
    """Send ``rounds`` rounds (handoff_round) from a thread, ``pause_s`` apart; the event is
    set once every round was sent (for a kill -9 in the middle of the stream)."""
    done = threading.Event()
    now = datetime.now(UTC)

    def traffic() -> None:
        for i in range(1, rounds + 1):
            send(handoff_round(runs, i, cost_usd, now))
            time.sleep(pause_s)
        done.set()

    thread = threading.Thread(target=traffic)
    thread.start()
    return thread, done
