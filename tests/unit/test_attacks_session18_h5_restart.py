"""Session 18 (H5): what a `baton up` restart reads of the audit, against rows others wrote.

F4: a restart names a policy the workers used before it that is not in force now
(``up_restart.name_a_lost_policy``); it reads the audit's ``policy_updated`` control rows and
asks whether each recorded command carries a signature with ``json.loads``. The row's
``input`` is whatever a writer of gov.decisions put there (control rows are not chained): a
JSON array nested 3,000 deep (6 KB) raised RecursionError there, which only a BatonError was
caught for: `baton up` ended with a traceback at every start while the row stayed in the
audit (a year, by default). Now such a command is read as unsigned.
"""

from __future__ import annotations

import pytest

from baton.cli.restart_notice import fold_policy_in_force

pytestmark = pytest.mark.unit

_DEEP = "[" * 3000 + "]" * 3000


@pytest.mark.parametrize("command", [_DEEP, '{"signature":' + _DEEP + "}"], ids=["list", "value"])
def test_a_policy_update_row_whose_command_nests_3000_deep_reads_as_unsigned(command: str) -> None:
    rows = [
        ("policy_in_force", "v1", "", "2026-12-01 10:00:00", ""),
        ("policy_updated", "v2", "mallory", "2026-12-01 11:00:00", command),
    ]
    found = fold_policy_in_force(rows)
    assert found is not None
    assert (found.version, found.published_by, found.reissued) == ("v2", "mallory", False)
