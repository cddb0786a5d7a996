"""`baton up` copies its --policy file into the data dir for its workers (H2, session 34: an
edit of the file while the stack ran changed what a restarted worker loaded)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from baton.cli.up_restart import POLICY_COPY, keep_policy_copy
from baton.schemas.signing import new_private_key, public_key_text

pytestmark = pytest.mark.unit

WITH = f'operators: {{oncall: "{public_key_text(new_private_key())}"}}\n'


def test_the_copy_is_a_new_private_file_and_no_temp_is_left(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.txt"
    other.write_text("not a policy")
    said: list[str] = []
    path = keep_policy_copy(
        tmp_path, "multi_agent: {max_handoffs: 3}\n", Path("p.yaml"), said.append
    )
    assert path.parent == tmp_path and path.read_text().startswith("multi_agent")
    assert re.fullmatch(r"policy-[0-9a-f]{16}\.yaml", path.name)
    info = path.stat()
    assert info.st_nlink == 1 and info.st_mode & 0o077 == 0
    assert other.read_text() == "not a policy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.txt", path.name]
    assert said and "copied to" in said[0]
    # again over a copy a hard link shares with another file: the other file is left alone
    path.unlink()
    os.link(other, path)
    keep_policy_copy(tmp_path, "multi_agent: {max_handoffs: 3}\n", Path("p.yaml"), said.append)
    assert other.read_text() == "not a policy" and path.stat().st_nlink == 1


def test_a_refused_start_leaves_the_earlier_start_s_copy_in_place(tmp_path: Path) -> None:
    """Session 38, H4: one name for every start's copy, written before the guards: a start
    refused by a guard (or a busy port) had already replaced the copy the earlier start's
    record names, and the next start's guard read the refused start's policy as the earlier
    one (signing switched off by a forged row, no warning). Each text has its own copy; the
    copies of neither the earlier start nor this one are removed, older ones are, and never
    a `policy.yaml` of the user's."""
    from baton.cli.stack_file import StackRecord
    from baton.cli.up_restart import earlier_policy

    said: list[str] = []
    first = keep_policy_copy(tmp_path, WITH, Path("p.yaml"), said.append)
    record = StackRecord(
        state="stopped", pid=1, started_at="2026-12-04T00:00:00+00:00", data_dir=tmp_path,
        app_id="a", bootstrap="127.0.0.1:9092", partitions=4, policy=first,
    )  # fmt: skip
    (tmp_path / POLICY_COPY).write_text("a user's file\n")
    refused = keep_policy_copy(tmp_path, "multi_agent: {}\n", Path("q.yaml"), said.append, record)
    assert refused != first and first.read_text() == WITH
    earlier = earlier_policy(tmp_path, record)
    assert earlier is not None and list(earlier.operators) == ["oncall"]
    third = keep_policy_copy(tmp_path, "multi_agent: {max_handoffs: 9}\n", Path("r.yaml"),
                             said.append, record)  # fmt: skip
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([first.name, third.name, POLICY_COPY])
