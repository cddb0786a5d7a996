"""Every command and snippet of README.md and docs/ runs as written against a real stack.

The blocks are found and read by tests/docs_blocks.py (its docstring is the convention).
One ``baton up`` — the README's own block — runs in a fresh tour folder that holds what a
clone holds (``.venv``, ``policy.example.yaml``, ``docs/``, ``examples/``), and every file's
blocks run in it in reading order: README.md first, then the pages of docs/. Where a doc
says ``127.0.0.1:PORT`` (the reader copies it from the ready line) the test writes the
broker's address; the SQL endpoint gets a free port (``--sql-port 0``) instead of 8123, written
where the docs say 127.0.0.1:8123, so a developer's own ``baton up`` does not collide with it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs_blocks import Block, Command, extract_blocks, output_matches, split_commands
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: reading order: the README's tour starts the stack and makes the runs the pages look at
FIRST = ("README.md", "docs/client.md", "docs/audit.md")
#: what a clone has that the docs use, linked into the tour folder
CLONE = (".venv", "policy.example.yaml", "docs", "examples", "bench", "schemas")
COMMAND_TIMEOUT_S = 120
#: how long a `wait` block's command is re-run until it shows what the docs show
WAIT_S = 20
#: DOCS_TEST_SHOW=1 (with pytest -s) prints what every console command printed: the text to
#: paste into a doc after changing what a command prints
SHOW = os.environ.get("DOCS_TEST_SHOW") == "1"


def doc_files() -> list[Path]:
    """README.md and every page of docs/, in reading order."""
    rest = sorted(p for p in (ROOT / "docs").glob("*.md") if f"docs/{p.name}" not in FIRST)
    return [ROOT / name for name in FIRST] + rest


class Tour:
    """A folder a reader works in, with the README's `baton up` running in it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        for name in CLONE:
            (folder / name).symlink_to(ROOT / name)
        self.sql_port = 0  # picked by baton up (--sql-port 0), read from its ready line
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        self.env = {
            **env,
            "PATH": f"{folder / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "BATON_SQL_PORT": "0",
            "NO_COLOR": "1",
        }
        self.bootstrap = ""
        self.token = ""
        self.snippet_output = ""  # what the last python block printed
        self.approval_id = "apr_…"  # the newest approval id a command printed
        self.up: subprocess.Popen[str] | None = None
        self.up_lines: list[str] = []

    # ------------------------------------------------------------------ the stack
    def start(self, block: Block) -> None:
        """Start the block's command in the background; wait for its ``background`` text."""
        until = block.directives["background"]
        (command,) = split_commands(block)
        self.up = subprocess.Popen(
            ["bash", "-c", f"exec {command.text}"],
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read_up, daemon=True).start()
        ready = wait_for(
            lambda: next((ln for ln in self.up_lines if until in ln), None),
            120,
            message=lambda: (
                f"{block.where}: {until!r} from {command.text!r}:\n"
                + "\n".join(self.up_lines[-30:])
            ),
        )
        match = re.search(r"bootstrap=(\S+)", ready)
        self.bootstrap = match.group(1) if match else ""
        match = re.search(r"sql=http://baton:([^@\s]+)@127\.0\.0\.1:(\d+)", ready)
        assert match, f"no sql= DSN in the ready line: {ready}"
        self.token, self.sql_port = match.group(1), int(match.group(2))

    def _read_up(self) -> None:
        assert self.up is not None and self.up.stdout is not None
        for line in self.up.stdout:
            self.up_lines.append(line.rstrip())

    def stop(self) -> None:
        if self.up is None or self.up.poll() is not None:
            return
        self.up.send_signal(signal.SIGTERM)
        try:
            self.up.wait(40)
        except subprocess.TimeoutExpired:
            self.up.kill()
            self.up.wait(10)

    # ------------------------------------------------------------------ running blocks
    def reading(self, doc: Path) -> None:
        """From now on commands run for a reader of ``doc``: a home folder of its own (the
        keys one page makes are not another page's)."""
        home = self.folder / "home" / doc.stem
        home.mkdir(parents=True, exist_ok=True)
        self.env["HOME"] = str(home)

    def as_run(self, text: str) -> str:
        """``text`` with the values a reader copies from the ready line filled in."""
        text = text.replace("apr_…", self.approval_id)
        text = text.replace("127.0.0.1:PORT", self.bootstrap)
        text = text.replace("HOST:PORT", self.bootstrap)
        text = text.replace("baton:TOKEN", f"baton:{self.token}")
        return text.replace("127.0.0.1:8123", f"127.0.0.1:{self.sql_port}")

    def run(self, argv: list[str], stdin: str | None = None) -> tuple[int, str]:
        try:
            done = subprocess.run(
                argv,
                cwd=self.folder,
                env=self.env,
                input=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            return -1, f"timed out after {COMMAND_TIMEOUT_S} s\n{exc.output or ''}"
        ids = re.findall(r"\bapr_[0-9a-f]{8,}", done.stdout)
        self.approval_id = ids[-1] if ids else self.approval_id
        return done.returncode, done.stdout

    def run_block(self, block: Block) -> list[str]:
        """Run one block; the problems found (empty: it does what the docs say)."""
        if block.lang == "console":
            return self._console(block)
        if "file" in block.directives:
            (self.folder / block.directives["file"]).write_text(block.text)
            return []
        if block.lang == "sh":
            script = "set -eo pipefail\ntrap 'echo \"failed: $BASH_COMMAND\" >&2' ERR\n"
            code, out = self.run(["bash", "-c", script + self.as_run(block.text)])
            return self._exit(block, code, out, "the block")
        if "output" in block.directives:
            return self._printed(block)
        if block.lang == "python":
            snippet = self.folder / f"snippet_{block.path.stem}_{block.line}.py"
            snippet.write_text(self.as_run(block.text))
            code, out = self.run([str(self.folder / ".venv/bin/python"), str(snippet)])
            self.snippet_output = out
            return self._exit(block, code, out, "the snippet")
        if block.lang == "yaml":
            policy = self.folder / f"policy_{block.path.stem}_{block.line}.yaml"
            policy.write_text(block.text)
            code, out = self.run(["baton", "policy", "check", str(policy)])
            return self._exit(block, code, out, "baton policy check")
        return [f"{block.where}: no way to run a {block.lang!r} block"]

    def _printed(self, block: Block) -> list[str]:
        """An ``output`` block: what the python block before it printed."""
        expected = tuple(block.text.rstrip("\n").splitlines())
        if output_matches(expected, self.snippet_output):
            return []
        return [
            f"{block.where}: the snippet before it printed:\n{_tail(self.snippet_output)}\n"
            f"--- the docs show:\n{block.text}"
        ]

    def _exit(self, block: Block, code: int, out: str, what: str) -> list[str]:
        expected = _exit_codes(block)
        if code in expected:
            return []
        return [f"{block.where}: {what} exited {code}, expected {expected}:\n{_tail(out)}"]

    def _console(self, block: Block) -> list[str]:
        """Run each command; its exit code and output must be what the block shows (``wait``:
        re-run until they are, for up to WAIT_S: the audit is written within a second)."""
        problems: list[str] = []
        for command in split_commands(block):
            deadline = time.monotonic() + (WAIT_S if "wait" in block.directives else 0)
            while True:
                problem = self._one(block, command)
                if problem is None or time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
            if problem is not None:
                problems.append(problem)
        return problems

    def _one(self, block: Block, command: Command) -> str | None:
        expected_code = _exit_codes(block)
        code, out = self.run(["bash", "-c", self.as_run(command.text)])
        where = f"{block.path.name}:{command.line} `{command.text.splitlines()[0]}`"
        if SHOW:
            print(f"\n--- {where} (exit {code})\n{out}", end="")
        if code not in expected_code:
            return f"{where} exited {code}, expected {expected_code}:\n{_tail(out)}"
        expected = tuple(
            e.replace("127.0.0.1:8123", f"127.0.0.1:{self.sql_port}")
            for e in command.expected or ()
        )
        if command.expected is not None and not output_matches(expected, out):
            shown = "\n".join(command.expected)
            return f"{where} printed:\n{_tail(out)}\n--- the docs show:\n{shown}"
        return None


def _exit_codes(block: Block) -> set[int]:
    """The exit codes the block's commands may end with (``exit 0 1``: either)."""
    return {int(code) for code in block.directives.get("exit", "0").split()}


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tour]:
    t = Tour(tmp_path_factory.mktemp("tour"))
    (up,) = [b for b in extract_blocks(ROOT / "README.md") if "background" in b.directives]
    try:
        t.reading(ROOT / "README.md")
        t.start(up)
        yield t
    finally:
        t.stop()


