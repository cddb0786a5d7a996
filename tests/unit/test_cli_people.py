"""The people's commands without a broker: key files, the policy line, what a wrong key, name
or time does (one line, the error tree's exit code, nothing published), the audit rows an
approver reads, and which runs a verify treats as cut by retention."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.approvals_audit import _decision
from baton.cli.keys_cmds import policy_line
from baton.cli.main import _register, cli
from baton.cli.signer import shown
from baton.cli.verify_cmds import _partial_runs, _query, _since
from baton.schemas.decision import AUDIT_FIELDS, CHAIN_FIELDS, Outcome, Phase
from baton.schemas.policy import parse_policy
from baton.schemas.signing import load_private_key, new_private_key, public_key_text
from baton.sinks.chain_verify import CHAIN_COLUMNS

pytestmark = pytest.mark.unit


@pytest.fixture
def baton() -> CliRunner:
    _register()
    return CliRunner()


def _run(baton: CliRunner, *args: str) -> tuple[int, str, str]:
    result = baton.invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


def test_keys_new_writes_a_0600_key_and_prints_a_line_the_policy_accepts(
    baton: CliRunner, tmp_path: Path
) -> None:
    code, out, err = _run(baton, "keys", "new", "finance_lead", "--dir", str(tmp_path / "k"))
    assert code == 0, err
    path = tmp_path / "k" / "finance_lead.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o700
    line = out.strip()
    assert line == f'finance_lead: "{public_key_text(load_private_key(path))}"'
    policy = parse_policy(f"multi_agent:\n  approval:\n    keys:\n      {line}\n", "t")
    assert list(policy.multi_agent.approval.keys) == ["finance_lead"]
    assert policy.operators == {}
    assert parse_policy(f"operators:\n  {line}\n", "t").operators["finance_lead"]
    # show prints the same line from the file
    assert _run(baton, "keys", "show", str(path))[1].strip() == line


def test_keys_new_never_overwrites_a_key(baton: CliRunner, tmp_path: Path) -> None:
    assert _run(baton, "keys", "new", "oncall", "--dir", str(tmp_path))[0] == 0
    before = (tmp_path / "oncall.key").read_bytes()
    code, out, err = _run(baton, "keys", "new", "oncall", "--dir", str(tmp_path))
    assert code == 2 and out == ""
    assert f"key file {tmp_path}/oncall.key already exists" in err
    assert (tmp_path / "oncall.key").read_bytes() == before


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 200, "sp ace", "é"])
def test_keys_new_refuses_a_name_that_is_not_a_plain_file_name(
    baton: CliRunner, tmp_path: Path, name: str
) -> None:
    code, _, err = _run(baton, "keys", "new", name, "--dir", str(tmp_path))
    assert code == 2 and "key name" in err and "expected 1-128 letters" in err
    assert list(tmp_path.iterdir()) == []


# ("~", YAML's null, is no name at all: it holds no letter or digit, baton.schemas.names)
@pytest.mark.parametrize("name", ["yes", "No", "null", "on", "true", "123", "1e3"])
def test_a_name_yaml_would_read_as_a_bool_or_number_is_quoted(name: str) -> None:
    line = policy_line(name, public_key_text(new_private_key()))
    assert line.startswith(f'"{name}": ')
    policy = parse_policy(f"operators:\n  {line}\n", "t")
    assert list(policy.operators) == [name.lower()]  # names fold (baton.schemas.names)


def test_a_key_file_others_can_read_is_refused_before_anything_is_published(
    baton: CliRunner, tmp_path: Path
) -> None:
    _run(baton, "keys", "new", "finance_lead", "--dir", str(tmp_path))
    key = tmp_path / "finance_lead.key"
    key.chmod(0o644)
    # nothing listens on port 1: the key must be refused before any connection is tried
    for args in (
        ["approve", "apr_0", "--as", "finance_lead", "--key", str(key)],
        ["deny", "apr_0", "--as", "finance_lead", "--key", str(key), "--comment", "no"],
        ["kill", "--global", "--as", "finance_lead", "--key", str(key)],
    ):
        code, _, err = _run(baton, *args, "--bootstrap", "127.0.0.1:1")
        assert code == 2, (args, err)
        assert "readable by others (mode 644)" in err and "chmod 600" in err


def test_a_file_that_is_not_a_key_is_named(baton: CliRunner, tmp_path: Path) -> None:
    fake = tmp_path / "oncall.key"
    fake.write_text("ssh-ed25519 AAAA...\n")
    fake.chmod(0o600)
    code, _, err = _run(baton, "kill", "--global", "--as", "oncall", "--key", str(fake))
    assert code == 2 and f"key file {fake}: not a Baton private key" in err
    missing = tmp_path / "nope.key"
    code, _, err = _run(baton, "kill", "--global", "--as", "oncall", "--key", str(missing))
    assert code == 2 and f"key file {missing}: No such file" in err


def test_approve_and_deny_need_a_name_a_key_and_deny_a_comment(baton: CliRunner) -> None:
    assert "Missing option '--as'" in _run(baton, "approve", "apr_0", "--key", "k")[2]
    assert "Missing option '--key'" in _run(baton, "approve", "apr_0", "--as", "n")[2]
    code, _, err = _run(baton, "deny", "apr_0", "--as", "n", "--key", "k")
    assert code == 2 and "Missing option '--comment'" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["approve", "apr_" + "0" * 300], "expected an approval id"),
        (["approve", "apr_\x1b[2J"], "expected an approval id"),
        (["approve", "apr_0", "--comment", "x" * 1025], "at most 1024 characters, got 1025"),
        (["approve", "apr_0", "--as", "x" * 257], "expected the 1-256 printable characters"),
        (["kill", "--global", "--reason", "r" * 1025], "at most 1024 characters, got 1025"),
    ],
)
def test_hostile_arguments_are_usage_errors(
    baton: CliRunner, tmp_path: Path, args: list[str], expected: str
) -> None:
    extra = [] if "--as" in args else ["--as", "finance_lead"]
    code, _, err = _run(baton, *args, *extra, "--key", str(tmp_path / "k.key"))
    assert code == 2 and expected in err, err


def test_policy_publish_checks_the_file_before_the_key_or_kafka(
    baton: CliRunner, tmp_path: Path
) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("multi_agent: {max_handofs: 3}\n")
    code, _, err = _run(
        baton, "policy", "publish", str(bad), "--as", "oncall", "--key", str(tmp_path / "none")
    )
    assert code == 2 and "max_handofs" in err and "did you mean" in err


def test_since_takes_an_iso_time_or_an_age() -> None:
    assert _since(None, None, "2026-11-25T09:00:00Z") == datetime(2026, 11, 25, 9, tzinfo=UTC)  # type: ignore[arg-type]
    assert _since(None, None, "2026-11-25") == datetime(2026, 11, 25, tzinfo=UTC)  # type: ignore[arg-type]
    age = datetime.now(UTC) - _since(None, None, "30m")  # type: ignore[arg-type,operator]
    assert timedelta(minutes=29) < age < timedelta(minutes=31)
    for bad in ("yesterday", "30 minutes", "9" * 20 + "d", ""):
        with pytest.raises(Exception, match="expected an ISO time"):
            _since(None, None, bad)  # type: ignore[arg-type]


def test_verify_reads_every_chain_column_and_filters_by_run_and_time() -> None:
    sql, params = _query("run-1", datetime(2026, 1, 1, tzinfo=UTC))
    for column in CHAIN_COLUMNS:
        assert f"`{column}`" in sql
    assert "FINAL" in sql and "{run_id:String}" in sql and "{since:DateTime64" in sql
    assert params["run_id"] == "run-1"
    sql, params = _query(None, None)
    assert "WHERE" not in sql and params == {}


def test_runs_whose_oldest_row_is_near_the_retention_horizon_are_partial() -> None:
    at = 4 + CHAIN_FIELDS.index("decided_at")
    horizon = datetime(2026, 1, 10, tzinfo=UTC)

    def row(run: str, day: int, chained: bool = True) -> list[object]:
        r: list[object] = [None] * len(CHAIN_COLUMNS)
        r[0], r[at] = run, datetime(2026, 1, day, tzinfo=UTC)
        r[3] = "c" * 32 if chained else None
        return r

    rows = [row("old", 9), row("old", 12), row("new", 11), row("new", 15)]
    assert _partial_runs(rows, horizon) == frozenset({"old"})
    # a row outside the chain dates nothing (session 17: any writer of gov.decisions adds one)
    assert _partial_runs([*rows, row("new", 1, chained=False)], horizon) == frozenset({"old"})


def test_an_audit_row_reads_back_as_the_decision_it_was() -> None:
    now = datetime(2026, 11, 25, 9, tzinfo=UTC)
    values = {f: None for f in AUDIT_FIELDS}
    values.update(
        decision_id="d1",
        request_id="r1",
        run_id="run-1",
        tenant="acme",
        phase="pre_handoff",
        outcome="approval_required",
        reason="approval_required",
        depth=1,
        handoff_count=2,
        spent_usd=Decimal("1.250000"),
        tool_calls=3,
        reserved_usd=Decimal("0.000000"),
        policy_version="v1",
        approval_id="apr_1",
        approval_expires_at=now + timedelta(minutes=15),
        event_time=now,
        decided_at=now,
        request_digest="ab" * 8,
    )
    d = _decision([values[f] for f in AUDIT_FIELDS])  # the audit's columns
    assert (d.phase, d.outcome) == (Phase.PRE_HANDOFF, Outcome.APPROVAL_REQUIRED)
    assert d.spent_usd == 1.25 and d.request_digest == "ab" * 8


def test_the_kill_command_keeps_its_operator_flag_for_old_scripts(baton: CliRunner) -> None:
    # --operator is the old spelling of --as; both reach the same option
    code, _, err = _run(baton, "kill", "--global", "--operator", "x" * 300)
    assert code == 2 and "expected the 1-256 printable characters" in err


def test_a_fifo_or_device_as_key_file_is_refused_without_reading_it(
    baton: CliRunner, tmp_path: Path
) -> None:
    fifo = tmp_path / "oncall.key"
    os.mkfifo(fifo)  # reading it would block forever
    code, _, err = _run(baton, "kill", "--global", "--as", "oncall", "--key", str(fifo))
    assert code == 2 and f"key file {fifo}: expected a regular file" in err and "FIFO" in err
    code, _, err = _run(baton, "kill", "--global", "--as", "oncall", "--key", "/dev/zero")
    assert code == 2 and "got a device" in err


def test_names_and_texts_from_agents_never_reach_the_terminal_raw() -> None:
    assert shown("billing.refund.create") == "billing.refund.create"
    assert shown("refund\x1b[2K\rnothing to see") == "refund\\x1b[2K\\rnothing to see"
    assert shown("amount \u202e001$") == "amount \\u202e001$"  # a bidi override
    assert shown("café") == "café"


def test_a_policy_too_big_for_one_kafka_record_is_refused_before_signing(
    baton: CliRunner, tmp_path: Path
) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("multi_agent: {max_handoffs: 3}\n" + "# padding\n" * 60_000)
    code, _, err = _run(
        baton, "policy", "publish", str(big), "--as", "oncall", "--key", str(tmp_path / "k")
    )
    # a worker reads a control record of at most MAX_EVENT_BYTES (session 17: 512 KiB were taken)
    assert code == 2 and "a worker reads at most 65,536" in err


def test_a_run_or_approval_the_audit_does_not_hold_is_bad_input_not_a_verdict(
    baton: CliRunner, tmp_path: Path
) -> None:
    """Exit 1 is a command's verdict (`audit verify`: tampering found): a mistyped run id or
    approval id is bad input, exit 2, so a script cannot take it for a failed chain."""
    from tests.chdb_audit import chdb_audit

    chdb_audit(tmp_path / "chdb", []).close()
    dsn = ["--dsn", f"chdb://{tmp_path / 'chdb'}"]
    code, _, err = _run(baton, "audit", "verify", "--run", "run_nope", *dsn)
    assert code == 2 and "no decisions for run 'run_nope'" in err
    code, _, err = _run(baton, "trace", "run_nope", *dsn)
    assert code == 2 and "no decisions for run 'run_nope'" in err
    _run(baton, "keys", "new", "finance_lead", "--dir", str(tmp_path / "k"))
    key = str(tmp_path / "k" / "finance_lead.key")
    for args in (
        ["approve", "apr_0", "--as", "finance_lead", "--key", key],
        ["deny", "apr_0", "--as", "finance_lead", "--key", key, "--comment", "no"],
    ):
        code, out, err = _run(baton, *args, *dsn, "--bootstrap", "127.0.0.1:1")
        assert code == 2 and out == "", (args, err)
        assert "approval 'apr_0': not in the audit" in err
