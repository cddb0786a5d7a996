"""Session 18 (H5): the SDK's decision reader against records a writer of gov.decisions crafts.

F1: a decision under a waiting check's key whose ``input`` is JSON nested 255 deep (orjson
reads 1,024 levels, writes 254): ``answers_request`` parsed it and wrote it again to compare
it with the check's own input, orjson's dump raised TypeError, and the reader thread died.
Every waiting check then got the client's no-answer decision (an allow for a ``fail_open``
client), and every later check timed out into the same: one record turned a fail-open client
into one that allows everything, for good.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import pytest

from baton.processors.recorded import input_text
from baton.schemas.decision import Outcome, Reason
from baton.schemas.events import HandoffRequested
from baton.streams.sdk import GovernanceClient
from baton.streams.sdk.base import answers_request
from tests.unit.test_attacks_session10_leftovers import _Offline, _Worker

pytestmark = pytest.mark.unit


def _realistic() -> HandoffRequested:
    """A request as orchestrators send them: uuid ids, an action and tools (~400 characters)."""
    return HandoffRequested(
        request_id=str(uuid.uuid4()), run_id="run-1", task_id=str(uuid.uuid4()),
        from_agent="planner", to_agent="researcher", action="research.summarise",
        tools=["web.search", "web.fetch"], estimated_usd=0.25, event_time=datetime.now(UTC),
    )  # fmt: skip


def _nested_input(length: int) -> str:
    """A JSON object nested past what orjson writes, padded to ``length`` characters."""
    deep = '{"a":' + "[" * 255 + "]" * 255
    return deep + ',"p":"' + "x" * max(0, length - len(deep) - 8) + '"}'


def test_a_decision_whose_input_nests_255_deep_answers_nothing_and_leaves_the_reader_alive() -> (
    None
):
    offline = _Offline()
    offline.client.options = dataclasses.replace(offline.client.options, fail_open=True)
    event = _realistic()

    def read(sent: bytes) -> list[object]:
        own = _Worker().decide(sent)
        assert own.outcome == Outcome.ALLOW and own.reason == Reason.OK
        text = input_text(HandoffRequested.model_validate_json(sent))
        assert len(text) > 310  # within the 200 characters the matcher parses
        forged = dataclasses.replace(
            own, outcome=Outcome.STOP, reason=Reason.REQUEST_ID_REUSED, chain_hash=None,
            decision_id="f" * 32, input=_nested_input(len(text)),
        )  # fmt: skip
        assert not answers_request(event)(forged)
        return [forged, own]

    answer = offline.call(event, read)
    assert answer.outcome == Outcome.ALLOW
    assert answer.reason == Reason.OK  # the worker's, not the client's governance_unavailable


# ------------------------------------------------------------------ F6: fail_open of a wrong type

_NOT_A_BOOL = ["false", "no", "0", 0, 1, 0.0]


@pytest.mark.parametrize("value", _NOT_A_BOOL, ids=repr)
def test_a_fail_open_that_is_not_a_bool_is_refused_before_anything_is_sent(value: object) -> None:
    """F6: ``fail_open`` was taken as given: ``fail_open="false"`` (a value read from a config
    file or an environment variable by the orchestrator) is a true string, and every check
    Baton did not answer in time was allowed. Now a ValueError names it; only True or False
    is taken (None: the environment's BATON_CLIENT_FAIL_OPEN, a checked bool)."""
    with pytest.raises(ValueError, match="fail_open"):
        GovernanceClient("127.0.0.1:1", fail_open=value)  # type: ignore[arg-type]


# ------------------------------------------------------------------ F8: everything= of a wrong type


@pytest.mark.parametrize("verb", ["kill", "release"])
@pytest.mark.parametrize("value", ["false", "no", 1], ids=repr)
def test_an_everything_that_is_not_a_bool_is_refused_not_taken_as_global(
    verb: str, value: object
) -> None:
    """F8: ``OperatorClient.release(everything="false")`` (a flag read as text by the caller,
    with no run or tenant given) counted as ``everything=True``: the global kill switch was
    lifted. Now a ValueError names it, before anything is signed or sent."""
    from baton.streams.sdk import OperatorClient

    client = OperatorClient("127.0.0.1:1")
    with pytest.raises(ValueError, match="everything"):
        getattr(client, verb)(everything=value, wait=False)
