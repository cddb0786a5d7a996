"""The eighth session's memory changes (a run's newest dedup keys and their digests as one flat
tuple, a task dict of one task held as a ``OneTask``) change no byte: the batch step over
runs whose task ids are their own (uuids canonical or not: capitals, braces, ``urn:uuid:``,
no hyphens), 60 KB and non-ASCII task ids, a run of thousands of tasks, redeliveries and
ids reused with other content, approvals (keys without a digest), runs held idle and read
back from their records, and forged changelog records (odd digests, a digest equal to a
key, repeated keys, task ids that are not text) publishes the same decisions, dead letters
and run-state records as the session's start (2e17856), run in a subprocess on that
commit's own packages."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from baton.streams.partitioner import partition_for
from tests.commit_tree import commit_tree, run_pickled, without_read_positions

pytestmark = pytest.mark.unit

START = "2e17856"
REPO = Path(__file__).resolve().parents[2]
REQUESTS, APPROVALS = "gov.handoff.requests", "gov.approvals"
#: the batch step over pickled batches: a batch is records (topic, partition, offset, key,
#: value), or ("@state", key, record): a changelog record restored as Faust's recovery
#: leaves it (bytes, decoded at the run's next event); every third batch holds some runs
#: idle and reads others back from their records; writes what would be published, in order
RUNNER = """
import pickle, re, sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.faust_adapter import RunStore
from baton.processors.state import RunState
from baton.schemas.policy_load import parse_policy

policy_text, batches = pickle.load(sys.stdin.buffer)
store, where = {}, {}
states = RunStore(SimpleNamespace(data=SimpleNamespace(data=store, _key_partition=where)), 8)
proc = BatchProcessor(
    parse_policy(policy_text), 8, states, worker="w-1", chain_key=b"k" * 32,
    approvals_topic="gov.approvals",
)
now = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
out, positions = [], {}
for n, batch in enumerate(batches):
    now += timedelta(seconds=7)
    records = []
    for r in batch:
        if r[0] == "@state":
            store[r[1]] = r[2]
        else:
            records.append(InputRecord(*r))
    res = proc.process(records, now)
    for key, (_p, state) in res.changed.items():  # the start wrote no positions read ("rd")
        # nor the record's seq (session 46)
        raw = res.encoded[key] if state is not None else b""
        found = re.findall(rb',"rd":\\[[^]]*\\]|,"sq":[0-9]+(?=}$)', raw)
        positions[key] = sum(map(len, found))
    out.append([
        # a re-emitted copy holds the input it answers since session 10 (the start's none)
        [(p, (replace(d, input=None) if d.reemitted else d).to_json()) for p, d in res.decisions],
        [(dl.key, dl.value) for dl in res.dead_letters],
        sorted((k, v) for k, v in res.encoded.items()),
        proc.state_bytes - sum(positions.values()),
    ])
    for key, (_p, state) in res.changed.items():
        if state is not None and n % 3 == 0:
            if key[-1] % 3 == 0:
                states.hold_encoded(key)
            elif key[-1] % 3 == 1:
                store[key] = RunState.from_bytes(state.to_bytes())
pickle.dump(out, sys.stdout.buffer)
"""

#: limits no run of the cases reaches, so thousands of tasks are allowed and kept
ROOMY = """
multi_agent:
  max_agents_per_run: 1000
  max_handoffs: 100000
  max_delegation_depth: 100000
  shared_max_usd: 1000000
  shared_max_tool_calls: 100000000
  require_approval_for: ["billing.refund.create"]
"""
SEED = """
multi_agent:
  max_agents_per_run: 4
  max_handoffs: 8
  require_approval_for: ["billing.refund.create"]
"""

Batch = list[tuple[object, ...]]


@pytest.fixture(scope="module")
def start_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The start commit's packages as a ``baton`` package of their own, for PYTHONPATH."""
    return commit_tree(tmp_path_factory.mktemp("start8"), START)


def _published(policy: str, batches: list[Batch], pythonpath: str | None) -> list[object]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    got = run_pickled(RUNNER, (policy, batches), env, cwd=REPO, timeout=600)
    # (the trees compared with wrote no positions read)
    return without_read_positions(got) if pythonpath is None else got  # type: ignore[no-any-return]


