"""An audit directory this process may not write is named as such (session 29, H3).

chDB writes in the directory it opens, even to query it: `baton sql --data-dir` on a
read-only backup copy of an audit ended with "Error initializing EmbeddedServer: .
(BAD_ARGUMENTS)", which says neither what is wrong nor what to do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from baton.schemas.errors import AuditUnavailable
from baton.sinks import clickhouse

pytestmark = pytest.mark.unit


def test_a_read_only_chdb_directory_is_named_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = tmp_path / "chdb"
    audit.mkdir()
    real_access = os.access

    def read_only(path: object, mode: int, **kw: object) -> bool:
        if Path(str(path)) == audit and mode & os.W_OK:
            return False  # as on a read-only file system (root passes a chmod)
        return real_access(path, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(clickhouse.os, "access", read_only)
    with pytest.raises(AuditUnavailable) as info:
        clickhouse.connect(f"chdb://{audit}", create=False)
    message = str(info.value)
    assert "is not writable by this process" in message and "cp -r" in message, message
