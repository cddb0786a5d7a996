"""The docs' code blocks follow the docs test's convention (tests/docs_blocks.py), and its
reader does what the convention says; the blocks themselves run in
tests/integration/test_docs.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs_blocks import (
    DIRECTIVES,
    RUN_LANGUAGES,
    Block,
    extract_blocks,
    output_matches,
    split_commands,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _all_blocks() -> list[Block]:
    return [block for path in DOCS for block in extract_blocks(path)]


def test_every_directive_is_known_and_complete() -> None:
    problems = []
    for block in _all_blocks():
        for name, value in block.directives.items():
            if name not in DIRECTIVES:
                problems.append(f"{block.where}: unknown directive {name!r} (known: {DIRECTIVES})")
            elif name in ("skip", "background", "file", "exit") and not value:
                problems.append(f"{block.where}: `{name}` needs a value (skip: the reason)")
            elif name == "exit" and not all(c.isdigit() for c in value.split()):
                problems.append(f"{block.where}: exit codes must be numbers, got {value!r}")
    assert problems == []


def test_every_block_in_a_language_that_runs_is_run_or_skipped_with_a_reason() -> None:
    unmarked = [
        f"{b.where} ({b.lang}): neither run nor skipped; a YAML block that is not a policy "
        "needs `file NAME` or `skip REASON`"
        for b in _all_blocks()
        if b.lang in RUN_LANGUAGES and not b.runs and not b.skipped
    ]
    assert unmarked == []


def test_skips_stay_few() -> None:
    skipped = [b.where for b in _all_blocks() if b.skipped]
    runs = [b.where for b in _all_blocks() if b.runs]
    # a skip is for what cannot run on one machine (root, Apache Kafka, a server): at most a
    # quarter of the blocks, each with its reason (checked above)
    assert len(runs) >= 3 * len(skipped), f"{len(skipped)} skipped, {len(runs)} run: {skipped}"


def _block(text: str, lang: str = "console", tmp: Path | None = None) -> Block:
    return Block(tmp or Path("x.md"), 1, lang, text)


def test_console_commands_take_continuations_heredocs_and_their_output() -> None:
    block = _block(
        "$ baton send <<'EOF'\n{\"a\": 1}\n$ not a prompt inside the heredoc\nEOF\n"
        '1 event(s) sent\n\n$ baton sql \\\n>   "SELECT 1"\nx\n-\n1\n'
    )
    first, second = split_commands(block)
    assert first.text.endswith("EOF") and "$ not a prompt" in first.text
    assert first.expected == ("1 event(s) sent",)
    assert second.text == 'baton sql \\\n  "SELECT 1"'
    assert second.expected == ("x", "-", "1")
    assert second.line == 8


def test_extract_reads_fences_languages_and_the_directives_right_before_them(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "d.md"
    doc.write_text(
        "text\n<!-- docs-test: skip no broker here -->\n\n```sh\nls\n```\n"
        "<!-- docs-test: exit 1 -->\nprose between\n```console\n$ false\n```\n"
        "  ```python\n  print(1)\n  ```\n"
    )
    sh, console, python = extract_blocks(doc)
    assert (sh.lang, sh.line, sh.directives) == ("sh", 4, {"skip": "no broker here"})
    assert console.directives == {}  # prose in between: the comment is not this block's
    assert python.text == "print(1)\n"  # the list-item indent is removed


@pytest.mark.parametrize(
    ("expected", "actual", "matches"),
    [
        (("a 1", "b 2"), "a 1\nb 2\n", True),
        (("a 1",), "a 1\nb 2\n", False),  # an unshown line is a difference
        (("a …", "b ..."), "a 1\nb 2", True),
        (("...",), "anything\nat all", True),
        (("start", "...", "end"), "start\nend", True),
        (("start", "...", "end"), "start\nx\ny\nend", True),
        (("start", "...", "end"), "start\nx\ny", False),
        (("ready bootstrap=127.0.0.1:PORT",), "ready bootstrap=127.0.0.1:40123", True),
        (("ready bootstrap=127.0.0.1:PORT",), "ready bootstrap=127.0.0.1:x", False),
        (("apr_…  run_1",), "apr_0a1b2c  run_1", True),
        (("a.b",), "aXb", False),  # everything but the placeholders is literal
        (("trailing  ",), "trailing", True),
    ],
)
def test_output_matching(expected: tuple[str, ...], actual: str, matches: bool) -> None:
    assert output_matches(expected, actual) is matches
