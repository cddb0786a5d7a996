"""Session 17 (H3): the signed control plane attacked again.

F3: base64 of 32 bytes ends in a character with two spare bits, which ``b64decode`` ignores:
one public key has four spellings. ``operators`` refused one key under two names by comparing
the key *texts* (session 10), so a policy listing the key twice, spelled two ways, loaded, and
the key's holder signed as both operators.

F8: a policy update a worker reads as an event of at most 64 KiB was published up to 512 KiB.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.main import cli as main_cli
from baton.schemas.errors import PolicyError
from baton.schemas.events import PolicyUpdated, parse_control_event
from baton.schemas.policy import parse_policy
from baton.schemas.signing import (
    PUBLIC_PREFIX,
    new_private_key,
    parse_public_key,
    public_key_text,
    write_private_key,
)
from baton.streams.sdk import OperatorClient

pytestmark = pytest.mark.unit

_OPERATOR = new_private_key()
_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"


def _respelled(text: str) -> str:
    """The same public key, its last base64 character's spare bits changed."""
    body = text.removeprefix(PUBLIC_PREFIX)
    last = _ALPHABET[_ALPHABET.index(body[-2]) ^ 1]
    return PUBLIC_PREFIX + body[:-2] + last + body[-1]


def test_one_key_spelled_two_ways_under_two_operators_is_refused() -> None:
    key = public_key_text(new_private_key())
    other = _respelled(key)
    assert other != key
    assert parse_public_key(other).public_bytes_raw() == parse_public_key(key).public_bytes_raw()
    with pytest.raises(PolicyError, match="oncall and oncall_2027 hold the same public key"):
        parse_policy(f'operators:\n  oncall: "{key}"\n  oncall_2027: "{other}"\n', "p.yaml")


def test_two_keys_under_two_operators_still_load() -> None:
    one, two = (public_key_text(new_private_key()) for _ in range(2))
    policy = parse_policy(f'operators:\n  oncall: "{one}"\n  oncall_2027: "{two}"\n', "p.yaml")
    assert list(policy.operators) == ["oncall", "oncall_2027"]


# ------------------------------------------------------------------ F8: a policy update too long
def _offline_operator(sent: list[bytes]) -> OperatorClient:
    client = OperatorClient("127.0.0.1:1", key=_OPERATOR)
    client.channel.connect = lambda: None  # type: ignore[method-assign]
    client.channel.flush = lambda timeout: 0  # type: ignore[method-assign]
    client.channel.publish = lambda _topic, _key, raw: sent.append(raw)  # type: ignore[method-assign]
    return client


def _tenants(n: int) -> str:
    return "tenants:\n" + "".join(f"  t{i}: {{max_handoffs: {i}}}\n" for i in range(n))


def test_a_policy_update_a_worker_would_not_read_is_refused_where_it_is_made(
    tmp_path: Path,
) -> None:
    """F8: the SDK and `baton policy publish` took a policy of up to 512 KiB, every worker
    dead-letters a control record past MAX_EVENT_BYTES (64 KiB) as oversized: an 88 KB policy
    was published, no record answered it, and the operator's command waited out its timeout
    saying no worker answered. Now it is refused before it is signed or sent."""
    big = _tenants(3000)
    assert len(big.encode()) < 512 * 1024
    sent: list[bytes] = []
    with pytest.raises(ValueError, match=r"a worker reads at most 65,536"):
        _offline_operator(sent).publish_policy(big, operator="oncall", wait=False)
    assert sent == []
    path = tmp_path / "big.yaml"
    path.write_text(big)
    key_file = tmp_path / "oncall.key"
    write_private_key(_OPERATOR, key_file)
    result = CliRunner().invoke(
        main_cli,
        ["policy", "publish", str(path), "--as", "oncall", "--key", str(key_file)],
        env={"BATON_BOOTSTRAP": "127.0.0.1:1"},
    )
    assert result.exit_code == 2, result.output
    assert "a worker reads at most 65,536" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("tenants", [10, 500, 2100, 2240, 2400])
def test_whatever_the_operator_client_publishes_a_worker_reads(tenants: int) -> None:
    sent: list[bytes] = []
    try:
        _offline_operator(sent).publish_policy(_tenants(tenants), operator="oncall", wait=False)
    except ValueError:
        assert sent == []
        return
    (raw,) = sent
    assert isinstance(parse_control_event(raw), PolicyUpdated)


@pytest.mark.parametrize("command", ["policy_publish", "approve", "deny", "kill"])
def test_a_signer_name_no_event_can_carry_is_a_usage_error_before_anything(
    command: str, tmp_path: Path
) -> None:
    """``--as "a b"`` passed the signer option's check (printable) and the event refused it
    after the command had connected: `baton policy publish` and `baton approve`/`deny` ended
    in a pydantic traceback (policy publish at once since F8's check). Now every signer
    option refuses it in one line, exit 2, naming --as."""
    key_file = tmp_path / "k.key"
    write_private_key(_OPERATOR, key_file)
    policy = tmp_path / "p.yaml"
    policy.write_text("multi_agent: {max_handoffs: 3}\n")
    args = {
        "policy_publish": ["policy", "publish", str(policy)],
        "approve": ["approve", "apr_1"],
        "deny": ["deny", "apr_1", "--comment", "no"],
        "kill": ["kill", "--run", "r1"],
    }[command]
    result = CliRunner().invoke(
        main_cli,
        [*args, "--as", "a b", "--key", str(key_file)],
        env={"BATON_BOOTSTRAP": "127.0.0.1:1", "BATON_CLICKHOUSE_DSN": f"chdb://{tmp_path}/c"},
    )
    assert result.exit_code == 2, result.output
    assert "--as" in result.output and "bad name" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, ValueError)
