"""The chain link's content written from a decision's fields (session 18): the same bytes.

A compiled worker and `baton replay` hash ``decision_content(d, input)``, written in one pass
from the decision's native fields; ``baton audit verify`` and the interpreted build hash
``chain_content`` of the values (a decision's or an audit row's). Any difference would make
every chained row of one build fail the other's check, so they are held equal here on
decisions of every shape a field may take (times naive, aware, None; amounts of every form,
their text from the cache or not), and the short form of a float amount's text
(``_short_usd_text``) equal to the Decimal it replaces wherever it answers.
"""

from __future__ import annotations

import dataclasses
import random
import struct
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from baton.schemas import decision as decision_module
from baton.schemas.decision import (
    CHAIN_FIELDS,
    Decision,
    Fallback,
    Outcome,
    Phase,
    chain_content,
    chain_hash,
    chain_values,
    content_hash,
    decision_content,
    usd_text,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _amounts(rng: random.Random) -> list[float]:
    fixed = [
        0.0, -0.0, 1.0, 0.1, 0.25, 1.5, 2.675, 0.000001, 0.0000005, 0.0000015, 1e-7, 1e-5,
        123456.123456, 123456.1234565, 9_999_999_999.999999, 1e15, 1234567890123456.0,
        1e16, 1e22, 3.3333333333333335, -2.5, -0.000001, 0.1 + 0.2,
    ]  # fmt: skip
    drawn = [round(rng.uniform(0, 10_000), rng.randint(0, 9)) for _ in range(3000)]
    drawn += [rng.uniform(0, 1) for _ in range(500)]
    drawn += [float(rng.randint(0, 10**12)) / 10 ** rng.randint(0, 8) for _ in range(500)]
    # any bit pattern (finite): amounts far outside what a run spends
    while len(drawn) < 4500:
        (value,) = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))
        if value == value and abs(value) != float("inf") and abs(value) < 1e20:
            drawn.append(value)
    return fixed + drawn


AMOUNTS = _amounts(random.Random(18))


def test_the_short_text_of_an_amount_is_the_decimal_one_wherever_it_answers() -> None:
    answered = 0
    for value in AMOUNTS:
        short = decision_module._short_usd_text(value)
        if short:
            answered += 1
            assert short == usd_text(value), repr(value)
    assert answered > 2000  # the common amounts take the short way
    for odd in (float("inf"), float("-inf"), float("nan"), 1e-7, 1e16):
        assert decision_module._short_usd_text(odd) == ""


def _decision(rng: random.Random, i: int) -> Decision:
    zones = [UTC, None, timezone(timedelta(hours=5, minutes=30))]

    def when() -> datetime | None:
        zone = rng.choice(zones)
        moment = NOW + timedelta(microseconds=rng.randint(-(10**13), 10**13))
        return moment.replace(tzinfo=zone) if zone is not UTC else moment

    amounts = AMOUNTS
    d = Decision(
        decision_id=f"id{i}", request_id=f"r{i}", run_id="run \x1f\"x\"", tenant="t",
        phase=rng.choice(list(Phase)), outcome=rng.choice(list(Outcome)), reason="ok",
        owner=rng.choice([None, "a"]), from_agent="a", to_agent="b", task_id="t1",
        parent_task_id=rng.choice([None, "t0"]), action=rng.choice([None, "x.y"]),
        depth=rng.randint(0, 9), handoff_count=rng.randint(0, 99),
        spent_usd=rng.choice(amounts), tool_calls=rng.randint(0, 9),
        handoff_status=rng.choice([None, "done"]), fallback=rng.choice([None, *Fallback]),
        approval_id=rng.choice([None, "ap"]), approval_expires_at=rng.choice([None, when()]),
        approver=rng.choice([None, "me"]), policy_version="v1",
        event_time=rng.choice([None, when()]), decided_at=when() or NOW, worker="w",
        partition=rng.choice([None, 3]), offset=rng.choice([None, 77]),
        shadow_outcome=rng.choice([None, Outcome.STOP]), tool=rng.choice([None, "tool"]),
        reserved_usd=rng.choice(amounts), detail=rng.choice([None, "", "d\u00e9tail"]),
        request_digest=rng.choice([None, "0123456789abcdef"]),
        input=rng.choice([None, "", '{"type":"handoff_requested"}']),
    )  # fmt: skip
    return d


def test_the_content_written_from_the_fields_is_chain_content_of_the_values() -> None:
    rng = random.Random(7)
    for i in range(3000):
        d = _decision(rng, i)
        values = list(chain_values(d))
        assert decision_content(d, d.input) == chain_content(values), dataclasses.asdict(d)
        other = rng.choice([None, "", '{"type":"run_finished"}'])
        values[CHAIN_FIELDS.index("input")] = other
        assert decision_content(d, other) == chain_content(values)
        assert content_hash(b"k", "prev", decision_content(d, other)) == chain_hash(
            b"k", "prev", values
        )


def test_an_amount_the_cache_holds_or_not_gives_one_text() -> None:
    # the text of an amount first seen (the short way or Decimal's) is the one read later from
    # the cache, and an audit row's Decimal of it hashes alike (verify reads Decimals)
    rng = random.Random(3)
    for _ in range(200):
        decision_module._USD_TEXT.clear()
        d = _decision(rng, rng.randint(0, 10**6))
        first = decision_content(d, d.input)
        assert decision_content(d, d.input) == first
        row: list[Any] = list(chain_values(d))
        for name in ("spent_usd", "reserved_usd"):
            at = CHAIN_FIELDS.index(name)
            if row[at] > 0:  # (a negative amount never is one: -1e-7 is "-0.000000", as
                row[at] = Decimal(usd_text(row[at]))  # a float only; chain_content's own way)
        assert chain_content(row) == first
