"""Attacks on `baton replay --from-kafka --jobs N` (cli/replay_partitions.py), session 21: what a
user, a supervisor or a writer of gov.decisions can do to the partition-parallel read that one
process (--jobs 1) would answer otherwise, or would answer sooner. Each scenario runs
`baton replay` as the whole process (its pool forks only a one-thread process) over a
stand-in gov.decisions (tests/unit/test_replay_decisions_support.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from baton.schemas.policy import DEFAULT_POLICY_YAML

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
#: `baton replay --from-kafka --jobs argv[2]` over four partitions (argv[1]: the scenario), the
#: one read last slow in a pool process (a long partition, 1 s a record: 60 s to read whole)
COMMAND = """
import os, sys, time
import confluent_kafka, pytest
from baton.cli import replay_decisions as module
from baton.streams.partitioner import partition_for
from tests.unit.test_engine_support import handoff, policy_with
from tests.unit.test_replay_decisions_support import DecisionsTopic, Worker, stand_in_kafka

name, jobs, policy = sys.argv[1:4]
P = 4
STAR = partition_for(b"*", P)
SILENT, *_, SLOW = [p for p in range(P) if p != STAR]  # (read second and last by one process)
topic = DecisionsTopic(P)
worker = Worker(topic, policy_with(max_handoffs=20))
runs = [f"r{i}" for i in range(40)]
runs += [r for r in (f"s{i}" for i in range(2000)) if partition_for(r.encode(), P) == SLOW][:20]
for n in range(3):
    for r in runs:
        worker.decide(handoff(f"{r}-h{n}", f"t{n}", "p", "q", run_id=r), 10 + n)
stand_in_kafka(pytest.MonkeyPatch(), topic)
Base = confluent_kafka.Consumer
MAIN = os.getpid()

class Hostile(Base):
    def poll(self, timeout):
        p = self._at[0] if self._at else None
        if p == SILENT and name == "memory" and self._at[1] > 3:
            raise MemoryError()  # (malloc failed: a ulimit -v, a container's limit)
        if p == SILENT and name == "silent":
            time.sleep(timeout)
            return None
        if p == SLOW and os.getpid() != MAIN:
            time.sleep(1.0)
        return super().poll(timeout)

confluent_kafka.Consumer = Hostile
module._PARALLEL_ROWS = 0
os.environ["BATON_PARTITIONS"] = str(P)
sys.argv = ["baton", "replay", "--from-kafka", "--bootstrap", "127.0.0.1:1", "--policy", policy,
            "--jobs", jobs]
