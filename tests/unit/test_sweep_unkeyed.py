"""Changelog records restored without a run id as their key are dropped before the sweep."""

from __future__ import annotations

import pytest

from baton.processors.sweep_step import drop_unkeyed

pytestmark = pytest.mark.unit


def test_records_without_a_key_or_with_an_empty_one_are_taken_out() -> None:
    states: dict[object, object] = {None: b"{}", b"": b"{}", b"run-1": b"{}", "text": b"{}"}
    assert sorted(map(repr, drop_unkeyed(states))) == sorted(map(repr, [None, b"", "text"]))
    assert list(states) == [b"run-1"]


def test_a_store_of_runs_only_is_left_as_it_is() -> None:
    states = {b"a": 1, b"b": 2}
    assert drop_unkeyed(states) == []
    assert states == {b"a": 1, b"b": 2}
