"""The working tree against the tenth session's last change to what the engine decides
(369c2d4, H3's strict_tenants fix after 606b03b's three fail-closed rule fixes): random
replay histories (policies rolled back, forged and altered rows) report field for field what
that commit reports, as replayed and as a `--jobs` process hands a report back, and hostile
records through the batch step give its bytes (decisions, dead letters, run-state records).

Between the ninth session's close (c4b7eb3) and 369c2d4 only those rule fixes changed these
outputs: checked once with a tree of c4b7eb3 plus the rule fixes' diffs to
``processors/rule_checks.py``, ``processors/policy_rules.py`` and ``schemas/policy_limits.py``
(bench/RESULTS.md, the tenth session's lead section). A later change to what the engine
decides moves ``DECIDES`` to its commit, saying why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.commit_tree import commit_tree, without_read_positions
from tests.unit.test_attacks_session6_replay_diff import REPO, _cases, _reports
from tests.unit.test_attacks_session7_diff import _hostile
from tests.unit.test_replay_diff_session7 import _reports as _reports_pickled
from tests.unit.test_state_memory_diff import _published

pytestmark = pytest.mark.unit

#: the newest commit that changed what the engine decides on purpose (session 11: 9981078, a
#: report copied to its run's tombstone is answered reply_not_kept, not counted again; cb3bfad,
#: the tombstone knows its reports by digest, so another report under a used id there is
#: counted without the 'reused' detail; 50f1d5f, reply_not_kept for a report no longer says
#: "use a new request_id"; session 24: 09d9be1, replay decides a step on no state (a
#: forgotten tombstone) only once the workers' tombstone retention could have passed: two of
#: the random altered histories, unfaithful at an earlier step either way, name two more
#: steps not reproduced; session 27: d246d30, an event key its type does not have is a
#: schema dead letter, not dropped: the hostile records' approvals carrying task_id and
#: request_id, and completions carrying agents, are refused now)
DECIDES = "d246d30"


@pytest.fixture(scope="module")
def decides_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return commit_tree(tmp_path_factory.mktemp("decides"), DECIDES)


def test_replays_of_random_histories_report_what_the_last_rule_change_reported(
    decides_tree: Path,
) -> None:
    cases = _cases(range(60))
    before, now = _reports(cases, str(decides_tree)), _reports(cases, str(REPO))
    differ = [i for i, (b, n) in enumerate(zip(before, now, strict=True)) if b != n]
    assert not differ, f"cases {differ} differ; first:\n{before[differ[0]]}\n{now[differ[0]]}"
    more = _cases(range(60, 110))
    before = _reports_pickled(more, str(decides_tree), pickled=False)
    for pickled in (False, True):
        now = _reports_pickled(more, str(REPO), pickled)
        differ = [i for i, (b, n) in enumerate(zip(before, now, strict=True)) if b != n]
        assert not differ, f"pickled={pickled}: cases {differ} differ"


@pytest.mark.parametrize("seed", [1, 2])
def test_hostile_records_give_the_last_rule_change_s_bytes(decides_tree: Path, seed: int) -> None:
    batches = _hostile(seed)
    # (positions read stripped both sides: DECIDES writes them, as this tree does)
    now = _published(batches, None)
    before = without_read_positions(_published(batches, str(decides_tree)))
    # decisions were made (fewer since d246d30: a record with a key its type lacks is refused)
    assert sum(len(b[0]) for b in now) > 500 and sum(len(b[1]) for b in now) > 100
    for i, (mine, theirs) in enumerate(zip(now, before, strict=True)):
        assert mine == theirs, f"batch {i}: decisions, dead letters or run-state records differ"
