"""The seventh session's replay changes against the session's start (36e8750), run on that
commit's own packages in a subprocess: random histories and policy pairs (policies rolled
back and forged mid-run, rows altered or deleted) report field for field what the start
reported, both as replayed and as a `--jobs` process hands a report back (pickled: its runs
now travel as plain tuples); and `baton replay`'s collector settings are put back after it.
The other side of the random histories is the ninth session's close (c4b7eb3): the tenth
session's rule fixes changed some of their decisions on purpose (tests/unit/
test_diff_session10.py holds the working tree against the last of them)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from baton.processors.replay_pool import collecting_rarely
from tests.builds import interpreted_only
from tests.commit_tree import commit_tree, run_pickled
from tests.unit.test_attacks_session6_replay_diff import CLOSED, REPO, _Case, _cases

pytestmark = pytest.mark.unit

START = "36e8750"
#: each case's report as its repr (every run's outcome: a dataclass, every field), and, with
#: "pickled", the repr of the report after a pickle round trip (what the reader merges)
RUNNER = """
import pickle, sys
from baton.processors.replay import Recorded, replay_runs, runs_of
from baton.schemas.policy import Policy

cases, pickled = pickle.load(sys.stdin.buffer)
out = []
for rows, new, policies in cases:
    load = Policy.model_validate_json
    report = replay_runs(
        runs_of([Recorded(*row) for row in rows]), load(new),
        {version: load(doc) for version, doc in policies.items()}, b"chain-key", judge=False,
    )
    out.append(repr(pickle.loads(pickle.dumps(report)) if pickled else report))
pickle.dump(out, sys.stdout.buffer)
"""


@pytest.fixture(scope="module")
def start_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The start commit's packages as a ``baton`` package of their own, for PYTHONPATH."""
    return commit_tree(tmp_path_factory.mktemp("start7"), START)


def _reports(cases: list[_Case], pythonpath: str, pickled: bool) -> list[str]:
    return run_pickled(RUNNER, (cases, pickled), {"PYTHONPATH": pythonpath})  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def closed_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ninth session's close as a ``baton`` package of its own."""
    return commit_tree(tmp_path_factory.mktemp("closed7"), CLOSED)


# both sides are fixed commits since 079c197 (the start and c4b7eb3): the working tree
# cannot change the outcome, so this is a soak; tests/unit/test_diff_session10.py holds
# the working tree against the last deliberate decision change
@pytest.mark.soak
def test_replays_and_pool_reports_of_random_histories_are_the_starts(
    start_tree: Path, closed_tree: Path
) -> None:
    cases = _cases(range(60, 110))
    before = _reports(cases, str(start_tree), pickled=False)
    for pickled in (False, True):
        now = _reports(cases, str(closed_tree), pickled)
        differ = [i for i, (b, n) in enumerate(zip(before, now, strict=True)) if b != n]
        assert not differ, f"pickled={pickled}: cases {differ} differ; first:\n{before[differ[0]]}"
    # the cases reach changed, unfaithful, partial and broken runs and a first change each
    for reached in ("changed=1", "unfaithful=[(", "partial={'", "broken=['", "Change(step="):
        assert any(reached in r for r in before), reached


@interpreted_only(
    "the compiled replay reads a recorded outcome and reason as text: a row of numbers or null "
    "there (refused by name as the audit is read, in both builds: test_attacks_session11_"
    "compiled) reports its run broken where the start said unfaithful, exit 7 both"
)
def test_rows_of_a_forged_server_with_numbers_for_words_report_as_the_start(
    start_tree: Path,
) -> None:
    # an audit endpoint that is not ClickHouse may answer anything JSON: an outcome or a
    # reason that is a number or null reaches the report's labels (now joined, not formatted)
    cases = []
    # (seeds 1-3: seed 0's history copies a report to its run's tombstone, which the engine
    # recording these cases answers reply_not_kept since session 11 and the start's replayer
    # counts again: unfaithful for a reason of the engine, not of the labels tested here)
    for rows, new, docs in _cases(range(1, 4)):
        for value in (5, None, 1.5):
            at = len(rows) // 2
            forged = list(rows[at])
            forged[2], forged[3] = value, value  # outcome, reason
            cases.append(([*rows[:at], tuple(forged), *rows[at + 1 :]], new, docs))
    before = _reports(cases, str(start_tree), pickled=False)
    assert before == _reports(cases, str(REPO), pickled=True)
    assert any("'5:5'" in r or "5:5" in r for r in before)


def test_the_commands_collector_settings_are_put_back_after_a_replay() -> None:
    was = gc.get_threshold()
    with collecting_rarely():
        assert gc.get_threshold() == (50_000, 20, 100)
        assert gc.get_freeze_count() > 0  # the objects made before: never walked again
    assert gc.get_threshold() == was and gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), collecting_rarely():
        raise RuntimeError("a replay that fails")
    assert gc.get_threshold() == was and gc.get_freeze_count() == 0
