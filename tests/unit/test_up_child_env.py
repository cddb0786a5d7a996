"""`baton up` gives its children their settings through BATON_ variables; a child's own
option variable (click's BATON_WORKER_POLICY for `baton worker --policy`) would beat them. A
leftover one in the shell ran the worker under a looser policy than `--policy`, the start
naming the strict one (session 39): such variables are not passed on, and said."""

from __future__ import annotations

import click
import pytest

from baton.cli.main import _register, cli
from baton.cli.up_children import audit_children, without_overrides

pytestmark = pytest.mark.unit


def test_a_child_s_own_option_variable_never_overrides_what_up_gives_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _register()
    monkeypatch.setenv("BATON_WORKER_POLICY", "/tmp/loose.yaml")
    monkeypatch.setenv("BATON_WORKER_WORKER_DATA_DIR", "/tmp/elsewhere")
    monkeypatch.setenv("BATON_WORKER_APP_ID", "another")
    monkeypatch.setenv("BATON_SINK_CLICKHOUSE_DSN", "chdb:///tmp/other")
    monkeypatch.setenv("BATON_METRICS_PORT", "off")  # not one up gives: kept
    monkeypatch.setenv("BATON_ALERTS_DATA_DIR", "/tmp/another-stack")  # its record's bootstrap
    monkeypatch.setenv("baton_policy", "/tmp/loose.yaml")  # the settings read any case
    given = {
        "BATON_POLICY": "/data/policy-0123456789abcdef.yaml",
        "BATON_WORKER_DATA_DIR": "/data/worker",
        "BATON_APP_ID": "baton",
        "BATON_CLICKHOUSE_DSN": "chdb:///data/chdb",
    }
    children = [("worker", ("worker", "--web-port", "1")), *audit_children(None, "baton")]
    said: list[str] = []
    with click.Context(cli, info_name="baton"):
        env = without_overrides(given, children, said.append)
    for name in ("BATON_WORKER_POLICY", "BATON_WORKER_WORKER_DATA_DIR", "BATON_WORKER_APP_ID",
                 "BATON_SINK_CLICKHOUSE_DSN", "BATON_ALERTS_DATA_DIR", "baton_policy"):  # fmt: skip
        assert name not in env, name
    assert {k: env[k] for k in given} == given and env["BATON_METRICS_PORT"] == "off"
    (line,) = said
    assert "BATON_WORKER_POLICY" in line and "not passed to the stack's children" in line
