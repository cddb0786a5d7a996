"""Session 14 (H5): a USER:PASSWORD bootstrap without a port slipped past session 13's check
(schemas/settings.checked_bootstrap): one ':' only, so not "a ':' too many", and
streams.net's "'alice:s3cret＠127.0.0.1' is not a Kafka address" printed the password."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from baton.cli.main import _register, cli
from baton.schemas.settings import checked_bootstrap

pytestmark = pytest.mark.unit

#: no port: the password sits where the port goes
PORTLESS = ["alice:s3cret%40127.0.0.1", "alice:s3cret＠127.0.0.1", "sasl_ssl://alice:s3cret＠h"]


@pytest.mark.parametrize("bootstrap", PORTLESS)
def test_a_portless_user_password_bootstrap_is_refused_without_repeating_it(
    bootstrap: str,
) -> None:
    _register()
    result = CliRunner().invoke(cli, ["kill", "--run", "r1", "--bootstrap", bootstrap])
    assert result.exit_code == 2, result.output
    assert "s3cret" not in result.output and "BATON_SASL_PASSWORD" in result.output


@pytest.mark.parametrize("bootstrap", PORTLESS)
def test_the_sdk_refuses_a_portless_user_password_bootstrap(bootstrap: str) -> None:
    from baton.streams.sdk import GovernanceClient

    with pytest.raises(ValueError) as refused:
        GovernanceClient(bootstrap)
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize("bootstrap", ["h", "h:9092", "h:", "PLAINTEXT://h:1,k:2", "10.0.0.1:9"])
def test_host_and_host_port_are_still_bootstraps(bootstrap: str) -> None:
    assert checked_bootstrap(bootstrap) == bootstrap
