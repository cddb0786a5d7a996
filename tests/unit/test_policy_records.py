"""The workers' policy records read a page at a time: a flood of forged megabyte documents
(each refused) is never held whole, and pages give what one read gives."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from baton.processors.recorded import policy_in_force
from baton.sinks import policy_records
from tests.chdb_audit import chdb_audit
from tests.unit.test_engine_support import policy_with, seed_policy


class _Counting:
    """A client that counts the rows each query returns."""

    def __init__(self, client: Any) -> None:
        self.client, self.rows = client, []

    def query(self, sql: str, parameters: Any = None) -> Any:
        result = self.client.query(sql, parameters=parameters)
        self.rows.append(len(result.result_rows))
        return result


def test_policy_records_are_read_a_page_at_a_time_and_pages_give_what_one_read_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    real = [
        policy_in_force(seed_policy(), now, "w"),
        policy_in_force(policy_with(max_handoffs=3), now, "w"),
    ]
    forged = [
        replace(real[0], decision_id=f"forged-{i:02d}", policy_version=f"v{i:02d}",
                input='{"pad": "' + "x" * 1000 + '"}')
        for i in range(9)
    ]  # fmt: skip
    client = chdb_audit(tmp_path / "chdb", [*forged, *real])
    try:
        whole = policy_records.read_policies(client)
        assert sorted(whole[0]) == sorted(r.policy_version for r in real)
        assert len(whole[1]) == 9 and all("is not a policy document" in n for n in whole[1])
        for rows in (1, 2, 5):
            monkeypatch.setattr(policy_records, "PAGE_ROWS", rows)
            counting = _Counting(client)
            policies, refused = policy_records.read_policies(counting)
            assert policies == whole[0] and sorted(refused) == sorted(whole[1])
            assert max(counting.rows) == rows  # never more than a page
            assert len(counting.rows) == 11 // rows + 1
    finally:
        client.close()