from baton.cli.main import main
main()
"""


def _start(tmp_path: Path, name: str, jobs: int) -> tuple[subprocess.Popen[str], Path]:
    """The command started in a session of its own (its pool in its process group), and its
    timeline (``replay_pool.mark``'s lines: which process read which partition when)."""
    doc = yaml.safe_load(DEFAULT_POLICY_YAML)
    doc["multi_agent"]["max_handoffs"] = 2
    policy = tmp_path / "strict.yaml"
    policy.write_text(yaml.safe_dump(doc))
    timeline = tmp_path / "timeline"
    env = {
        **os.environ,
        "BATON_REPLAY_TIMELINE": str(timeline),
        "BATON_AUDIT_CHAIN_KEY": "decisions-chain-key",
        "BATON_CONNECT_TIMEOUT_S": "0.5",
    }
    command = [sys.executable, "-c", COMMAND, name, str(jobs), str(policy)]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    return process, timeline


def _group(pgid: int) -> list[int]:
    """The processes left in process group ``pgid``."""
    left = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    left.append(int(entry))
            except ProcessLookupError:
                continue
    return left


def _ended(process: subprocess.Popen[str], within_s: float) -> tuple[int | None, str, float]:
    """(exit code, stderr, seconds) of ``process`` given ``within_s``; its group killed after
    (None: it had not ended)."""
    began = time.monotonic()
    try:
        _, err = process.communicate(timeout=within_s)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        code = None
    finally:
        took = time.monotonic() - began
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            _, err = process.communicate()
    return code, err, took


def _reading(timeline: Path, within_s: float = 30.0) -> None:
    """Wait until a pool process has begun a partition."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if timeline.exists() and " partition " in timeline.read_text():
            time.sleep(0.3)
            return
        time.sleep(0.05)
    raise AssertionError("no partition read within 30 s")


@pytest.mark.parametrize("to", ["reader", "group"])
def test_ctrl_c_ends_a_jobs_replay_at_once_leaving_no_process_and_no_traceback(
    tmp_path: Path, to: str
) -> None:
    """SIGINT to the reading process (a supervisor, `timeout -s INT`) or to its group (Ctrl-C
    on a terminal) mid-read: exit 130 within seconds, not after every pool process finished
    the partition it reads (60 s here: minutes for a long partition), no pool process left,
    and no pool process's traceback on stderr."""
    process, timeline = _start(tmp_path, "slow", 2)
    _reading(timeline)
    if to == "reader":
        os.kill(process.pid, signal.SIGINT)
    else:
        os.killpg(process.pid, signal.SIGINT)
    code, err, took = _ended(process, 15.0)  # (h1-kpar: 60 s, the slow partition read whole)
    assert code == 130, (code, took, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    time.sleep(0.3)
    assert _group(process.pid) == []


def test_a_partition_failing_ends_a_jobs_replay_as_soon_as_one_process_would(
    tmp_path: Path,
) -> None:
    """The broker silent on the second partition read: one process stops there (exit 4,
    within the connect timeout); --jobs 2 must not first wait for the pool process reading
    a long partition (60 s) whose answer is no longer needed."""
    process, _ = _start(tmp_path, "silent", 2)
    code, err, took = _ended(process, 20.0)  # (its start included; h1-kpar: over 60 s)
    assert code == 4 and "no answer from Kafka" in err, (code, took, err[-2000:])
    time.sleep(0.3)
    assert _group(process.pid) == []


#: --jobs 1 and 2; the policy records' partition as the reading process reads it (first, for
#: the policies), or (content "remade", or in a pool process) as the topic was made again (a
#: broker restarted without its records, written again): its runs' third handoffs (stopped by
#: the new policy: exit 1) gone, a writer's junk where the policy record was (exit 7)
REMADE = """
import json, os, sys
import confluent_kafka, pytest
from baton.cli import replay_decisions as module
from baton.schemas.errors import BatonError
from baton.schemas.settings import Settings
from baton.sinks.replay_source import ReplayScope
from baton.streams.partitioner import partition_for
from tests.unit.test_engine_support import handoff, policy_with
from tests.unit.test_replay_decisions_support import KEY, DecisionsTopic, Worker, stand_in_kafka
from tests.unit.test_replay_kafka_read_order import _exit_code

P = 4
STAR = partition_for(b"*", P)
BASELINE = policy_with(max_handoffs=20)
topic, again = DecisionsTopic(P), DecisionsTopic(P)
worker, rewriter = Worker(topic, BASELINE), Worker(again, BASELINE)
for n in range(3):
    for i in range(60):
        run = f"r{i}"
        if n < 2 or partition_for(run.encode(), P) == STAR:
            worker.decide(handoff(f"{run}-h{n}", f"t{n}", "p", "q", run_id=run), 10 + n)
        if n < 2 and partition_for(run.encode(), P) == STAR:
            rewriter.decide(handoff(f"{run}-h{n}", f"t{n}", "p", "q", run_id=run), 10 + n)
remade = [(b"*", b"junk"), *again.records[STAR][1:]]
remade += [(None, b"junk")] * (len(topic.records[STAR]) - len(remade))
MAIN = os.getpid()
stand_in_kafka(pytest.MonkeyPatch(), topic)
Base = confluent_kafka.Consumer
original = topic.records[STAR]
content = "old"

class Remade(Base):
    def assign(self, parts):
        if os.getpid() != MAIN or content == "remade":
            topic.records[STAR] = remade
        super().assign(parts)

confluent_kafka.Consumer = Remade
module._PARALLEL_ROWS = 0
settings = Settings(bootstrap="127.0.0.1:1", partitions=P, connect_timeout_s=0.3)
answers = []
for jobs, content in [(1, "old"), (1, "remade"), (2, "old")]:
    topic.records[STAR] = original
    try:
        report, *_ = module.replay_decisions(
            settings, ReplayScope(), policy_with(max_handoffs=2), KEY, jobs, 3600.0
        )
        answers.append(["exit", _exit_code(report)])
    except BatonError as exc:
        answers.append([type(exc).__name__, exc.exit_code, str(exc)])
print(json.dumps(answers))
"""


def _remade() -> list:
    """What --jobs 1 answers over the old content and the new, and --jobs 2 over the old."""
    done = subprocess.run(
        [sys.executable, "-c", REMADE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_the_policy_partition_made_again_between_its_two_reads_fails_the_replay() -> None:
    """--jobs reads the policy records' partition twice: the reading process for the policies,
    a pool process for its runs. Made again in between, its runs were replayed under a policy
    record the partition they were read from no longer holds: one process reads either
    content whole (the old one: exit 1; the new one, no policy record: 7); --jobs 2 answered
    0 over the two mixed. The partition read twice must say the same policy records."""
    old, remade, two = _remade()
    assert old == ["exit", 1] and remade == ["exit", 7]
    kind, code, message = two  # (h1-kpar: ["exit", 0], nothing changes)
    assert (kind, code) == ("ReplayFailed", 7), message
    assert "policy records" in message and "read again" in message, message


@pytest.mark.parametrize("jobs", [1, 2])
def test_memory_running_out_mid_replay_is_no_answer(tmp_path: Path, jobs: int) -> None:
    """A MemoryError while a partition is read (malloc refused: `ulimit -v`, a container's
    address-space limit; --jobs N holds N partitions at once) ended `baton replay` with a
    traceback and exit 1, the gate's "the policy changes decisions"; the replay gave no
    answer: exit 7, one line, with one process or several."""
    process, _ = _start(tmp_path, "memory", jobs)
    code, err, _ = _ended(process, 30.0)
    assert code == 7, (code, err[-2000:])
    assert "Traceback" not in err and "out of memory" in err, err[-2000:]


#: gov.decisions of 8,000 partitions (a few hold runs): the reading process's CPU for --jobs 2
MANY = """
import json, time
import pytest
from baton.cli import replay_decisions as module
from baton.schemas.settings import Settings
from baton.sinks.replay_source import ReplayScope
from tests.unit.test_engine_support import handoff, policy_with
from tests.unit.test_replay_decisions_support import KEY, DecisionsTopic, Worker, stand_in_kafka
from tests.unit.test_replay_kafka_read_order import _exit_code

P = 8000
topic = DecisionsTopic(P)
worker = Worker(topic, policy_with(max_handoffs=20))
for n in range(3):
    for i in range(40):
        worker.decide(handoff(f"r{i}-h{n}", f"t{n}", "p", "q", run_id=f"r{i}"), 10 + n)
stand_in_kafka(pytest.MonkeyPatch(), topic)
module._PARALLEL_ROWS = 0
settings = Settings(bootstrap="127.0.0.1:1", partitions=P, connect_timeout_s=0.3)
answers = []
for jobs in (1, 2):
    began = time.process_time()
    report, *_ = module.replay_decisions(
        settings, ReplayScope(), policy_with(max_handoffs=2), KEY, jobs, 3600.0
    )
    answers.append([_exit_code(report), len(report.runs), time.process_time() - began])
print(json.dumps(answers))
"""


@pytest.mark.soak  # a CPU bound: 1.5-1.7 s quiet, 4.4 s inside the full suite on 2 cores (CI)
def test_a_topic_of_thousands_of_partitions_costs_the_reading_process_no_square() -> None:
    """The reading process waited on every partition's future not done yet, once a
    partition done (concurrent.futures.wait): O(partitions) each, O(partitions²) in all. 8,000
    partitions: 7-10 s of its CPU (30,000: 69 s, 2 minutes of wall time) where one process
    read them all in 0.2 s; now each future hands itself over once (1.5-1.7 s)."""
    done = subprocess.run(
        [sys.executable, "-c", MANY], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (one_code, one_runs, _), (code, runs, cpu) = json.loads(done.stdout)
    assert (code, runs) == (one_code, one_runs) == (1, 40)
    assert cpu < 4.0, cpu
