"""Session 18 (H7, review of H5's F9 and F7): two more settings a careless operator writes.

F9 refused a `--metrics-port` another process holds before `baton up` starts anything; the
ports `baton up` itself hands out were not compared: ``--sql-port P --metrics-port P`` (or
the broker's ``--port P`` with either) passed both probes, since nothing held P yet; then the
worker and the sink (or the broker) raced for P and the loser exited at every restart
(measured: the sink exited 5 times, `baton up` gave up after 43 s). Refused at once now.

F7 refused ``chdb:`` and ``chdb://`` (``chdb:$AUDIT_DIR`` with the variable unset); the
documented absolute form with the variable unset, ``chdb:///$AUDIT_DIR``, is ``chdb:///``: the
audit was opened in the filesystem root (as root, chDB's files written into /; a later start
with the variable set found none of it). Refused now, naming the forms.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.schemas.errors import ConfigError
from baton.sinks.clickhouse import parse_dsn
from baton.streams.net import free_port

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "ports",
    [("--sql-port", "--metrics-port"), ("--port", "--metrics-port"), ("--port", "--sql-port")],
    ids=["sql-metrics", "broker-metrics", "broker-sql"],
)
def test_baton_up_refuses_one_port_given_twice_before_starting_anything(
    tmp_path: Path, ports: tuple[str, str]
) -> None:
    from click.testing import CliRunner

    from baton.cli.main import _register, cli

    port = str(free_port())
    _register()
    args = ["up", "--data-dir", str(tmp_path / "d"), ports[0], port, ports[1], port]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == ConfigError.exit_code, result.output
    assert f"{ports[0]} and {ports[1]}" in result.output and port in result.output
    assert not (tmp_path / "d" / "logs").exists()  # no broker, no child was started


def test_baton_up_with_no_audit_does_not_compare_the_sql_port(tmp_path: Path) -> None:
    """--no-audit serves no SQL: a --sql-port equal to another port is not refused for it."""
    from baton.cli.up_ports import refuse_shared_ports

    refuse_shared_ports(9092, None, 9092 + 1)
    refuse_shared_ports(0, 0, 0)  # 0: a free port each
    refuse_shared_ports(None, None, None)


@pytest.mark.parametrize("dsn", ["chdb:///", "chdb:/", "chdb:///.", "chdb:/.."])
def test_a_chdb_dsn_naming_the_filesystem_root_is_refused(dsn: str) -> None:
    with pytest.raises(ConfigError, match="filesystem root"):
        parse_dsn(dsn)


def test_a_chdb_dsn_naming_a_directory_under_the_root_is_taken() -> None:
    assert parse_dsn("chdb:///var/lib/baton").chdb_path == Path("/var/lib/baton")