def test_every_block_of_the_docs_runs_as_written(tour: Tour) -> None:
    started = time.monotonic()
    problems: list[str] = []
    timings: list[tuple[float, str]] = []
    ran = 0
    for path in doc_files():
        tour.reading(path)
        for block in extract_blocks(path):
            if not block.runs or "background" in block.directives:
                continue
            ran += 1
            block_started = time.monotonic()
            problems += tour.run_block(block)
            timings.append((time.monotonic() - block_started, block.where))
    problems += _disagreements(tour)
    took = time.monotonic() - started
    slowest = ", ".join(f"{where} {s:.1f} s" for s, where in sorted(timings, reverse=True)[:6])
    print(f"docs test: {ran} blocks in {took:.1f} s; slowest: {slowest}")
    up = "\n".join(tour.up_lines[-40:])
    assert not problems, (
        f"{len(problems)} doc blocks do not do what the docs say:\n\n"
        + "\n\n".join(problems)
        + f"\n\n--- baton up (exit {tour.up.poll() if tour.up else None}) printed:\n{up}"
    )


def test_every_analyst_query_runs_through_baton_sql(tour: Tour) -> None:
    code, out = tour.run(["bash", "-c", "baton sql - < docs/queries.sql"])
    names = re.findall(r"^-- name: (\S+)", (ROOT / "docs/queries.sql").read_text(), re.M)
    assert code == 0, out
    headers = re.findall(r"^-- \d+: (\S+)$", out, re.M)
    assert headers == names and len(names) >= 7


def _disagreements(tour: Tour) -> list[str]:
    """After every block ran (the example orchestrator under policy.example.yaml, which the
    README publishes): handoffs refused for a reason that means the examples and the example
    policy disagree."""
    query = (
        "SELECT reason, count() FROM governance.decisions FINAL WHERE reason IN "
        "('delegation_cycle', 'approver_not_permitted', 'role_not_permitted') GROUP BY reason"
    )
    code, out = tour.run(["baton", "sql", "-f", "csv", query])
    if code == 0 and out.strip() in ("", "reason,count()"):
        return []
    return [f"the examples and policy.example.yaml disagree (exit {code}):\n{out}"]
