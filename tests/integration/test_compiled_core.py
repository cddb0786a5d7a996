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
from pathlib import Path

import pytest

from tests.commit_tree import REPO
from tests.compiled_build import build as compiled_build

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
