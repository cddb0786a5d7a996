"""The per-run decision hash chain: linked by the batch step, verified from audit rows."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.state import RunState
from baton.schemas.decision import CHAIN_FIELDS, Decision, chain_values
from baton.schemas.policy import load_policy
from baton.sinks.chain_verify import verify_chains
from baton.streams.partitioner import partition_for
from tests.helpers import handoff

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _records(run: str, n: int) -> list[InputRecord]:
    out = []
    for i in range(n):
        ev = handoff(run, i, f"t{i}", event_time=NOW)
        out.append(InputRecord("r", partition_for(run.encode(), 1), i, run.encode(), ev.to_json()))
    return out


def _decide(runs: list[str], n: int, key: bytes = b"") -> tuple[list[Decision], dict]:
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(load_policy(None), 1, states, worker="w", chain_key=key)
    out = proc.process([r for run in runs for r in _records(run, n)], NOW)
    return [d for _, d in out.decisions], states


def _row(d: Decision) -> list[Any]:
    """A decision as `baton audit verify` reads it back: money as Decimal, as ClickHouse gives."""
    values = list(chain_values(d))
    for i, name in enumerate(CHAIN_FIELDS):
        if name in ("spent_usd", "reserved_usd"):
            values[i] = Decimal(f"{values[i]:.6f}")
        elif name == "event_time" and values[i] is None:
            values[i] = d.decided_at
    return [d.run_id, d.decision_id, d.chain_prev, d.chain_hash, *values]


def test_each_decision_names_the_one_before_it_and_the_state_keeps_the_head() -> None:
    decisions, states = _decide(["run_a"], 5)
    assert decisions[0].chain_prev == ""
    for before, after in pairwise(decisions):
        assert after.chain_prev == before.chain_hash
    assert states[b"run_a"].chain_head == decisions[-1].chain_hash
    restored = RunState.from_bytes(states[b"run_a"].to_bytes())
    assert restored.chain_head == decisions[-1].chain_hash
    assert restored.replies("h:run_a-h4")[0].chain_hash == decisions[-1].chain_hash


def test_a_redelivery_re_emits_the_same_links() -> None:
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(load_policy(None), 1, states, worker="w")
    first = [d for _, d in proc.process(_records("run_a", 3), NOW).decisions]
    again = [d for _, d in proc.process(_records("run_a", 3), NOW).decisions]
    assert [d.chain_hash for d in again] == [d.chain_hash for d in first]
    assert states[b"run_a"].chain_head == first[-1].chain_hash


def test_intact_chains_verify() -> None:
    decisions, _ = _decide(["run_a", "run_b"], 4)
    verdicts = verify_chains([_row(d) for d in decisions])
    assert [(v.run_id, v.rows, v.ok) for v in verdicts] == [("run_a", 4, True), ("run_b", 4, True)]


def test_a_deleted_an_altered_and_a_forged_row_are_each_named() -> None:
    decisions, _ = _decide(["run_a", "run_b", "run_c"], 4)
    rows = [_row(d) for d in decisions]
    a = [r for r in rows if r[0] == "run_a"]
    b = [r for r in rows if r[0] == "run_b"]
    c = [r for r in rows if r[0] == "run_c"]
    del a[1]  # deleted
    spent = 4 + CHAIN_FIELDS.index("outcome")
    b[2][spent] = "allow" if b[2][spent] != "allow" else "stop"  # altered
    forged = list(c[1])
    forged[1] = "forged-id"
    c.append(forged)  # inserted: a second row after the same predecessor
    verdicts = {v.run_id: v for v in verify_chains(a + b + c)}
    assert any(p.startswith("missing") for p in verdicts["run_a"].problems)
    assert any(p.startswith("altered") for p in verdicts["run_b"].problems)
    assert any(p.startswith("forked") for p in verdicts["run_c"].problems)


def test_with_a_key_a_correctly_linked_forgery_without_the_key_is_caught() -> None:
    decisions, _ = _decide(["run_a"], 3, key=b"k" * 32)
    rows = [_row(d) for d in decisions]
    assert verify_chains(rows, b"k" * 32)[0].ok
    assert not verify_chains(rows, b"")[0].ok  # the unkeyed hash is not the chain's


def test_a_command_record_copied_under_another_phase_or_id_is_named() -> None:
    """H2, session 36: a kill's record copied under phase pre_handoff (same id) replaced the
    kill in FINAL; `baton audit verify` said nothing (the variants table has no phase)."""
    from dataclasses import replace

    from baton.processors.engine import NO_KILLS, apply_control, apply_policy_update
    from baton.processors.recorded import policy_in_force
    from baton.schemas.decision import Phase, Reason
    from baton.schemas.events import KillSwitch, PolicyUpdated

    policy = load_policy(None)
    _, kill = apply_control(
        NO_KILLS, KillSwitch(scope="run", run_id="r1", operator="o", event_time=NOW), policy, NOW
    )
    update = PolicyUpdated(policy_yaml="multi_agent: {}\n", operator="o", event_time=NOW)
    published = apply_policy_update(policy, None, update, NOW).record
    assert published is not None
    made = [kill, published, policy_in_force(policy, NOW, "w")]
    assert all(v.ok for v in verify_chains([_row(d) for d in made]))
    for forged in (
        replace(kill, phase=Phase.PRE_HANDOFF),
        replace(kill, request_id="x"),
        replace(published, run_id="r1"),
        replace(kill, reason=Reason.POLICY_IN_FORCE),
    ):
        (verdict,) = verify_chains([_row(forged)])
        assert any(p.startswith("forged control record: ") for p in verdict.problems), forged
