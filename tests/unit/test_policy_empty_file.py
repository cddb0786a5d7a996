"""A policy *file* with no document (empty, only comments) is refused, not read as "no limits";
a tab in its indentation is named with what to do.

The first-hour walk (session 10) found `baton policy check` answering "ok" with every limit
unlimited for an empty or comments-only file, and the worker and `baton up` starting on it: a
truncated copy or a template not filled in failed open. An explicit ``{}`` still means the
defaults, and a policy update's text (gov.control, the SDK) is parsed as before.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.main import cli
from baton.cli.options import read_policy
from baton.schemas.errors import PolicyError
from baton.schemas.policy import load_policy, parse_policy

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text", ["", "\n\n", "# the limits\n# max_handoffs: 8\n", "---\n"])
def test_a_policy_file_without_a_document_is_refused_by_every_reader(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    for read in (read_policy, load_policy):
        with pytest.raises(PolicyError, match="holds no policy"):
            read(path)
    result = CliRunner().invoke(cli, ["policy", "check", str(path)])
    assert result.exit_code == 2, result.output
    assert "holds no policy" in result.output and "ok" not in result.output.split(":")[0]


def test_an_explicit_empty_mapping_is_still_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("{}\n")
    assert read_policy(path).multi_agent.max_handoffs is None


def test_a_policy_text_not_from_a_file_parses_as_before() -> None:
    assert parse_policy("").multi_agent.max_handoffs is None


def test_a_tab_in_the_indentation_is_named_with_what_to_do(tmp_path: Path) -> None:
    # PyYAML says only "found character '\t' that cannot start any token" (first-hour walk)
    path = tmp_path / "policy.yaml"
    path.write_text("multi_agent:\n\tmax_handoffs: 3\n")
    with pytest.raises(PolicyError, match=r"line 2, column 1.*indents with spaces"):
        read_policy(path)
