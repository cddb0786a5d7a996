"""One dedup key per logical event, its kind's prefix typed once (processors/dedup_keys.py)."""

from __future__ import annotations

import pytest

from baton.processors import dedup_keys
from baton.processors.dedup_keys import dedup_key, with_digest
from tests.unit.test_engine_support import completed, denied, finished, granted, handoff

pytestmark = pytest.mark.unit


def test_each_kind_of_event_has_its_own_key_even_under_the_same_id() -> None:
    same = "x-1"
    keys = [
        dedup_key(handoff(same, "t", "a", "b")),
        dedup_key(completed(same, "t", "b")),
        dedup_key(granted(same, "boss")),
        dedup_key(finished()),
    ]
    assert keys == ["h:x-1", "c:x-1", "a:x-1", "f:"]
    # a grant and a denial of one approval share its key: the first answer wins
    assert dedup_key(denied(same, "boss")) == dedup_key(granted(same, "other"))


def test_the_prefixes_are_distinct_and_a_reused_report_key_is_not_a_plain_one() -> None:
    prefixes = [
        dedup_keys.HANDOFF,
        dedup_keys.REPORT,
        dedup_keys.APPROVAL,
        dedup_keys.FINISHED,
        dedup_keys.REFUSED,
    ]
    assert len(set(prefixes)) == len(prefixes)
    assert with_digest("c:r", "abcd") == "c:r#abcd" != "c:r"
