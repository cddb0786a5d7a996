"""The commands count in English: "1 run", "2 runs" (H1, session 27: "audit verify: 1 runs")."""

from __future__ import annotations

import pytest

from baton.cli.wording import counted

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("n", "noun", "plural", "commas", "said"),
    [
        (1, "run", None, True, "1 run"),
        (0, "run", None, True, "0 runs"),
        (2, "run", None, True, "2 runs"),
        (12_000, "decision", None, True, "12,000 decisions"),
        (12_000, "decision", None, False, "12000 decisions"),
        (1, "policy", "policies", True, "1 policy"),
        (3, "policy", "policies", True, "3 policies"),
    ],
)
def test_counted(n: int, noun: str, plural: str | None, commas: bool, said: str) -> None:
    assert counted(n, noun, plural, commas=commas) == said
