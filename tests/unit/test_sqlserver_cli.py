"""`baton sql`'s discovery of the SQL endpoint, before anything is opened."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.main import _register, cli
from baton.sinks.clickhouse import ENDPOINT_FILE

pytestmark = pytest.mark.unit


def test_an_endpoint_file_that_cannot_be_read_is_named_not_taken_for_no_endpoint(
    tmp_path: Path,
) -> None:
    # what another user's `baton up` leaves (mode 0600); a directory in its place reads the
    # same way for root, who runs these tests
    (tmp_path / "chdb" / ENDPOINT_FILE).mkdir(parents=True)
    _register()
    result = CliRunner().invoke(cli, ["sql", "--data-dir", str(tmp_path), "SELECT 1"])
    assert result.exit_code == 5, result.output
    assert f"cannot read the SQL endpoint's token in {tmp_path}/chdb/{ENDPOINT_FILE}" in (
        result.output
    )
    assert "--dsn http://baton:TOKEN@127.0.0.1:PORT" in result.output