def _task_id(rng: random.Random, run: str, n: int) -> str:
    """A task id of the run's own, in one of the shapes orchestrators (or attackers) send."""
    u = uuid.UUID(int=rng.getrandbits(128))
    return rng.choice([
        str(u), str(u).upper(), f"{{{u}}}", f"urn:uuid:{u}", u.hex, str(u)[:-1] + "G",
        f"{u} ", f"{run}-task-{n}", "é" * 30 + str(n), "タスク" + str(n), "x" * 60_000,
        "t" + str(n % 3), "", "\u0000" + str(n), str(u).replace("-", "\u2010"),
    ])  # fmt: skip


def _events(rng: random.Random, run: str, steps: int) -> list[tuple[str, bytes]]:
    """A run's handoffs (each a task of its own, some under an earlier one) with their
    completions, a refund to approve, retries and ids reused with other content."""
    out: list[tuple[str, bytes]] = []
    tasks: list[str] = []
    for n in range(steps):
        task = _task_id(rng, run, n)
        parent = rng.choice([None, *tasks[-3:]]) if tasks else None
        rid = f"{run}-r{n}"
        action = "billing.refund.create" if rng.random() < 0.08 else "code.write"
        doc = {"type": "handoff_requested", "request_id": rid, "run_id": run, "task_id": task,
               "from_agent": rng.choice(["planner", "coder"]), "to_agent": f"agent-{n % 5}",
               "action": action, "event_time": "2026-11-30T08:00:00Z"}  # fmt: skip
        if parent is not None:
            doc["parent_task_id"] = parent
        if rng.random() < 0.3:
            doc["estimated_usd"] = 0.5
        out.append((REQUESTS, orjson.dumps(doc)))
        if rng.random() < 0.1:  # a retry, and the same id for another request
            out.append((REQUESTS, orjson.dumps(doc)))
            out.append((REQUESTS, orjson.dumps({**doc, "task_id": task + "-other"})))
        if action == "billing.refund.create":
            # (no request_id: a grant has none, and a key its type lacks is refused since
            # session 27, which the start read with the key dropped)
            grant = {"type": "approval_granted", "run_id": run,
                     "approval_id": f"ap-{run}-{n}", "approver": "boss",
                     "event_time": "2026-11-30T08:00:01Z"}  # fmt: skip
            out.append((APPROVALS, orjson.dumps(grant)))
        done = {"type": "handoff_completed", "request_id": rid, "run_id": run, "task_id": task,
                "agent": doc["to_agent"], "cost_usd": 0.42, "tool_calls": 3,
                "status": rng.choice(["ok", "ok", "error"]),
                "event_time": "2026-11-30T08:00:02Z"}  # fmt: skip
        out.append((REQUESTS, orjson.dumps(done)))
        if rng.random() < 0.05:  # a report reusing the id with another cost
            out.append((REQUESTS, orjson.dumps({**done, "cost_usd": 7.5})))
        tasks.append(task)
    return out


def _interleaved(rng: random.Random, runs: dict[str, list[tuple[str, bytes]]]) -> list[tuple]:
    """Every run's events in its order, runs interleaved at random, as keyed records."""
    cursors = dict.fromkeys(runs, 0)
    offsets = [0] * 8
    records = []
    while cursors:
        run = rng.choice(list(cursors))
        topic, value = runs[run][cursors[run]]
        cursors[run] += 1
        if cursors[run] == len(runs[run]):
            del cursors[run]
        key = run.encode()
        partition = partition_for(key, 8)
        offsets[partition] += 1
        records.append((topic, partition, offsets[partition], key, value))
    return records


def _own_task_batches(seed: int) -> list[Batch]:
    rng = random.Random(seed)
    runs = {f"run-{seed}-{i}": _events(rng, f"run-{seed}-{i}", rng.choice([1, 1, 2, 3, 7, 40]))
            for i in range(120)}  # fmt: skip
    records = _interleaved(rng, runs)
    return [records[i : i + 150] for i in range(0, len(records), 150)]


def test_runs_with_task_ids_of_their_own_give_the_start_commits_bytes(start_tree: Path) -> None:
    for seed in (3, 5):
        batches = _own_task_batches(seed)
        for policy in (ROOMY, SEED):
            now = _published(policy, batches, None)
            start = _published(policy, batches, str(start_tree))
            assert sum(len(b[0]) for b in now) > 1000  # the cases happened
            for i, (mine, theirs) in enumerate(zip(now, start, strict=True)):
                assert mine == theirs, f"seed {seed}, batch {i} differs"


