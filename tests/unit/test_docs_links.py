"""Every relative link of README.md and docs/ leads somewhere: the file exists and, with an
#anchor, a heading of that file has that anchor (as GitHub makes them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
_FENCE_RE = re.compile(r"^\s*```.*?^\s*```", re.S | re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE_RE.sub("", path.read_text(encoding="utf-8"))
    return {anchor(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def test_anchor_rules() -> None:
    assert anchor("The SQL endpoint") == "the-sql-endpoint"
    assert anchor("`governance.decisions`") == "governancedecisions"
    assert anchor("Incident view (`baton trace RUN_ID`)") == "incident-view-baton-trace-run_id"


def test_every_relative_link_leads_to_a_file_and_heading() -> None:
    broken = []
    for doc in DOCS:
        text = _FENCE_RE.sub("", doc.read_text(encoding="utf-8"))
        for target in _LINK_RE.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked here
            file_part, _, fragment = target.partition("#")
            path = (doc.parent / file_part).resolve() if file_part else doc
            if not path.exists():
                broken.append(f"{doc.name}: {target}: no file {path}")
            elif fragment and path.suffix == ".md" and fragment not in anchors(path):
                broken.append(f"{doc.name}: {target}: no heading #{fragment} in {path.name}")
    assert broken == []
