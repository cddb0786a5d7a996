"""`baton replay --from-kafka --jobs N` reads, folds and replays partitions in N processes
(cli/replay_partitions.py) and answers what one process answers: the same report, dead
lines, broken runs and exit for the same hostile topic, and the same error where a
partition cannot be read whole (the first in one process's order). Each scenario runs in a
process of its own, as `baton replay` does: its pool forks only a process running one
thread (a pytest-xdist worker runs two), and inherits the stand-in Consumer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from baton.cli.replay_partition import TopicTally
from baton.cli.replay_partitions import PartitionDone, merged
from baton.processors.replay import ReplayReport
from baton.processors.replay_report import RunOutcome
from baton.schemas.errors import BrokerUnavailable, ReplayFailed
from baton.streams.partitioner import partition_for

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
#: one scenario (argv[1]) replayed with --jobs 1, 2 and 8; prints what each answered
#: every scenario (argv[2:]) replayed with --jobs 1, 2 and 8, in one process (a fork each);
#: prints what each answered, and the pids that read a partition (from the timeline)
SCENARIOS = """
import json, os, signal, sys

os.environ["BATON_REPLAY_TIMELINE"] = sys.argv[1]
import confluent_kafka
import pytest
from baton.cli import replay_decisions as module
from baton.processors.recorded import policy_in_force
from baton.schemas.errors import BatonError
from baton.schemas.settings import Settings
from baton.sinks.replay_source import ReplayScope
from baton.streams.partitioner import partition_for
from tests.unit.test_engine_support import at, handoff, policy_with
from tests.unit.test_replay_decisions_support import (
    KEY, DecisionsTopic, Worker, _Message, json_with, stand_in_kafka,
)
from tests.unit.test_replay_kafka_read_order import _exit_code

MAIN = os.getpid()
P = 4
STAR = partition_for(b"*", P)
OTHER = (STAR + 1) % P
FIRST, *_, LAST = [p for p in range(P) if p != STAR]
BASELINE, STRICTER = policy_with(max_handoffs=20), policy_with(max_handoffs=2)
module._PARALLEL_ROWS = 0  # (a pool for a few hundred decisions)
settings = Settings(bootstrap="127.0.0.1:1", partitions=P, connect_timeout_s=0.3)
SCOPES = {"all": ReplayScope(), "r1": ReplayScope(run_id="r1"), "since": ReplayScope(since=at(13))}


def topic_of(name):
    topic = DecisionsTopic(P)
    worker = Worker(topic, BASELINE)
    runs = [f"r{i}" for i in range(40)]
    if name == "huge":  # one partition holds every run, the others are empty
        runs = [r for r in (f"h{i}" for i in range(400)) if partition_for(r.encode(), P) == 2]
    for n in range(4):
        for r in runs[:40]:
            worker.decide(handoff(f"{r}-h{n}", f"t{n}", "p", "q", run_id=r), 10 + n)
    last = lambda run: [d for d in worker.published if d.run_id == run and not d.reemitted][-1]
    part = lambda run: partition_for(run.encode(), P)
    if name == "hostile":
        # a writer's stop under r0's last decision id: broken on its own partition
        topic.append(b"r0", json_with(last("r0"), outcome="stop", reason="kill_switch"))
        # r1's decision on another partition (the run is replayed on its own, then broken)
        topic.append(b"r1", json_with(last("r1"), decision_id="z"), partition=(part("r1") + 1) % P)
        for p in range(3):  # dead lines on three partitions, more than the 50 kept
            for i in range(30):
                topic.append(None, b"junk %d %d" % (p, i), partition=p)
        # a re-emitted copy saying what no record under its id says
        copy = json_with(last("r2"), outcome="stop", reason="kill_switch", reemitted=True)
        topic.append(b"r2", copy)
        # a policy record where no worker writes one
        wrong = policy_in_force(STRICTER, at(5), "w").to_json()
        topic.append(b"*", wrong, partition=OTHER)
        # a trimmed partition (runs cut at their start: partial) and a forged start on it
        cut = FIRST
        topic.trim(cut, 5)
        first = next(d for d in worker.published if part(d.run_id) == cut)
        rz = next(r for r in (f"z{i}" for i in range(99)) if part(r) == cut)
        forged = json_with(first, run_id=rz, decision_id="z1", chain_prev="ab" * 16)
        topic.append(rz.encode(), forged)
    return topic


answers = {}
for name in sys.argv[2:]:
    patch = pytest.MonkeyPatch()
    stand_in_kafka(patch, topic_of(name))
    #: partition -> what goes wrong reading it
    broken = {
        "lost": {FIRST: "lost", LAST: "lost"},
        "silent": {OTHER: "silent"},
        "open": {OTHER: "open"},
        "kill": {OTHER: "kill"},
    }.get(name, {})

    class Hostile(confluent_kafka.Consumer):
        def get_watermark_offsets(self, tp, timeout=0, cached=False):
            low, high = super().get_watermark_offsets(tp, timeout, cached)
            return low, high + 3 if not cached and broken.get(tp.partition) == "lost" else high

        def poll(self, timeout):
            p = self._at[0] if self._at else None
            if broken.get(p) == "silent":
                return None
            if broken.get(p) == "kill" and os.getpid() != MAIN and self._at[1] >= 2:
                os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer ends a pool process
            if broken.get(p) == "open" and self._at[1] >= 2:
                return _Message(p, 2, None, None, eof=True)  # the LSO: a transaction open at 2
            return super().poll(timeout)

    patch.setattr(confluent_kafka, "Consumer", Hostile)
    for jobs in (1, 2, 8):
        for label, scope in SCOPES.items():
            if label != "all" and name != "hostile":
                continue
            try:
                report, policies, refused, _ = module.replay_decisions(
                    settings, scope, STRICTER, KEY, jobs, 3600.0
                )
            except BatonError as exc:
                answers[f"{name} {jobs} {label}"] = [type(exc).__name__, exc.exit_code, str(exc)]
                continue
            answers[f"{name} {jobs} {label}"] = [
                [(r.run_id, r.decisions, r.changed, sorted(r.transitions.items()))
                 for r in report.runs],
                list(report.partial.items()), report.broken, sorted(report.transitions.items()),
                sorted(policies), refused, _exit_code(report),
            ]
    patch.undo()