def test_a_run_of_thousands_of_tasks_gives_the_start_commits_bytes(start_tree: Path) -> None:
    rng = random.Random(8)
    runs = {"run-many": _events(rng, "run-many", 2_500), "run-few": _events(rng, "run-few", 3)}
    records = _interleaved(rng, runs)
    batches = [records[i : i + 400] for i in range(0, len(records), 400)]
    now = _published(ROOMY, batches, None)
    assert now == _published(ROOMY, batches, str(start_tree))


def _forged_records(rng: random.Random) -> list[tuple[str, bytes]]:
    """Changelog records of runs a handoff made, then edited as a writer of the changelog
    could: odd digests, a digest equal to a key, repeated keys, task ids that are not text,
    one task under two runs, a key that is a list."""
    from baton.processors.engine import decide
    from baton.schemas.events import parse_event
    from baton.schemas.policy_load import parse_policy

    policy = parse_policy(SEED)
    at = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    edits = [
        lambda w: w["dg"].__setitem__(-1, None),
        lambda w: w["dg"].__setitem__(-1, "ABCDEF0123456789"),
        # (a digest that is not text, 7 or [1, 2], is refused as unreadable since session 16,
        # in both builds: tests/unit/test_state_wire_digests.py; no longer the start's bytes)
        lambda w: w["dg"].__setitem__(0, w["keys"][-1]),  # a digest that is a key
        lambda w: (w["keys"].append(w["keys"][0]), w["dg"].append(w["dg"][0])),
        lambda w: w["tasks"][0].__setitem__(0, 17),
        lambda w: w["tasks"][0].__setitem__(0, None),
        # (a parent that is not text, 1 or 1.0, is refused as unreadable since session 16, in
        # both builds: tests/unit/test_attacks_session16_rules.py; no longer the start's bytes)
        lambda w: w["tasks"].append(["x" * 60_000, "a", "b", None, 1]),
        lambda w: w["keys"].__setitem__(-1, [1]),  # unhashable: the run's events refused
        lambda w: w.__setitem__("mk", 31),
        lambda w: w.__setitem__("mk", 32),
        lambda w: None,
    ]
    out = []
    for i, edit in enumerate(edits):
        run = f"run-forged-{i}"
        state = None
        for n, task in enumerate(("shared-task", f"{run}-own")):
            doc = {"type": "handoff_requested", "request_id": f"{run}-r{n}", "run_id": run,
                   "task_id": task, "from_agent": "planner", "to_agent": "coder",
                   "event_time": "2026-11-30T08:00:00Z"}  # fmt: skip
            if rng.random() < 0.5 and n:
                doc["parent_task_id"] = "shared-task"
            state, _ = decide(state, parse_event(orjson.dumps(doc), run.encode()), policy, at)
        assert state is not None
        wire = orjson.loads(state.to_bytes())
        edit(wire)
        out.append((run, orjson.dumps(wire)))
    return out


def test_forged_changelog_records_give_the_start_commits_bytes(start_tree: Path) -> None:
    rng = random.Random(13)
    forged = _forged_records(rng)
    first: Batch = [("@state", run.encode(), raw) for run, raw in forged]
    offsets = [1000] * 8
    later: list[Batch] = [[], []]
    for run, _raw in forged:
        key = run.encode()
        partition = partition_for(key, 8)
        for n, (rid, task) in enumerate(
            [(f"{run}-r1", f"{run}-own"), (f"{run}-r0", "shared-task"), (f"{run}-r9", "new")]
        ):
            for doc in (
                {"type": "handoff_requested", "request_id": rid, "run_id": run, "task_id": task,
                 "from_agent": "planner", "to_agent": "coder",
                 "event_time": "2026-11-30T08:00:05Z"},
                {"type": "handoff_completed", "request_id": rid, "run_id": run, "task_id": task,
                 "agent": "coder", "cost_usd": 0.5, "tool_calls": 1, "status": "ok",
                 "event_time": "2026-11-30T08:00:06Z"},
            ):  # fmt: skip
                later[n % 2].append((REQUESTS, partition, 0, key, orjson.dumps(doc)))
    for batch in later:  # each partition's records in offset order, as Kafka hands them over
        for i, (topic, partition, _, key, value) in enumerate(batch):
            offsets[partition] += 1
            batch[i] = (topic, partition, offsets[partition], key, value)
    batches = [first, *later]
    now = _published(SEED, batches, None)
    assert now == _published(SEED, batches, str(start_tree))
    assert sum(len(b[0]) for b in now) > 20 and sum(len(b[1]) for b in now) > 0
