"""The compiled build (``BATON_COMPILE=1 pip install .``: mypyc on the replay path) gives the
same answers as the pure-Python one: it is built into a temporary folder from this tree and
the core unit tests (engine, state, chain, replay, recorded, the differential tests against
earlier commits, the decision's rows) run against it in a subprocess, the compiled package
first on PYTHONPATH.

It needs a C compiler and the Python headers, as a compiled install does; without them it
fails with the build's own error (never skipped: CI machines have gcc). pip fetches mypy into
its isolated build environment; nothing is cached outside the temporary folder. It takes
about two minutes of one core's time on top of the suite (the build ~40-70 s, the tests the
rest): docs/replay.md "A compiled core". The build, the probe and the core tests' run start
in the background when the session's collection ends, at nice 10, and this test waits for
their outputs and asserts on them (tests/compiled_build.py): their minutes overlap the other
tests' waits instead of adding to the run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from baton.schemas.decision import Outcome, Phase
from baton.schemas.events import HandoffCompleted
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for
from tests.commit_tree import REPO
from tests.compiled_build import build as compiled_build
from tests.helpers import handoff
from tests.integration import test_hostile_fuzz as hostile_fuzz
from tests.integration.conftest import PARTITIONS, TEST_POLICY, one_worker_stack

# the build and the tests take minutes on a busy 2-core host (the suite's 300 s is per test)
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

#: the core unit tests run against the compiled build (globs under tests/unit); the engine's
#: hypothesis property files (``*properties*``, minutes) only with BATON_COMPILED_ALL=1: the
#: differential tests against earlier commits draw random histories and policies too. A
#: test that holds an answer only the interpreted build gives (a call or record no worker
#: makes, which the compiled build refuses: stricter, never more open) is skipped in the
#: compiled build by its own mark, with why (tests/builds.py ``interpreted_only``)
CORE_TESTS = (
    "test_engine*.py",
    "test_state*.py",
    "test_chain*.py",
    "test_recorded*.py",
    "test_replay.py",
    "test_replay_diff_session7.py",
    "test_replay_evicted.py",
    "test_replay_order.py",
    "test_replay_share.py",
    "test_replay_trimmed.py",
    "test_attacks_replay_share.py",
    "test_attacks_session6_replay_diff.py",
    "test_attacks_session7_diff.py",
    "test_attacks_session6.py",  # forged changelog records: unreadable in either build
    "test_attacks_session8.py",
    "test_diff_session10.py",
    "test_audit_json_rows.py",
    "test_compiled_twin.py",
    "test_attacks_session11_compiled.py",  # forged changelog and audit rows (H5)
    "test_replay_speed_session12.py",  # code written for the compiler, same answers
    "test_replay_speed_session13.py",  # the audit queries on the table's key (H1)
    "test_event_fast_diff.py",  # the compiled fast parse builds what pydantic builds (H1)
    "test_attacks_session14_parse.py",  # its bytes-only argument and O(keys) cost (H6)
    "test_attacks_session15_parse.py",  # event times only in Baton's own fast form (H5)
    "test_replay_wall_session14.py",  # pieces sized to keep both cores busy (H2)
    "test_compiled_worker_*.py",  # hostile records: the worker's batch step, both builds (H6)
    "test_replay_speed_session16.py",  # replay's one-call input read; chain times by ints
    "test_attacks_session10_rules.py",  # rule_chain.py compiled since session 16
    "test_attacks_session16_*.py",  # hostile inputs through the one-call read; forged rows (H1)
    # session 16 (H3): written for both builds (tests/builds.py), ~19 s against the build
    "test_attacks_session5.py",  # workers before lives; a full worker's refusals
    "test_attacks_session4b.py",  # names folded (names.py compiled), histories with sweeps
    "test_run_lives.py",  # the engine's life marks; a worker before lives
    "test_attacks_session15_replay.py",  # replay_pool's timeline setting (a process of
    "test_attacks_session15_timeline.py",  # its own when compiled: a C static)
    "test_sink_variants_insert.py",  # the sink's inserts of a compiled Decision's records
    "test_attacks_session11_audit.py",  # forged records under a worker's id, verify, trace
    "test_attacks_session13_sdk.py",  # the SDK's answers over a compiled Decision
    "test_audit_records.py",  # a compiled Decision's audit rows and their refusals
    "test_memory_session8.py",  # a decoded RunState's compact forms
    "test_compiled_share_session17.py",  # replay_share, state_compact compiled (session 17)
    "test_attacks_session17_replay_kafka.py",  # --from-kafka order and scope (H2), ~1 s
    "test_attacks_session18_tombstone_reports.py",  # a report at a tombstone (engine_refusals)
    "test_replay_speed_session18.py",  # new_change, compact_digest's last, forged verdicts
    "test_attacks_session20_replay_decisions.py",  # gov.decisions' records as rows, ~2 s
    "test_attacks_session23_compiled.py",  # forged grants, reservations, reply keys (H2)
    "test_attacks_session24_chain.py",  # the budget refusal's copies and links, ~2 s (H1)
    "test_attacks_session24_recheck.py",  # forged worker refusals, dead-letter positions (H3)
    "test_redelivery_not_kept.py",  # the positions a run read (batch_routing, state_wire), ~2 s
    "test_self_check.py",  # the worker's start-up probes as Faust hands records over (s47)
)
#: what the probe prints: how many modules are compiled, the build, the engine's file, the
#: last line of `baton replay --help`
PROBE = (
    "from baton.processors import compiled, engine, replay, state;"
    "from baton.cli.replay_cmds import replay_cmd;"
    "print(len(compiled.compiled_modules()), compiled.core_build(), engine.__file__,"
    " replay_cmd.help.splitlines()[-1])"
)


def commands() -> dict[str, list[str]]:
    """What runs against the compiled build (its folder first on PYTHONPATH, from REPO): the
    probe, then the core unit tests (tests/compiled_build.py runs them after the build)."""
    every = os.environ.get("BATON_COMPILED_ALL") == "1"
    tests = sorted(
        str(p)
        for p in {p for g in CORE_TESTS for p in (REPO / "tests" / "unit").glob(g)}
        if every or "properties" not in p.name
    )
    return {
        "probe": [sys.executable, "-c", PROBE],
        "tests": [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:randomly", *tests],
    }


def test_the_compiled_build_passes_the_core_unit_tests(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    site, runs = compiled_build(request.config, tmp_path)
    probe = runs["probe"]
    assert probe["returncode"] == 0, probe["stderr"][-3000:]
    count, build, engine_file, help_line = probe["stdout"].split(" ", 3)
    listed = (REPO / "build_backend" / "compiled_modules.txt").read_text().splitlines()
    modules = [line for line in listed if line.strip() and not line.startswith("#")]
    assert build == "compiled" and int(count) == len(modules), probe["stdout"]
    assert engine_file.startswith(str(site)) and engine_file.endswith(".so"), probe["stdout"]
    assert help_line.strip() == "This install's replay core: compiled.", probe["stdout"]
    run = runs["tests"]
    assert run["returncode"] == 0, run["stdout"][-6000:] + run["stderr"][-2000:]


def _maps_build(pid: int, site: Path) -> bool:
    """Whether process ``pid`` has loaded a shared object of the build in ``site``."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return any(str(site) in line and line.rstrip().endswith(".so") for line in maps.splitlines())


