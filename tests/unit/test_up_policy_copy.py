"""`baton up` copies its --policy file into the data dir for its workers (H2, session 34: an
edit of the file while the stack ran changed what a restarted worker loaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from baton.cli.up_restart import POLICY_COPY, keep_policy_copy

pytestmark = pytest.mark.unit


def test_the_copy_is_a_new_private_file_and_no_temp_is_left(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.txt"
    other.write_text("not a policy")
    said: list[str] = []
    path = keep_policy_copy(
        tmp_path, "multi_agent: {max_handoffs: 3}\n", Path("p.yaml"), said.append
    )
    assert path == tmp_path / POLICY_COPY and path.read_text().startswith("multi_agent")
    info = path.stat()
    assert info.st_nlink == 1 and info.st_mode & 0o077 == 0
    assert other.read_text() == "not a policy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.txt", POLICY_COPY]
    assert said and "copied to" in said[0]
    # again over a copy a hard link shares with another file: the other file is left alone
    path.unlink()
    os.link(other, path)
    keep_policy_copy(tmp_path, "multi_agent: {max_handoffs: 4}\n", Path("p.yaml"), said.append)
    assert other.read_text() == "not a policy" and path.stat().st_nlink == 1
