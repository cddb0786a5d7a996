"""The code blocks of README.md and docs/*.md, and what the docs test does with each.

The convention (tests/integration/test_docs.py runs it):

* ```` ```sh ````: the block runs as one bash script (``set -e``) in the tour folder and must
  exit 0; the first command that fails is named.
* ```` ```console ````: ``$ command`` lines run the same way; the lines after one, up to the
  next ``$``, are its expected output (stdout and stderr together), compared line by line
  by :func:`output_matches`.
* ```` ```python ````: the block runs as a script (``python snippet.py``) and must exit 0.
* ```` ```yaml ```` with a ``multi_agent``, ``tenants`` or ``operators`` key: a policy,
  checked with ``baton policy check``.
* a block in any other language, or none (diagrams, sample records, output shown apart):
  prose, not run.

An HTML comment right before a block changes that, one per line:

* ``<!-- docs-test: skip REASON -->`` — the block is not run; the reason is required;
* ``<!-- docs-test: background UNTIL -->`` — its one command is started in the background
  and the test waits until its output shows UNTIL (``baton up``);
* ``<!-- docs-test: exit CODE ... -->`` — every command of the block must exit with one of
  these codes;
* ``<!-- docs-test: file NAME -->`` — the block is written to NAME in the tour folder (for
  the commands after it);
* ``<!-- docs-test: output -->`` — the block (any language) is what the python block before
  it prints, compared as a console command's output;
* ``<!-- docs-test: wait -->`` — a console command is re-run until it shows its output (for a
  few seconds: the audit sink stores a decision within about a second).

An ``apr_…`` in a command is the approval id the commands before it printed last (a reader
copies it from ``baton approvals``).

Expected output may hold placeholders for what varies: ``...`` or ``…`` anywhere in a line
matches any text; a line of only ``...`` matches any number of lines; ``PORT``, ``TOKEN``
and ``apr_…`` match one word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DIRECTIVES",
    "Block",
    "Command",
    "extract_blocks",
    "output_matches",
    "policy_yaml",
    "split_commands",
]

DIRECTIVES = ("skip", "background", "exit", "file", "wait", "output")
RUN_LANGUAGES = ("sh", "console", "python", "yaml")

_FENCE_RE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
_DIRECTIVE_RE = re.compile(r"^\s*<!--\s*docs-test:\s*(\w+)\s*(.*?)\s*-->\s*$")
_HEREDOC_RE = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, text and docs-test directives."""

    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    directives: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def skipped(self) -> bool:
        return "skip" in self.directives

    @property
    def runs(self) -> bool:
        if self.skipped:
            return False
        if "output" in self.directives:
            return True
        if self.lang == "yaml":
            return policy_yaml(self.text) or "file" in self.directives
        return self.lang in RUN_LANGUAGES


@dataclass(frozen=True)
class Command:
    """One shell command of a block, and the output the docs show for it (console blocks)."""

    text: str
    line: int
    expected: tuple[str, ...] | None = None


def extract_blocks(path: Path) -> list[Block]:
    """Every fenced block of the markdown file ``path``, with the directives before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE_RE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, lang = opening.group(1), opening.group(2).lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        blocks.append(Block(path, i + 1, lang, "\n".join(body) + "\n", _directives(lines, i)))
        i = j + 1
    return blocks


def _directives(lines: list[str], fence: int) -> dict[str, str]:
    """The docs-test comments on the lines right before ``fence`` (blank lines allowed)."""
    found: dict[str, str] = {}
    k = fence - 1
    while k >= 0 and (not lines[k].strip() or _DIRECTIVE_RE.match(lines[k])):
        match = _DIRECTIVE_RE.match(lines[k])
        if match:
            found[match.group(1)] = match.group(2)
        k -= 1
    return found


def policy_yaml(text: str) -> bool:
    """True when a YAML block is a policy document (it has a policy's top-level key)."""
    return bool(re.search(r"^(multi_agent|tenants|operators):", text, re.M))


def split_commands(block: Block) -> list[Command]:
    """The commands of a console block with their expected output (or of a sh block, one per
    line with its continuations and here-document; no expected output)."""
    lines = block.text.splitlines()
    commands: list[Command] = []
    i = 0
    console = block.lang == "console"
    while i < len(lines):
        line = lines[i]
        if console and not line.startswith("$ "):
            i += 1  # output of no command (there is none before the first $)
            continue
        if not console and (not line.strip() or line.lstrip().startswith("#")):
            i += 1
            continue
        start = i
        text, i = _one_command(lines, i, strip_prompt=console)
        expected: tuple[str, ...] | None = None
        if console:
            out: list[str] = []
            while i < len(lines) and not lines[i].startswith("$ "):
                out.append(lines[i])
                i += 1
            while out and not out[-1].strip():
                out.pop()
            expected = tuple(out)
        commands.append(Command(text, block.line + 1 + start, expected))
    return commands


def _one_command(lines: list[str], i: int, *, strip_prompt: bool) -> tuple[str, int]:
    """The command starting at line ``i`` (continuations and here-documents included) and
    the index of the line after it."""
    first = lines[i][2:] if strip_prompt else lines[i]
    parts = [first]
    i += 1
    while parts[-1].rstrip().endswith("\\") and i < len(lines):
        parts.append(lines[i][2:] if strip_prompt and lines[i].startswith("> ") else lines[i])
        i += 1
    heredoc = _HEREDOC_RE.search("\n".join(parts))
    if heredoc:
        end = heredoc.group(2)
        while i < len(lines):
            parts.append(lines[i])
            i += 1
            if lines[i - 1].strip() == end:
                break
    return "\n".join(parts), i


_WORD_PLACEHOLDERS = {"PORT": r"\d+", "TOKEN": r"[\w-]+", "apr_…": r"apr_[0-9a-f]+"}


def _line_pattern(expected: str) -> re.Pattern[str]:
    pieces = re.split(r"(\.\.\.|…|PORT|TOKEN|apr_…)", expected.rstrip())
    regex = ""
    for piece in pieces:
        if piece in ("...", "…"):
            regex += ".*?"
        elif piece in _WORD_PLACEHOLDERS:
            regex += _WORD_PLACEHOLDERS[piece]
        else:
            regex += re.escape(piece)
    return re.compile(regex + r"\s*$")


def output_matches(expected: tuple[str, ...], actual: str) -> bool:
    """True when ``actual`` reads as ``expected`` line by line (placeholders: module doc)."""
    return _match(list(expected), [ln.rstrip() for ln in actual.rstrip("\n").splitlines()])


def _match(expected: list[str], actual: list[str]) -> bool:
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head.strip() in ("...", "…"):
        return any(_match(rest, actual[k:]) for k in range(len(actual) + 1))
    if not actual or not _line_pattern(head).match(actual[0]):
        return False
    return _match(rest, actual[1:])
