"""Shared fixtures: one embedded Tansu broker per session, free ports, fresh chDB dirs."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from baton.streams.embedded import EmbeddedBroker
from baton.streams.net import free_port as _free_port
from tests.compiled_build import COMPILED_TEST, start_in_background, stop_background

# the marks `baton up` keeps of its audits outside the data dir (cli/audit_mark.py): the
# tests' stacks keep theirs in a temp dir of each test process, not in the user's home
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="baton-test-state-")
atexit.register(shutil.rmtree, os.environ["XDG_STATE_HOME"], ignore_errors=True)

# A run started with SIGINT ignored (a shell's `cmd &` without job control, as in a script)
# passes the ignore on to every process the tests start, and Python then installs no
# KeyboardInterrupt handler there: the Ctrl-C tests' `baton` (a terminal's Ctrl-C is what they
# send) waited 20 s for nothing and failed. The suite takes the default back, before xdist
# starts its workers (a handler, unlike an ignore, is reset at exec).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# `tests` is a package so that `from tests.helpers import wait_for` works; pytest's default
# import mode therefore puts the repo root on sys.path, which makes the bare folders
# importable. Importing them would load a second copy of a module next to baton.*, so a
# session that did it fails here.
_BARE_PACKAGES = ("schemas", "processors", "streams", "sinks", "cli")
#: bare packages the xdist workers imported, gathered in the controlling process
_BARE_IN_WORKERS = pytest.StashKey[set[str]]()
#: under xdist (-n), the layers' order in which test files are handed out: the slow real
#: components first, so the many quick unit files fill the gaps at the end instead of one
#: worker starting a minute-long fault test while the other has nothing left
_LAYER_ORDER = ("faults", "integration", "unit")
#: test_compiled_core waits for the build started in the background at collection's end
#: (tests/compiled_build.py): handed out after the other integration files, its build has had
#: their minutes; the unit files after it keep the other worker busy while it runs
_COMPILED_RANK = _LAYER_ORDER.index("unit") - 0.5


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # a plain run keeps pytest's order
        return
    items.sort(key=_layer_rank)  # stable: a file's tests keep their order


def _layer_rank(item: pytest.Item) -> float:
    if item.nodeid.startswith(COMPILED_TEST):
        return _COMPILED_RANK
    layer = item.path.parent.name
    return _LAYER_ORDER.index(layer) if layer in _LAYER_ORDER else len(_LAYER_ORDER)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """An xdist worker ended: keep the bare packages it imported (its exit status is not
    passed on to the controlling process, which decides the run's)."""
    bare = node.workeroutput.get("bare_packages", []) if hasattr(node, "workeroutput") else []
    node.config.stash.setdefault(_BARE_IN_WORKERS, set()).update(bare)


def pytest_collection_finish(session: pytest.Session) -> None:
    start_in_background(session)  # the compiled build, if test_compiled_core is to run


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_background(session, exitstatus)
    bare = {name for name in _BARE_PACKAGES if name in sys.modules}
    if hasattr(session.config, "workeroutput"):  # an xdist worker: tell the controller
        session.config.workeroutput["bare_packages"] = sorted(bare)
    bare |= session.config.stash.get(_BARE_IN_WORKERS, set())
    if bare:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        sys.stderr.write(
            f"\nERROR: bare package(s) imported: {', '.join(sorted(bare))}; "
            f"import them as baton.{min(bare)} instead\n"
        )


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A Tansu broker on a free port for the whole session (memory storage; topics persist
    across tests, so tests use their own topic names or prefixes)."""
    log_dir = tmp_path_factory.mktemp("tansu")
    broker = EmbeddedBroker(log_dir=log_dir)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def free_port() -> int:
    """A TCP port nothing listens on (e.g. for a Faust worker's web server)."""
    return _free_port()


@pytest.fixture
def chdb_dir(tmp_path: Path) -> Path:
    """A fresh chDB data directory for this test only (one process may open a dir at a time)."""
    path = tmp_path / "chdb"
    path.mkdir()
    return path


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic-name prefix unique to this test, so tests sharing the session broker never
    see each other's topics."""
    import uuid

    return f"t{uuid.uuid4().hex[:10]}."
