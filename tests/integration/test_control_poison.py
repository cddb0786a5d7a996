"""A policy_updated that cannot be a policy is one dead letter on a real worker, which keeps
deciding: before, three such records (an unhashable label, a 64-bit-overflowing limit, nested
YAML aliases) each ended the worker's control follower, the worker exited, and read the
record again after every restart (`baton up` gave up after five)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest

from baton.schemas.decision import Outcome
from baton.schemas.policy import DEFAULT_POLICY_YAML
from baton.streams.embedded import EmbeddedBroker
from tests.helpers import handoff, wait_for
from tests.stack import EventSender

from .conftest import Stack, one_worker_stack

pytestmark = pytest.mark.integration

#: nested aliases: 10**8 values once expanded, from a few hundred bytes
_LAUGHS = "\n".join(
    ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    + ["multi_agent: *a7"]
)
POISON = [
    'label: "\\ud800"\nmulti_agent: {max_handoffs: 8}\n',
    f"multi_agent: {{max_handoffs: {2**64}}}\n",
    _LAUGHS,
]


@pytest.fixture(scope="module")
def poison_stack(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One worker without `operators` (unsigned policy updates count, as by default)."""
    with one_worker_stack(broker, tmp_path_factory.mktemp("poison"), DEFAULT_POLICY_YAML, "p") as s:
        yield s


def test_a_policy_update_that_cannot_be_a_policy_is_a_dead_letter_and_the_worker_decides_on(
    poison_stack: Stack,
) -> None:
    control = EventSender(poison_stack.bootstrap, poison_stack.catalog.control)
    for text in POISON:
        event = {
            "type": "policy_updated",
            "policy_yaml": text,
            "operator": "mallory",
            "event_time": datetime.now(UTC).isoformat(),
        }
        control.send_raw(orjson.dumps(event), b"policy")
    letters = wait_for(
        lambda: (
            [
                doc
                for doc in map(orjson.loads, list(poison_stack.deadletters.records))
                if doc.get("error_kind") == "policy"
            ][: len(POISON)]
            if len(poison_stack.deadletters.records) >= len(POISON)
            else None
        ),
        60,
        message="a dead letter per poisoned policy update",
    )
    errors = " | ".join(str(doc.get("error")) for doc in letters)
    assert "cannot be hashed" in errors and "9007199254740992" in errors
    assert "YAML aliases" in errors
    (worker,) = poison_stack.workers
    assert worker.alive(), worker.log()[-3000:]
    run = f"run_{uuid.uuid4().hex[:8]}"
    poison_stack.requests.send([handoff(run, 1, "t1", "planner", "writer")])
    (decided,) = poison_stack.decisions.wait_run(run, 1)
    assert decided.outcome == Outcome.ALLOW
    assert worker.alive()
