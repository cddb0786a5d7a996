"""Session 13 (H5's F9, F12): `baton trace` against a forged row and a hostile run id.

F12: a writer of gov.decisions publishes an ``allow`` in a chained run with a ``chain_hash``
that is no worker's link (" ", "x", 64 hex): `baton audit verify` fails the run (the hash
does not recompute), but `trace` warned only at a missing hash, so it showed the forged
allow as the run's own step. It now warns at any hash that is not 32 lowercase hex (what
every worker writes, ``schemas.decision.is_link``, the SDK's rule too). A forger writing 32
hex characters passes the shape: only verify, which holds the chain key, names that row.
F9: a 60 KB run id the audit does not hold made a 60 KB error line, control characters
included; it is cut and escaped as verify's and approvals' are.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.schemas.decision import Decision, Outcome, Reason, is_link
from tests.chdb_audit import chdb_audit
from tests.unit.test_attacks_session12_audit import _gated_run

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("link", [" ", "x", "A" * 32, "a" * 64, "g" * 32])
def test_trace_warns_at_an_allow_whose_chain_hash_is_no_workers_link(
    tmp_path: Path, link: str
) -> None:
    from baton.cli.query_cmds import trace_cmd

    worker = _gated_run()
    forged = Decision.from_json(worker[1].to_json())
    forged.outcome, forged.reason, forged.approval_id = Outcome.ALLOW, Reason.OK, None
    forged.decision_id, forged.chain_hash = "f" * 32, link
    chdb_audit(tmp_path / "chdb", [worker[0], forged, *worker[1:]]).close()
    trace = CliRunner().invoke(trace_cmd, ["rs", "--dsn", f"chdb://{tmp_path / 'chdb'}"])
    assert trace.exit_code == 0, trace.output
    assert "WARNING: step 2: allow whose chain_hash" in trace.output
    assert "is no worker's link (32 lowercase hex)" in trace.output


def test_trace_of_the_workers_own_run_warns_at_nothing(tmp_path: Path) -> None:
    from baton.cli.query_cmds import trace_cmd

    worker = _gated_run()
    assert all(is_link(d.chain_hash) for d in worker)
    chdb_audit(tmp_path / "chdb", worker).close()
    trace = CliRunner().invoke(trace_cmd, ["rs", "--dsn", f"chdb://{tmp_path / 'chdb'}"])
    assert trace.exit_code == 0, trace.output
    assert "WARNING" not in trace.output


def test_trace_of_a_60_kb_run_id_the_audit_lacks_is_one_short_line(tmp_path: Path) -> None:
    from baton.cli.main import _register, cli

    _register()
    chdb_audit(tmp_path / "chdb", _gated_run()).close()
    run_id = "\x1b[2J\r" + "r" * 60_000
    trace = CliRunner().invoke(cli, ["trace", run_id, "--dsn", f"chdb://{tmp_path / 'chdb'}"])
    assert trace.exit_code == 2, trace.output
    assert "no decisions for run" in trace.stderr
    assert len(trace.stderr) < 1_000
    assert "\x1b" not in trace.stderr and "\r" not in trace.stderr


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0" * 32, True), ("0" * 31, False), (" " * 32, False), (None, False), (32, False)],
)
def test_is_link_is_the_shape_of_a_workers_chain_hash(value: object, expected: bool) -> None:
    assert is_link(value) is expected
