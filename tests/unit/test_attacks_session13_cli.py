"""Session 13 (H5): the commands' echo of what the caller typed, as a hostile or careless one
types it: `baton approvals --run` printed a 60 KB run id whole, and its control characters raw
(ESC, BEL, CR, a newline: a terminal's colours changed, a forged line started)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.main import _register, cli
from tests.chdb_audit import chdb_audit
from tests.unit.test_engine_support import Run, policy_with

pytestmark = pytest.mark.unit


@pytest.fixture
def audit(tmp_path: Path) -> str:
    run = Run(policy_with(), run_id="run-a", tenant="acme")
    chdb_audit(tmp_path / "chdb", [run.handoff("t1", "planner", "a")]).close()
    return f"chdb://{tmp_path / 'chdb'}"


@pytest.mark.parametrize(
    "run_id",
    ["r" * 60_000, "run\x1b[31mRED\x07\r\nX", "run\u202eevil"],
    ids=["60KB", "ctl", "bidi"],
)
def test_approvals_of_an_unknown_run_echo_its_id_escaped_and_cut(audit: str, run_id: str) -> None:
    _register()
    result = CliRunner().invoke(cli, ["approvals", "--run", run_id, "--dsn", audit])
    assert result.exit_code == 0, result.output
    line = result.stdout
    assert line.startswith("no pending approvals for run "), line
    assert len(line) < 200, f"{len(line)} characters"
    assert line.rstrip("\n").isprintable(), repr(line)


# ---------------------------------------------------------------------- credentials in a bootstrap
#: USER:PASSWORD@HOST with its '@' of another code point or escaped: the '@' test passed it,
#: streams.net took it for a bare IPv6 host, and "cannot reach Kafka at alice:s3cret..." said it
DISGUISED = ["alice:s3cret＠127.0.0.1:1", "alice:s3cret%40127.0.0.1:1", "alice:s3cret﹫h:1"]


@pytest.mark.parametrize("bootstrap", DISGUISED)
@pytest.mark.parametrize("how", ["option", "env"])
def test_a_disguised_user_password_bootstrap_is_refused_without_repeating_it(
    bootstrap: str, how: str
) -> None:
    _register()
    args = ["kill", "--run", "r1"]
    if how == "option":
        result = CliRunner().invoke(cli, [*args, "--bootstrap", bootstrap])
    else:
        result = CliRunner().invoke(cli, args, env={"BATON_BOOTSTRAP": bootstrap})
    assert result.exit_code == 2, result.output
    assert "s3cret" not in result.output and "BATON_SASL_PASSWORD" in result.output


@pytest.mark.parametrize("bootstrap", DISGUISED)
def test_the_sdk_refuses_a_disguised_user_password_bootstrap(bootstrap: str) -> None:
    from baton.streams.sdk import GovernanceClient

    with pytest.raises(ValueError) as refused:
        GovernanceClient(bootstrap)
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    "bootstrap", ["::1", "fe80::1%eth0", "[::1]:9092", "sasl_ssl://[::1]:9092", "h:1,[::2]:3"]
)
def test_ipv6_addresses_are_still_bootstraps(bootstrap: str) -> None:
    from baton.schemas.settings import checked_bootstrap

    assert checked_bootstrap(bootstrap) == bootstrap