print(json.dumps(answers))
"""
NAMES = ("hostile", "huge", "lost", "silent", "open", "kill")


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """What each scenario answered with each --jobs (``"name jobs scope"``), checked to have
    had partitions read by pool processes (the timeline's lines)."""
    timeline = tmp_path_factory.mktemp("jobs") / "timeline"
    done = subprocess.run(
        [sys.executable, "-c", SCENARIOS, str(timeline), *NAMES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split() for line in timeline.read_text().splitlines()]
    readers = {line[0] for line in lines if line[-1] == "read" and line[-3] == "partition"}
    assert len(readers) >= 3, readers  # (partitions were read in the pools' processes)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_a_pool_process_killed_mid_partition_fails_the_replay_named(
    answers: dict[str, list],
) -> None:
    """kill -9 (the OOM killer) of the process reading a partition: exit 7, named, at once;
    never an answer without that partition, never a wait for it (one process: exit 1)."""
    assert answers["kill 1 all"][-1] == 1
    for jobs in (2, 8):
        kind, code, message = answers[f"kill {jobs} all"]
        assert (kind, code) == ("ReplayFailed", 7)
        assert "a `--jobs` replay process failed" in message and "terminated abruptly" in message


@pytest.mark.parametrize("name", NAMES[:-1])
def test_every_jobs_answers_what_one_process_answers(answers: dict[str, list], name: str) -> None:
    """The same report, lines and exit, or the same error, with --jobs 1, 2 (4 partitions:
    more than processes) and 8 (more processes than partitions)."""
    for label in ("all", "r1", "since") if name == "hostile" else ("all",):
        one = answers[f"{name} 1 {label}"]
        assert answers[f"{name} 2 {label}"] == one, label
        assert answers[f"{name} 8 {label}"] == one, label
    one = answers[f"{name} 1 all"]
    if name == "hostile":
        runs, _, broken, _, _, refused, code = one
        assert code == 7 and {"r0", "r1", "r2"} <= set(broken)
        assert "r1" not in {r[0] for r in runs}  # (replayed on its partition, then broken)
        assert any(line.endswith("more records of gov.decisions") for line in refused)
        assert any(
            "partial" not in line and "policy_in_force record not" in line for line in refused
        )
    elif name == "huge":
        assert one[-1] == 1 and len(one[0]) == 40
    elif name == "lost":  # two partitions lost records: the one read first is named
        first = min(p for p in range(4) if p != partition_for(b"*", 4))
        assert one[:2] == ["ReplayFailed", 7] and f"[{first}] ends at offset" in one[2]
    elif name == "silent":
        assert one[:2] == ["BrokerUnavailable", 4] and "reading" in one[2]
    else:
        assert one[:2] == ["ReplayFailed", 7] and "transaction open" in one[2]


def _done(p: int, runs: list[str], dead: list[str], broken: dict[str, str]) -> PartitionDone:
    report = ReplayReport()
    for run in runs:
        report.runs.append(RunOutcome(run, decisions=2))
    return PartitionDone(p, report, broken, dead, len(dead), {(runs[0], "link"): None})


def test_results_merge_in_the_order_one_process_reads_them() -> None:
    """Results that came back in any order merge as one process read them: the policy
    records' partition first, then by number; the first reason a run was named broken, the
    first dead lines kept."""
    order = [2, 0, 1, 3]
    results: dict[int, PartitionDone | BaseException] = {
        3: _done(3, ["d"], ["dead 3"], {"x": "three"}),
        1: _done(1, ["c"], [], {"x": "one"}),
        0: _done(0, ["b"], ["dead 0"], {}),
        2: _done(2, ["a"], ["dead 2"], {"y": "two"}),
    }
    tally, verdicts = TopicTally(), {}
    report = merged("gov.decisions", order, results, tally, verdicts)
    assert [r.run_id for r in report.runs] == ["a", "b", "c", "d"]
    assert tally.broken == {"y": "two", "x": "one"} and tally.dead == ["dead 2", "dead 0", "dead 3"]
    assert set(verdicts) == {(run, "link") for run in "abcd"}


def test_the_first_failure_in_reading_order_is_raised_and_a_missing_partition_fails() -> None:
    order = [2, 0, 1, 3]
    late, early = ReplayFailed("partition 3 lost"), BrokerUnavailable("partition 1 silent")
    results: dict[int, PartitionDone | BaseException] = {
        2: _done(2, ["a"], [], {}),
        0: _done(0, ["b"], [], {}),
        3: late,
        1: early,
    }
    with pytest.raises(BrokerUnavailable, match="partition 1 silent"):
        merged("gov.decisions", order, results, TopicTally(), {})
    del results[1]  # neither replayed nor failed: never an answer without it
    with pytest.raises(ReplayFailed, match=r"gov.decisions\[1\] was neither replayed"):
        merged("gov.decisions", order, results, TopicTally(), {})
