"""The commands count in English ("1 run", "2 runs"; H1, session 27: "audit verify: 1 runs"), and
`baton --help` lists the exit codes every command gives."""

from __future__ import annotations

import pytest

from baton.cli.wording import counted

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("n", "noun", "plural", "commas", "said"),
    [
        (1, "run", None, True, "1 run"),
        (0, "run", None, True, "0 runs"),
        (2, "run", None, True, "2 runs"),
        (12_000, "decision", None, True, "12,000 decisions"),
        (12_000, "decision", None, False, "12000 decisions"),
        (1, "policy", "policies", True, "1 policy"),
        (3, "policy", "policies", True, "3 policies"),
    ],
)
def test_counted(n: int, noun: str, plural: str | None, commas: bool, said: str) -> None:
    assert counted(n, noun, plural, commas=commas) == said


def test_baton_help_lists_every_exit_code_an_error_class_gives() -> None:
    # H1, session 27: exit codes were in some commands' --help only
    import re

    from click.testing import CliRunner

    from baton.cli.main import INTERRUPTED_EXIT, cli
    from baton.schemas import errors

    page = CliRunner().invoke(cli, ["--help"]).output
    listed = {int(n) for n in re.findall(r"^    (\d+) ", page.split("Exit codes:")[1], re.M)}
    given = {
        cls.exit_code
        for cls in vars(errors).values()
        if isinstance(cls, type)
        and issubclass(cls, errors.BatonError)
        and isinstance(cls.__dict__.get("exit_code"), int)
    }
    assert given <= listed and {0, INTERRUPTED_EXIT} <= listed, (given, listed)
    assert listed == given | {0, INTERRUPTED_EXIT}  # nothing listed that nothing gives
