"""The control topic's records under hostile values give the compiled build's answers the
interpreted build gives: kill switches and policy updates (numbers at and past a key's bounds,
a bool or text for a number, YAML that is no policy, fields of the wrong type) applied as the
control follower applies them (``apply_control_record``), then run events decided under what
they put in force. Run against the compiled build by tests/integration/test_compiled_core.py
(CORE_TESTS), the interpreted side a subprocess as in test_compiled_worker_batch.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import orjson
import yaml

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.compiled import compiled_modules
from baton.processors.control_apply import ControlInForce, apply_control_record
from baton.processors.engine import NO_KILLS
from baton.schemas.policy import load_policy
from tests.commit_tree import REPO
from tests.unit import test_compiled_worker_batch as hostile

NUMBERS = (1, 2, 2.0, 1.5, 0, -1, 1e308, True, 2**63, 10**20, 1_000_000, "3", None, [], {})
KEYS = ("max_handoffs", "shared_max_usd", "max_steps", "max_run_seconds", "max_bounces")
NOT_POLICIES = ("", "[", "multi_agent: 3", "x" * 60_000, "a: &a [*a]")


def _control(rng: random.Random, seed: int, policy_yaml: str) -> bytes:
    kind = rng.choice(["kill_switch", "kill_switch_released", "policy_updated"])
    d: dict[str, Any]
    if kind == "policy_updated":
        doc = yaml.safe_load(policy_yaml)
        doc["multi_agent"][rng.choice(KEYS)] = rng.choice(NUMBERS)
        text = yaml.safe_dump(doc) if rng.random() < 0.7 else rng.choice(NOT_POLICIES)
        d = dict(type=kind, policy_yaml=text, operator="op", event_time=hostile.T)
    else:
        d = dict(
            type=kind, scope=rng.choice(["run", "tenant", "global"]), tenant="default",
            run_id=f"run_{seed}_{rng.randint(0, 1)}", operator="op", reason="r",
            event_time=hostile.T,
        )  # fmt: skip
    if rng.random() < 0.5:
        d = hostile._mutate(rng, d)
        for _ in range(rng.randint(0, 2)):
            field = rng.choice(["scope", "run_id", "tenant", "operator", "reason", "signature"])
            d[field] = hostile._hostile(rng)
    return hostile._encode(rng, d)


def _case(seed: int) -> list[Any]:
    rng = random.Random(seed)
    policy_yaml = (REPO / "policy.example.yaml").read_text()
    in_force = ControlInForce(NO_KILLS, load_policy(None), None, "default")
    out: list[Any] = []
    for i in range(rng.randint(1, 4)):
        rec = InputRecord("gov.control", 0, i, None, _control(rng, seed, policy_yaml))
        applied = apply_control_record(in_force, rec, "w", hostile.NOW + timedelta(seconds=i))
        in_force, d, letter = applied.in_force, applied.decision, applied.dead_letter
        out.append([
            None if d is None else [d.outcome, d.reason, d.decision_id, d.detail, d.chain_hash],
            None if letter is None else [letter.kind, orjson.loads(letter.value)["error"][:300]],
            applied.policy_changed, in_force.policy.version, repr(in_force.kills),
        ])  # fmt: skip
    kills = in_force.kills
    proc = BatchProcessor(in_force.policy, 1, hostile._Store(), worker="w", kills=lambda: kills)
    records = []
    for offset in range(6):
        run = f"run_{seed}_{rng.randint(0, 1)}"
        event = hostile._event(rng, rng.choice(hostile.TYPES[:2]), run, offset + 1)
        records.append(
            InputRecord("gov.handoff.requests", 0, offset, run.encode(), orjson.dumps(event))
        )
    o = proc.process(records, hostile.NOW + timedelta(seconds=10))
    out.append([[d.outcome, d.reason, d.decision_id, d.chain_hash] for _, d in o.decisions])
    out.append([dl.kind for dl in o.dead_letters])
    return out


def _cases(seeds: range, forge: bool = False) -> list[Any]:
    return json.loads(json.dumps([_case(s) for s in seeds], default=str))


SEEDS = range(0, 150)


def test_hostile_control_records_are_applied_alike() -> None:
    mine = _cases(SEEDS)
    steps = [step for r in mine for step in r[:-2]]
    # the records reach every step: kills, releases, policies applied and refused
    assert {s[0][1] for s in steps if s[0]} >= {
        "kill_switch",
        "kill_switch_released",
        "policy_updated",
    }
    assert {s[1][0] for s in steps if s[1]} >= {"policy", "schema", "not_json"}
    if not compiled_modules():
        return  # the interpreted build: its side is this one (the compiled run compares)
    theirs = hostile._interpreted(SEEDS, False, __name__)
    for seed, a, b in zip(SEEDS, mine, theirs, strict=True):
        assert a == b, f"seed {seed}: compiled {str(a)[:1500]}\ninterpreted {str(b)[:1500]}"
