"""An earlier commit's packages as a ``baton`` package of their own, for the differential tests.

A differential test runs the same cases through this tree and through the packages of the commit
it compares with (a subprocess with ``PYTHONPATH`` set to the folder made here), and asserts the
two give the same bytes.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "REPO",
    "SOURCE_FOLDERS",
    "commit_tree",
    "refused_as_unknown",
    "run_pickled",
    "unknown_event_keys",
    "without_read_positions",
]

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


def run_pickled(
    runner: str, payload: object, env: dict[str, str], cwd: Path | str = "/", timeout: float = 240
) -> Any:
    """What ``runner`` (a Python program reading a pickle on stdin and writing one to stdout)
    answers ``payload`` with, in a fresh interpreter with ``env`` (its PYTHONPATH picks the
    tree); the runner's failure fails the test with its stderr's tail.

    The side of this tree (``PYTHONPATH`` unset or this checkout's root, which holds no
    ``baton`` folder: the installed package answers) takes this process's own PYTHONPATH
    when it has one: tests/integration/test_compiled_core.py runs these tests with the
    compiled build there, whose batch steps and replays must be the ones compared."""
    here = os.environ.get("PYTHONPATH")
    if here and env.get("PYTHONPATH", str(REPO)) == str(REPO):
        env = {**env, "PYTHONPATH": here}
    done = subprocess.run(
        [sys.executable, "-c", runner],
        input=pickle.dumps(payload),
        capture_output=True,
        env=env,
        cwd=cwd,
        check=False,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return pickle.loads(done.stdout)


#: a run-state record's positions read (changelog keys ``rd`` and ``fw``, since session 26)
_READ_POSITIONS = re.compile(
    rb',"rd":\[\d+,-?\d+,-?\d+\]|,"fw":\[(\[\d+,\d+,\d+(,\d+)?\],?)*\]|,"sq":\d+(?=\}$)'
)


def without_read_positions(value: Any) -> Any:
    """``value`` (a differential test's answer: lists and tuples of bytes and others) with the
    positions a run read taken out of every run-state record: a commit before session 26
    wrote none (``RunState.read_*``, processors/batch_routing.py), and all else is equal; nor
    the record's ``seq`` (its last key, ``"sq"``: session 46, processors/state_gate.py)."""
    if isinstance(value, bytes):
        return _READ_POSITIONS.sub(b"", value)
    if isinstance(value, list):
        return [without_read_positions(v) for v in value]
    if isinstance(value, tuple):
        return tuple(without_read_positions(v) for v in value)
    return value


def unknown_event_keys(raw: bytes) -> list[str]:
    """The keys of the event ``raw`` holds that its type does not have: since session 27 such
    an event is refused (``schema``, "unknown field ..."), never read with the keys dropped (a
    misspelt ``action`` was decided past the approval gate). [] when ``raw`` is no JSON object
    of an event type, or holds none. An earlier commit read such events; a differential test
    takes this refusal in place of what that commit answered (:func:`refused_as_unknown`)."""
    import orjson

    from baton.schemas.events import _FIELDS_OF

    try:
        doc = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        return []
    fields = _FIELDS_OF.get(doc["type"])
    return [] if fields is None else [k for k in doc if k not in fields]


def refused_as_unknown(raw: bytes, answer: Any) -> bool:
    """``answer`` (``[kind of answer, dead letter kind, message, ...]``) is this tree's refusal
    of ``raw`` for keys its type does not have, and ``raw`` holds such keys."""
    return (
        list(answer[:2]) == ["refused", "schema"]
        and "unknown field" in str(answer[2])
        and bool(unknown_event_keys(raw))
    )
