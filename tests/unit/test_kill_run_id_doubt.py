"""A kill of a run id that cannot be the run its operator means is warned about (session 29).

A run id is compared exactly and a worker answers a kill of an id no run has like any other
(a run may start later): "é" pasted as e + U+0301, or a space at an end, killed nothing and
said "kill switch engaged"."""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest

from baton.streams.sdk import OperatorClient
from baton.streams.sdk.operators import run_id_doubt

pytestmark = pytest.mark.unit

NFC = "run_caf\u00e9"
NFD = unicodedata.normalize("NFD", NFC)


def test_an_id_in_nfd_or_with_white_space_at_an_end_is_doubted_and_a_plain_one_is_not() -> None:
    assert run_id_doubt(NFC) is None
    assert run_id_doubt("run_744") is None
    assert run_id_doubt("run 744") is None  # a space inside is the client's id
    assert "NFC" in (run_id_doubt(NFD) or "")
    assert "white space" in (run_id_doubt("run_744 ") or "")
    assert "white space" in (run_id_doubt("\trun_744") or "")


@pytest.mark.parametrize("release", [False, True])
def test_the_operator_client_warns_before_it_publishes(
    release: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client = OperatorClient("127.0.0.1:1")  # never connects: _command is stood in for
    sent: list[Any] = []
    monkeypatch.setattr(client, "_command", lambda event, *a: sent.append(event))
    switch = client.release if release else client.kill
    with caplog.at_level("WARNING", logger="baton.client"):
        switch(run_id=NFD, operator="ops", reason="r", wait=False)
        switch(run_id=NFC, operator="ops", reason="r", wait=False)
    assert [e.run_id for e in sent] == [NFD, NFC]  # published as given: ids are not folded
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "not in Unicode NFC form" in warnings[0]
