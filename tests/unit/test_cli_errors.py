"""What a user sees when the CLI is pointed at the wrong thing: one line naming the file or
address and what is wrong, the exit code of the error tree, never a traceback."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.main import _register, cli
from baton.cli.options import MAX_POLICY_BYTES, read_policy
from baton.schemas.errors import BrokerUnavailable, ConfigError, PolicyError
from baton.streams.net import check_reachable, free_port, parse_bootstrap

pytestmark = pytest.mark.unit


@pytest.fixture
def baton() -> CliRunner:
    _register()
    return CliRunner()


def _check(baton: CliRunner, path: Path | str) -> tuple[int, str]:
    result = baton.invoke(cli, ["policy", "check", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfemulti_agent: {}\n", "is not UTF-8 text (byte 0xff at offset 0)"),
        ("multi_agent: {}\n".encode("utf-16"), "is not UTF-8 text (byte 0xff at offset 0)"),
        (b"multi_agent:\n  max_handoffs: 3\n# caf\xe9\n", "is not UTF-8 text (byte 0xe9 at"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", "holds a NUL byte at offset 7"),
    ],
    ids=["latin1-bom", "utf16", "latin1-comment", "binary"],
)
def test_policy_check_of_a_file_that_is_not_utf8_text_is_one_line(
    baton: CliRunner, tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(content)
    code, stderr = _check(baton, path)
    assert code == PolicyError.exit_code == 2
    (line,) = stderr.strip().splitlines()
    assert line.startswith(f"baton: error: {path}: ") and expected in line


def test_policy_check_of_a_directory_is_one_line(baton: CliRunner, tmp_path: Path) -> None:
    code, stderr = _check(baton, tmp_path)
    assert code == 2
    assert (
        stderr.strip()
        == f"baton: error: {tmp_path}: is a directory, expected a policy YAML file (a few KB)"
    )


def test_policy_check_of_a_fifo_does_not_block(baton: CliRunner, tmp_path: Path) -> None:
    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    code, stderr = _check(baton, fifo)  # reading it would wait for a writer forever
    assert code == 2 and "is not a regular file" in stderr


def test_policy_check_of_a_missing_file_names_it(baton: CliRunner, tmp_path: Path) -> None:
    code, stderr = _check(baton, tmp_path / "nope.yaml")
    assert code == 2
    assert stderr.strip() == (
        f"baton: error: {tmp_path / 'nope.yaml'}: cannot read policy file: "
        "No such file or directory"
    )


def test_an_oversized_policy_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * MAX_POLICY_BYTES + b"\n")
    with pytest.raises(PolicyError, match=f"larger than {MAX_POLICY_BYTES} bytes"):
        read_policy(path)


def test_a_utf8_policy_with_a_bom_and_non_ascii_comments_loads(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes("\ufeffmulti_agent:\n  max_handoffs: 3  # café\n".encode())
    assert read_policy(path).multi_agent.max_handoffs == 3
    assert read_policy(None).multi_agent.max_handoffs == 8  # the seed


# ------------------------------------------------------------------ Kafka addresses


@pytest.mark.parametrize(
    ("bootstrap", "addresses"),
    [
        ("127.0.0.1:9092", [("127.0.0.1", 9092)]),
        ("kafka", [("kafka", 9092)]),
        ("a:1, b:2", [("a", 1), ("b", 2)]),
        ("SASL_SSL://broker.example:9093", [("broker.example", 9093)]),
        ("[::1]:19092", [("::1", 19092)]),
    ],
)
def test_bootstrap_lists_parse_as_librdkafka_reads_them(
    bootstrap: str, addresses: list[tuple[str, int]]
) -> None:
    assert parse_bootstrap(bootstrap) == addresses


@pytest.mark.parametrize("bootstrap", ["", " , ", "host:port", "host:0", "host:70000", ":9092"])
def test_a_malformed_bootstrap_is_a_config_error_naming_the_entry(bootstrap: str) -> None:
    with pytest.raises(ConfigError, match="BATON_BOOTSTRAP"):
        parse_bootstrap(bootstrap)


def test_a_refused_port_fails_at_once_naming_the_address() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as refused:
        check_reachable(f"127.0.0.1:{port}", timeout_s=10)
    assert time.monotonic() - started < 2
    assert str(refused.value) == (
        f"cannot reach Kafka at 127.0.0.1:{port} (127.0.0.1:{port}: connection refused); "
        "is the broker running?"
    )


def test_one_listening_address_of_several_is_enough() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_reachable(f"127.0.0.1:{free_port()},127.0.0.1:{port}", timeout_s=5)


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--run", "r" * 300, "at most 256 characters, got 300: rrrr"),
        ("--tenant", "t" * 257, "at most 256 characters, got 257: tttt"),
        ("--reason", "x" * 1025, "at most 1024 characters, got 1025: xxxx"),
    ],
)
def test_a_kill_switch_the_events_refuse_is_a_usage_error_before_connecting(
    baton: CliRunner, option: str, value: str, expected: str
) -> None:
    # a 300-character run id ended `baton kill` in a pydantic traceback from the SDK; and the
    # check comes first: the dead port below would exit 4, not 2
    args = ["kill", option, value, "--bootstrap", "127.0.0.1:1", "--no-wait"]
    if option == "--reason":
        args.append("--global")
    result = baton.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {option}: " in result.output and expected in result.output
    assert "Traceback" not in result.output
