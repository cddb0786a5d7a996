"""Session 12 (H4): addresses in errors, attacked with hostile input.

A bootstrap holding a user and password (``alice:s3cret@host:9092``, or a URL's
``kafka://alice:s3cret@host``, as a ClickHouse DSN takes them) was taken as a host name:
every command's error, and each of librdkafka's log lines in an SDK client (~20 a second),
printed the password. A host name with a label over 63 characters (or an empty one) ended
every Kafka command in a UnicodeError traceback (idna), and a 60 KB one made a 60 KB line.
Each test fails before its fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from baton.cli.main import _register, cli
from baton.cli.options import build_settings
from baton.schemas.errors import BrokerUnavailable, ConfigError
from baton.schemas.settings import Settings
from baton.streams.net import check_reachable
from baton.streams.sdk.options import ClientOptions

pytestmark = pytest.mark.unit

SECRET = "s3cretPW9"
WITH_CREDENTIALS = [f"alice:{SECRET}@127.0.0.1:1", f"kafka://alice:{SECRET}@127.0.0.1:1"]


@pytest.mark.parametrize("bootstrap", WITH_CREDENTIALS)
def test_a_bootstrap_holding_a_password_is_refused_without_repeating_it(
    bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as cli_error:
        build_settings(bootstrap=bootstrap)
    assert "BATON_SASL_PASSWORD" in str(cli_error.value)
    with pytest.raises(ValueError) as sdk_error:
        ClientOptions.resolve(bootstrap)
    monkeypatch.setenv("BATON_BOOTSTRAP", bootstrap)
    with pytest.raises(ValidationError) as env_error:
        Settings()
    for error in (cli_error, sdk_error, env_error):
        assert SECRET not in str(error.value)


def test_baton_send_to_a_bootstrap_holding_a_password_never_prints_it(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"type":"run_finished","run_id":"r1","event_time":"2026-01-01T00:00:00Z"}\n')
    _register()
    result = CliRunner().invoke(
        cli, ["send", str(events), "--bootstrap", WITH_CREDENTIALS[0]], env={"COLUMNS": "200"}
    )
    assert result.exit_code != 0
    assert "BATON_SASL_USERNAME" in result.output
    assert SECRET not in result.output


@pytest.mark.parametrize(
    "host", ["h" * 64, "a..b", "h" * 60_000], ids=["64-char-label", "empty-label", "60-KB"]
)
def test_a_host_name_idna_refuses_is_named_not_a_traceback(host: str) -> None:
    with pytest.raises(BrokerUnavailable) as error:
        check_reachable(f"{host}:9092", 1.0)
    assert "not a host name" in str(error.value)
    assert len(str(error.value)) < 1_000


@pytest.mark.parametrize(
    "bootstrap",
    ["h" * 60_000 + ":9092", ",".join(f"127.0.0.1:{p}" for p in range(20_000, 20_300))],
    ids=["60-KB-host", "300-addresses"],
)
def test_the_sdks_unreachable_error_is_one_short_line(bootstrap: str) -> None:
    # the SDK's connect (BrokerWatch) named the whole bootstrap and librdkafka's words
    # naming it: 60 KB (a 60 KB host), 5 KB (300 addresses)
    from baton.streams.sdk import GovernanceClient

    client = GovernanceClient(bootstrap, connect_timeout=1, timeout=1)
    try:
        with pytest.raises(BrokerUnavailable) as error:
            client.channel.connect()
    finally:
        client.close()
    assert "cannot reach Kafka at" in str(error.value)
    assert len(str(error.value)) < 1_000