def test_a_compiled_worker_decides_headered_and_forwarded_events_on_a_real_broker(
    request: pytest.FixtureRequest, tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """The compiled build as the Docker image runs it: a real `baton worker` importing Baton
    from the build, on the session's broker, fed through Faust (which hands every record's
    headers over as aiokafka's tuple). An orchestrator's events carrying a header of their own
    (a trace id), and events its client put on another partition (librdkafka's default
    partitioner is not murmur2: the worker forwards them with a header and decides the copy),
    are each decided, as are events with no header; none is dead-lettered. Session 47 found
    the compiled worker answering every event it took from Faust with an ``engine_error``
    dead letter ("list or None object expected; got tuple": Faust hands even no headers over
    as an empty tuple): the core unit tests had given the batch step lists only."""
    site, _runs = compiled_build(request.config, tmp_path)
    env = {"PYTHONPATH": str(site)}
    with one_worker_stack(broker, tmp_path, TEST_POLICY, "c", extra_env=env) as s:
        producer = s.requests.producer
        trace = [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
        sent: dict[str, list[str]] = {}
        for run, moved, headers in (
            ("cw-plain", False, None),
            ("cw-trace", False, trace),
            ("cw-moved", True, None),
            ("cw-both", True, trace),
        ):
            key = run.encode()
            home = partition_for(key, PARTITIONS)
            where = (home + 1) % PARTITIONS if moved else home
            for n in (1, 2, 3):
                event = handoff(run, n, f"t{n}")
                producer.produce(
                    s.catalog.requests, event.to_json(), key, partition=where, headers=headers
                )
                sent.setdefault(run, []).append(event.request_id)
            cost = HandoffCompleted(
                request_id=f"{run}-h1", run_id=run, task_id="t1", agent="researcher",
                cost_usd=2.5, tool_calls=1, event_time=datetime.now(UTC),
            )  # fmt: skip
            producer.produce(s.catalog.requests, cost.to_json(), key, partition=where)
        assert producer.flush(10) == 0
        for run, ids in sent.items():
            decisions = s.decisions.wait_run(run, len(ids) + 1, timeout=60)
            handoffs = [d for d in decisions if d.phase == Phase.PRE_HANDOFF]
            assert [(d.request_id, d.outcome, d.reason) for d in handoffs] == [
                (rid, Outcome.ALLOW, "ok") for rid in ids
            ], (
                decisions,
                s.logs(),
            )
            assert max(d.spent_usd for d in decisions) == 2.5, decisions
        assert s.deadletters.records == [], s.deadletters.records[:3]
        assert _maps_build(s.workers[0].proc.pid, site), "the worker did not run the build"


@pytest.fixture(scope="module")
def fuzz_stack(
    broker: EmbeddedBroker,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[hostile_fuzz.FuzzStack]:
    """test_hostile_fuzz's stack (a worker and a sink) running the compiled build."""
    site, _runs = compiled_build(request.config, tmp_path_factory.mktemp("build"))
    env = {"PYTHONPATH": str(site)}
    with hostile_fuzz.fuzz_stack_in(broker, tmp_path_factory.mktemp("fuzz"), env) as stack:
        # (its start decided a probe: the engine's modules are loaded)
        assert _maps_build(stack.worker.proc.pid, site), "the worker did not run the build"
        yield stack


# the hostile fuzz end to end (random and hostile records amid good runs, each decided as the
# pure interpreted engine decides it offline, every decision in the audit) against a worker
# and a sink of the compiled build: the Docker image's build, which the core unit tests alone
# had let dead-letter every forwarded event (session 47)
test_compiled_hostile_records_never_stop_or_fool_governance = (
    hostile_fuzz.test_hostile_records_never_stop_or_fool_governance
)
test_compiled_a_retry_of_an_old_request_is_answered = (
    hostile_fuzz.test_a_retry_of_an_old_request_is_answered
)
test_compiled_a_retry_of_an_old_refused_grant_is_answered = (
    hostile_fuzz.test_a_retry_of_an_old_refused_grant_is_answered
)
