"""The seventh session's memory changes (a request digest held as its 8 bytes, equal task
nodes shared, the shared containers in their own module) change no byte: the batch step
over engine_bench's mix, with redeliveries, requests reusing an id with other content, runs
held idle and read back from their records, publishes the same decisions, dead letters and
run-state records as the session's start (36e8750), run in a subprocess on that commit's own
packages. Held against 36e8750 until session 11, whose 50f1d5f changed on purpose the detail
of a report's ``reply_not_kept`` (these batches redeliver old reports): held against 50f1d5f
since, which gave 36e8750's bytes but for that detail (checked at cb3bfad, its parent's
engine, against 36e8750)."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from baton.schemas.events import HandoffCompleted, HandoffRequested
from bench.engine_bench import build_workload
from tests.commit_tree import commit_tree, run_pickled, without_read_positions

pytestmark = pytest.mark.unit

START = "36e8750"
#: the commit whose bytes are held (see the module docstring)
HELD = "50f1d5f"
REPO = Path(__file__).resolve().parents[2]
#: the batch step over pickled records (topic, partition, offset, key, value) in batches,
#: every fourth batch holding some runs idle and reading others back from their records;
#: writes what would be published, in order, as bytes
RUNNER = """
import pickle, sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.faust_adapter import RunStore
from baton.processors.state import RunState
from baton.schemas.policy import load_policy

batches = pickle.load(sys.stdin.buffer)
store, where = {}, {}
states = RunStore(SimpleNamespace(data=SimpleNamespace(data=store, _key_partition=where)), 8)
proc = BatchProcessor(
    load_policy(None), 8, states, worker="w-1", chain_key=b"k" * 32,
    approvals_topic="gov.approvals",
)
now = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
out = []
for n, batch in enumerate(batches):
    now += timedelta(seconds=7)
    res = proc.process([InputRecord(*r) for r in batch], now)
    out.append([
        # a re-emitted copy holds the input it answers since session 10 (the start's none)
        [(p, (replace(d, input=None) if d.reemitted else d).to_json()) for p, d in res.decisions],
        [(dl.key, dl.value) for dl in res.dead_letters],
        sorted((k, v) for k, v in res.encoded.items()),
    ])
    for key, (_p, state) in res.changed.items():
        if state is not None and n % 4 == 0:
            if key[-1] % 3 == 0:
                states.hold_encoded(key)
            elif key[-1] % 3 == 1:
                store[key] = RunState.from_bytes(state.to_bytes())
pickle.dump(out, sys.stdout.buffer)
"""

Batches = list[list[tuple[str, int, int, bytes, bytes]]]


@pytest.fixture(scope="module")
def start_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The start commit's packages as a ``baton`` package of their own, for PYTHONPATH."""
    return commit_tree(tmp_path_factory.mktemp("start"), HELD)


def _batches(seed: int) -> Batches:
    """engine_bench's mix for 300 runs in batches of 400, with about one event in ten sent
    again later (a redelivery), and one in forty sent again with its cost or task changed
    under the same request id (refused: the digest differs)."""
    from baton.streams.partitioner import partition_for

    rng = random.Random(seed)
    records: list[tuple[str, int, int, bytes, bytes]] = []
    offsets = [0] * 8
    again: list[tuple[bytes, bytes]] = []
    for run, event, _ in build_workload(300, seed=seed):
        key = run.encode()
        topic = "gov.approvals" if event.type.startswith("approval") else "gov.handoff.requests"
        raw = event.to_json()
        sends = [raw]
        if again and rng.random() < 0.1:
            sends.append(again.pop(rng.randrange(len(again)))[1])
        if isinstance(event, (HandoffRequested, HandoffCompleted)) and rng.random() < 0.25:
            doc = orjson.loads(raw)
            if rng.random() < 0.1:
                doc["cost_usd" if "cost_usd" in doc else "task_id"] = (
                    7.5 if "cost_usd" in doc else "forged-task"
                )
            again.append((key, orjson.dumps(doc)))
        for value in sends:
            run_key = orjson.loads(value)["run_id"].encode()
            partition = partition_for(run_key, 8)
            offsets[partition] += 1
            records.append((topic, partition, offsets[partition], run_key, value))
    return [records[i : i + 400] for i in range(0, len(records), 400)]


def _published(batches: Batches, pythonpath: str | None) -> list[object]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    got = run_pickled(RUNNER, batches, env, cwd=REPO, timeout=600)
    # (the trees compared with wrote no positions read)
    return without_read_positions(got) if pythonpath is None else got  # type: ignore[no-any-return]


@pytest.mark.parametrize("seed", [7, 11])
def test_the_batch_step_publishes_the_start_commits_bytes(start_tree: Path, seed: int) -> None:
    batches = _batches(seed)
    now = _published(batches, None)
    start = _published(batches, str(start_tree))
    assert len(now) == len(start) == len(batches)
    decisions = sum(len(b[0]) for b in now)
    refused = sum(b"request_id_reused" in v or b"digest" in v for b in now for _, v in b[0])
    assert decisions > 2000 and refused > 0  # the cases happened
    for i, (mine, theirs) in enumerate(zip(now, start, strict=True)):
        assert mine == theirs, f"batch {i} differs"
