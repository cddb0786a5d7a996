"""The sixth session's attack review of replay's faster steps (the watched rules asked once per
policy a run names, a step's Origin one slice of its row, parse_event by type): the replay of
random histories and policy pairs, with policies updated, rolled back and forged mid-run,
reports field for field what the session's start (5676c40) reports, run in a subprocess on
that commit's own packages. The other side is the close of the ninth session (c4b7eb3, a tree
of its own): the tenth session's rule fixes (606b03b, 369c2d4) changed what the engine
decides for some of these histories on purpose; tests/unit/test_diff_session10.py compares
the working tree with the last of them."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from baton.processors.recorded import policy_document
from baton.processors.replay import Recorded
from tests.commit_tree import commit_tree, run_pickled
from tests.unit.test_attacks_replay_share import _case

pytestmark = pytest.mark.unit

START = "5676c40"
#: the close of the ninth session: the side these changes are held against (before the tenth
#: session changed decisions on purpose; later changes: tests/unit/test_diff_session10.py)
CLOSED = "c4b7eb3"
REPO = Path(__file__).resolve().parents[2]
#: replay each case (rows as tuples, policies as their documents) and write the report's repr:
#: every run's outcome (a dataclass: every field), partial and why, broken, transitions, ...
RUNNER = """
import pickle, sys
from baton.processors.replay import Recorded, replay_runs, runs_of
from baton.schemas.policy import Policy

out = []
for rows, new, policies in pickle.load(sys.stdin.buffer):
    load = Policy.model_validate_json
    report = replay_runs(
        runs_of([Recorded(*row) for row in rows]), load(new),
        {version: load(doc) for version, doc in policies.items()}, b"chain-key",
    )
    out.append(repr(report))
pickle.dump(out, sys.stdout.buffer)
"""

_Case = tuple[list[tuple[Any, ...]], str, dict[str, str]]


@pytest.fixture(scope="module")
def start_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The start commit's packages as a ``baton`` package of their own, for PYTHONPATH."""
    return commit_tree(tmp_path_factory.mktemp("start"), START)


@pytest.fixture(scope="module")
def closed_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ninth session's close as a ``baton`` package of its own (see CLOSED)."""
    return commit_tree(tmp_path_factory.mktemp("closed"), CLOSED)


def _flipped(rng: random.Random, rows: list[Recorded], versions: list[str]) -> list[Recorded]:
    """Rows whose policy_version is switched among ``versions`` here and there: a policy
    rolled back and forth mid-run (A, B, A), or a forged row naming another policy."""
    return [
        r._replace(policy_version=rng.choice(versions)) if rng.random() < 0.2 else r for r in rows
    ]


#: a row an attacker with write access to the audit alters (or deletes: None)
_ALTER = [
    lambda r: r._replace(input='{"type":"handoff_requested"}'),
    lambda r: r._replace(input=None),
    lambda r: r._replace(policy_version="deadbeefdeadbeef"),
    lambda r: r._replace(chain_hash="0" * 32),
    lambda r: r._replace(outcome="stop", reason="handoff_budget_exceeded"),
    lambda r: None,
]


#: the alteration the start's replay missed: a chained row's outcome written over and not
#: re-linked passed as faithful there (its hash still matched), now it is unfaithful (exit 7)
_OUTCOME_FORGED = 4


def _altered(rng: random.Random, rows: list[Recorded]) -> tuple[list[Recorded], int]:
    at = rng.randrange(len(rows))
    kind = rng.randrange(len(_ALTER))
    alter = _ALTER[kind](rows[at])
    return [*rows[:at], *([alter] if alter is not None else []), *rows[at + 1 :]], kind


def _cases(seeds: range, forged: set[int] | None = None) -> list[_Case]:
    """The cases of ``seeds``; ``forged`` gets the indexes of those whose row's outcome was
    written over."""
    cases: list[_Case] = []
    for seed in seeds:
        rows, new, policies = _case(seed)
        docs = {version: policy_document(p) for version, p in policies.items()}
        cases.append(([tuple(r) for r in rows], policy_document(new), docs))
        versions = [*policies, new.version]  # (the new one recorded: a forged row's claim)
        docs = {**docs, new.version: policy_document(new)}
        flipped = _flipped(random.Random(seed), rows, versions)
        cases.append(([tuple(r) for r in flipped], policy_document(new), docs))
        altered, kind = _altered(random.Random(seed), rows)
        if kind == _OUTCOME_FORGED and forged is not None:
            forged.add(len(cases))
        cases.append(([tuple(r) for r in altered], policy_document(new), docs))
    return cases


def _reports(cases: list[_Case], pythonpath: str) -> list[str]:
    return run_pickled(RUNNER, cases, {"PYTHONPATH": pythonpath})  # type: ignore[no-any-return]


# both sides are fixed commits since 079c197 (the start and c4b7eb3): the working tree
# cannot change the outcome, so this is a soak; tests/unit/test_diff_session10.py holds
# the working tree against the last deliberate decision change
@pytest.mark.soak
def test_replays_of_random_histories_and_policies_report_what_the_start_reported(
    start_tree: Path, closed_tree: Path
) -> None:
    probe = "import baton.processors.replay_steps as s; print(hasattr(s, '_ORIGIN'))"
    sides = [
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, env=env, cwd="/", check=True
        ).stdout.strip()
        for env in ({"PYTHONPATH": str(start_tree)}, {"PYTHONPATH": str(closed_tree)})
    ]
    assert sides == [b"False", b"True"]  # two different trees are compared
    forged: set[int] = set()
    cases = _cases(range(60), forged)
    before, now = _reports(cases, str(start_tree)), _reports(cases, str(closed_tree))
    differ = [i for i, (b, n) in enumerate(zip(before, now, strict=True)) if b != n]
    unexpected = [i for i in differ if i not in forged]
    assert not unexpected, (
        f"cases {unexpected} differ; first:\n{before[unexpected[0]]}\n{now[unexpected[0]]}"
    )
    # a row whose outcome was written over: now unfaithful where the start passed it (or in a
    # run both found unfaithful already: the histories are recorded by the working tree's
    # engine, whose rule fixes neither older tree reproduces)
    assert differ, "no case forged an outcome the start's replay missed"
    for i in differ:
        assert "unfaithful=[(" in now[i] and now[i].count("unfaithful=[]") <= before[i].count(
            "unfaithful=[]"
        ), (before[i], now[i])
    assert any(now[i].count("unfaithful=[]") < before[i].count("unfaithful=[]") for i in differ), (
        "no forged outcome the start passed is unfaithful now"
    )
    # the cases reach changed, unfaithful, partial and broken runs
    for reached in (r"changed=[1-9]", r"unfaithful=\[\(", r"partial=\{'", r"broken=\['"):
        assert any(re.search(reached, r) for r in now), reached
