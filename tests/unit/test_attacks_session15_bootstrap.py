"""Session 15 (H5): a bootstrap port of other digits than ASCII's (``host:９０９２``, fullwidth)
passed Baton's checks: ``int()`` reads it as 9092, so ``check_reachable`` connected to 9092
and aiokafka (the worker) did too, while librdkafka (the SDK, the CLI's clients) parsed it as
port 0 and connected to ``host:0``, failing with errors that named another address. A port is
ASCII digits now, refused otherwise with the setting named and nothing repeated."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from baton.cli.main import _register, cli
from baton.schemas.errors import ConfigError
from baton.streams.net import parse_bootstrap

pytestmark = pytest.mark.unit

#: ports int() reads that librdkafka does not read as the same number
NOT_ASCII_PORTS = [
    "\uff19\uff10\uff19\uff12",  # fullwidth
    "\u0669\u0660\u0669\u0662",  # Arabic-Indic
    " 9092",
    "+9092",
    "9_092",
]


@pytest.mark.parametrize("port", NOT_ASCII_PORTS)
def test_a_port_of_other_digits_is_not_a_kafka_address(port: str) -> None:
    for bootstrap in (f"127.0.0.1:{port}", f"[::1]:{port}", f"PLAINTEXT://h:{port}"):
        with pytest.raises(ConfigError, match="BATON_BOOTSTRAP"):
            parse_bootstrap(bootstrap)


@pytest.mark.parametrize("port", NOT_ASCII_PORTS[:2])
def test_the_cli_refuses_it_in_one_line(port: str) -> None:
    _register()
    result = CliRunner().invoke(cli, ["kill", "--run", "r1", "--bootstrap", f"127.0.0.1:{port}"])
    assert result.exit_code == 2, result.output
    assert "bootstrap" in result.output.lower() and "Traceback" not in result.output


def test_ascii_ports_read_as_before() -> None:
    assert parse_bootstrap("a:9092, [::1]:19092,b,SASL_SSL://c:1") == [
        ("a", 9092),
        ("::1", 19092),
        ("b", 9092),
        ("c", 1),
    ]
