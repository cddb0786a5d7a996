"""The compiled build test_compiled_core tests, and the test's commands run against it,
started in the background when the session's collection ends so that their minutes (mypyc,
gcc, the core unit tests) overlap the other tests' waits instead of adding to the run.

``BATON_COMPILE=1 pip install --target`` of this tree, then the probe and the core unit tests
of test_compiled_core (its ``commands()``), run in a detached process at nice 10 (the tests
keep the CPU they need; the build takes what they leave: brokers, workers and sleeps leave
plenty). Under xdist every worker collects the same tests: the first to create the run's
shared folder (``<basetemp>/../compiled-build``) starts it, and the test, wherever it runs,
waits for ``result.json`` and asserts on what it holds. Without a background build (the test
collected by a run that did not start one) the test runs the same steps in its own process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.commit_tree import REPO, SOURCE_FOLDERS

__all__ = ["COMPILED_TEST", "build", "shared_folder", "start_in_background", "stop_background"]

#: the test that needs the build (its node id's file part)
COMPILED_TEST = "tests/integration/test_compiled_core.py"
#: what the build copies besides the package's folders
_BUILD_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
#: the background build's niceness: it fills the CPU the tests leave idle
_NICE = 10
#: the longest a build may take (the slowest seen: ~8 min on a 2-core host at load 12)
BUILD_TIMEOUT_S = 1200
#: the longest the core unit tests may take against the build
CHECK_TIMEOUT_S = 900
_started = pytest.StashKey[subprocess.Popen[bytes]]()


def shared_folder(config: pytest.Config) -> Path:
    """This run's folder for the build, the same in every xdist worker (their basetemps'
    parent; pytest keeps the last three runs' and deletes older ones)."""
    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    return (base.parent if hasattr(config, "workerinput") else base) / "compiled-build"


def start_in_background(session: pytest.Session) -> None:
    """Start the build if the compiled test is to run and no other worker started it."""
    if not any(item.nodeid.startswith(COMPILED_TEST) for item in session.items):
        return
    folder = shared_folder(session.config)
    try:
        folder.mkdir()  # atomic: one worker of the run wins
    except FileExistsError:
        return
    with open(folder / "build.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.compiled_build", str(folder)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (folder / "pid").write_text(str(proc.pid))
    session.config.stash[_started] = proc


def stop_background(session: pytest.Session, exitstatus: int) -> None:
    """At the end of the session of the process that started the build: wait for it (the
    other worker may still be waiting for it), or end it if the run was interrupted (Ctrl-C,
    -x: it runs in a session of its own, the terminal's SIGINT does not reach it)."""
    proc = session.config.stash.get(_started, None)
    if proc is None or proc.poll() is not None:
        return
    interrupted = (
        exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop or session.shouldfail
    )
    try:
        if not interrupted:
            proc.wait(BUILD_TIMEOUT_S + CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def build(config: pytest.Config, tmp: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The compiled build's installed folder (for PYTHONPATH) and what the commands of
    test_compiled_core printed against it (name -> returncode, stdout, stderr): the background
    ones of this run once they ended, else run here into ``tmp``. Fails the test with the
    build's error."""
    folder = shared_folder(config)
    for _ in range(300):  # a worker that just created the folder writes the pid next
        if not folder.exists() or (folder / "pid").exists():
            break
        time.sleep(0.1)
    if not (folder / "pid").exists():
        folder = tmp / "compiled-build"
        folder.mkdir()
        _build(folder)
    else:
        _wait(folder)
    result = json.loads((folder / "result.json").read_text())
    if result["returncode"] != 0:
        pytest.fail(f"the compiled build failed:\n{result['output'][-4000:]}")
    return folder / "site", result["runs"]


def _wait(folder: Path) -> None:
    """Until the background build wrote its result (it fails the test if its process ended
    without one, or it outlasts BUILD_TIMEOUT_S)."""
    pid = int((folder / "pid").read_text())
    deadline = time.monotonic() + BUILD_TIMEOUT_S + CHECK_TIMEOUT_S
    while not (folder / "result.json").exists():
        if time.monotonic() > deadline:
            pytest.fail(
                f"the compiled build and its tests took over {BUILD_TIMEOUT_S + CHECK_TIMEOUT_S} s"
            )
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            if (folder / "result.json").exists():
                break
            log = (folder / "build.log").read_text(errors="replace")[-4000:]
            pytest.fail(f"the background compiled build ended without a result:\n{log}")
        time.sleep(0.5)


def _build(folder: Path) -> None:
    """This tree's compiled build installed into ``folder``/site; its exit status and output
    in ``folder``/result.json (written last, by a rename)."""
    source = folder / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "build")
    for name in (*SOURCE_FOLDERS, "build_backend"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in _BUILD_FILES:
        shutil.copy2(REPO / name, source / name)
    env = {
        **os.environ,
        "BATON_COMPILE": "1",
        "PIP_NO_CACHE_DIR": "1",
        "TMPDIR": str(folder),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    site = folder / "site"
    args = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), "."]
    try:
        done = subprocess.run(
            args, cwd=source, env=env, capture_output=True, text=True, check=False,
            timeout=BUILD_TIMEOUT_S,
        )  # fmt: skip
        result = {"returncode": done.returncode, "output": done.stdout + done.stderr}
    except subprocess.TimeoutExpired as e:
        result = {"returncode": -1, "output": f"the build took over {e.timeout} s"}
    result["runs"] = _check(site, folder) if result["returncode"] == 0 else {}
    partial = folder / "result.json.part"
    partial.write_text(json.dumps(result))
    partial.rename(folder / "result.json")


def _check(site: Path, folder: Path) -> dict[str, dict[str, Any]]:
    """test_compiled_core's commands run against the build in ``site``, from the repository."""
    from tests.integration.test_compiled_core import commands

    env = {**os.environ, "PYTHONPATH": str(site), "TMPDIR": str(folder)}
    env.pop("BATON_COMPILE", None)
    runs: dict[str, dict[str, Any]] = {}
    for name, args in commands().items():
        try:
            done = subprocess.run(
                args, env=env, cwd=REPO, capture_output=True, text=True, check=False,
                timeout=CHECK_TIMEOUT_S,
            )  # fmt: skip
            runs[name] = {
                "returncode": done.returncode,
                "stdout": done.stdout,
                "stderr": done.stderr,
            }
        except subprocess.TimeoutExpired:
            runs[name] = {
                "returncode": -1,
                "stdout": "",
                "stderr": f"{name}: over {CHECK_TIMEOUT_S} s",
            }
    return runs


if __name__ == "__main__":
    os.nice(_NICE)
    _build(Path(sys.argv[1]))
