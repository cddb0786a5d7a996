"""Session 18 (H5): settings a careless operator writes, each refused with what it would do.

F7: ``chdb:`` and ``chdb://`` (a DSN whose directory is empty: ``chdb:$AUDIT_DIR`` with the
variable unset) were taken as the in-memory audit: the sink wrote every decision into memory
and lost them at its exit, `baton audit verify` and a restart's restore found nothing. Only
the documented ``chdb://memory`` (and ``chdb::memory:``) mean memory now; an empty directory is
refused, naming the forms.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from baton.schemas.errors import ConfigError
from baton.sinks.clickhouse import parse_dsn

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("dsn", ["chdb:", "chdb://"])
def test_a_chdb_dsn_naming_no_directory_is_refused_not_an_audit_in_memory(dsn: str) -> None:
    with pytest.raises(ConfigError, match="no directory"):
        parse_dsn(dsn)


@pytest.mark.parametrize("dsn", ["chdb://memory", "chdb::memory:", "chdb:memory"])
def test_the_in_memory_audit_is_still_asked_for_by_name(dsn: str) -> None:
    target = parse_dsn(dsn)
    assert target.kind == "chdb" and target.chdb_path is None


def test_baton_up_refuses_a_taken_metrics_port_before_starting_anything(tmp_path: Path) -> None:
    """`baton up --metrics-port P` with P taken started the stack, and the worker exited on
    the port at every restart: `baton up` ended after ~35 s of restarts. Refused at once now,
    as a taken --sql-port is."""
    from click.testing import CliRunner

    from baton.cli.main import _register, cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _register()
        args = ["up", "--data-dir", str(tmp_path / "d"), "--metrics-port", str(port)]
        result = CliRunner().invoke(cli, [*args, "--sql-port", "off"])
    assert result.exit_code == ConfigError.exit_code, result.output
    assert f"127.0.0.1:{port}" in result.output and "--metrics-port 0" in result.output
    assert not (tmp_path / "d" / "logs").exists()  # no broker, no child was started
