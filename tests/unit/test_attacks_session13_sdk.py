"""Session 13 (H5): the SDK's unchained rule (session 12, ``sdk.waiters.unchained_allow``)
against a writer of gov.decisions who sets a ``chain_hash`` that is no worker's link.

The rule tested ``not decision.chain_hash``: a forged allow carrying ``" "`` or ``"x"`` counted
as chained and answered the waiting client. A worker's link is always 32 lowercase hex
characters (keyed BLAKE2b, digest_size 16): anything else is now no link. What the rule
cannot tell (documented, docs/security.md "What the SDK cannot tell"): a forger who writes 32
hex characters; the audit's chain names that row, not the SDK.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from baton.schemas.decision import Outcome, Phase, Reason
from baton.streams.sdk.base import answers_approval, answers_request
from tests.unit.test_attacks_session10_leftovers import _handoff, _Worker

pytestmark = pytest.mark.unit

NO_LINKS = [" ", "x", "\t\n", "0" * 31, "0" * 33, "A" * 32, "0" * 64, " " + "0" * 31, "g" * 32]


def test_every_link_a_worker_writes_is_32_lowercase_hex() -> None:
    own = _Worker().decide(_handoff().to_json())
    assert own.chain_hash is not None and re.fullmatch(r"[0-9a-f]{32}", own.chain_hash)


@pytest.mark.parametrize("link", NO_LINKS)
@pytest.mark.parametrize("outcome", [Outcome.ALLOW, Outcome.APPROVAL_REQUIRED])
def test_a_forged_allow_whose_chain_hash_is_no_link_answers_nothing(
    link: str, outcome: Outcome
) -> None:
    event = _handoff(action="billing.refund.create")
    own = _Worker().decide(event.to_json())
    answers = answers_request(event)
    assert answers(own)
    forged = dataclasses.replace(
        own, outcome=outcome, reason=Reason.OK, chain_hash=link, decision_id="f" * 32
    )
    assert not answers(forged)


@pytest.mark.parametrize("link", NO_LINKS)
def test_a_forged_grant_whose_chain_hash_is_no_link_answers_nothing(link: str) -> None:
    asked = _Worker().decide(_handoff(action="billing.refund.create").to_json())
    assert asked.outcome == Outcome.APPROVAL_REQUIRED
    grant = dataclasses.replace(asked, phase=Phase.APPROVAL, outcome=Outcome.ALLOW, chain_hash=link)
    assert not answers_approval(asked)(grant)
    assert answers_approval(asked)(dataclasses.replace(grant, chain_hash="0" * 32))


@pytest.mark.parametrize("link", NO_LINKS)
def test_a_stop_still_answers_whatever_its_chain_hash(link: str) -> None:
    event = _handoff()
    own = _Worker().decide(event.to_json())
    stop = dataclasses.replace(own, outcome=Outcome.STOP, reason="request_id_reused")
    assert answers_request(event)(dataclasses.replace(stop, chain_hash=link))
