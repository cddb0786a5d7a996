"""An earlier commit's packages as a ``baton`` package of their own, for the differential tests.

A differential test runs the same cases through this tree and through the packages of the commit
it compares with (a subprocess with ``PYTHONPATH`` set to the folder made here), and asserts the
two give the same bytes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

__all__ = ["REPO", "SOURCE_FOLDERS", "commit_tree"]

#: this checkout (the git repository the commits are read from)
REPO = Path(__file__).resolve().parents[1]
#: the folders that make up the ``baton`` package
SOURCE_FOLDERS = ("cli", "processors", "schemas", "sinks", "streams")


def commit_tree(root: Path, commit: str, folders: tuple[str, ...] = SOURCE_FOLDERS) -> Path:
    """``folders`` of ``commit`` under ``root``/baton (with an empty ``__init__.py``); ``root``
    goes on PYTHONPATH. Skips the test when the clone does not hold the commit."""
    (root / "baton").mkdir()
    (root / "baton" / "__init__.py").write_text("")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, *folders], capture_output=True, check=False
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {commit} not in this clone: {archive.stderr.decode()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(root / "baton")], input=archive.stdout, check=True)
    return root
