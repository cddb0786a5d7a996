"""Which chain key `baton audit verify` and `baton replay` check with (cli/chain_keys, session
44): the workers' variable, else the chain.key of the `baton up` stack whose audit (a chdb
directory, its SQL endpoint) or Kafka they read, else none."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from baton.cli.chain_keys import audit_chain_key, stack_chain_key
from baton.cli.stack_file import write_record
from baton.processors.control_seal import ensure_chain_key
from baton.schemas.errors import ConfigError
from baton.schemas.settings import Settings
from tests.unit.test_up_audit import _record

pytestmark = pytest.mark.unit


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes]:
    data_dir = tmp_path / "stack"
    data_dir.mkdir()
    write_record(_record(data_dir, sql_url="http://127.0.0.1:8123"))
    monkeypatch.setenv("BATON_DATA_DIR", str(data_dir))
    for name in ("BATON_BOOTSTRAP", "BATON_AUDIT_CHAIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    return data_dir, ensure_chain_key(data_dir / "worker", fresh_audit=True)


def test_the_stack_s_key_for_its_audit_its_endpoint_and_its_kafka(stack, monkeypatch) -> None:
    from baton.cli.stack_file import StackRecord

    data_dir, key = stack
    plain = Settings()
    assert audit_chain_key(plain, f"chdb://{data_dir / 'chdb'}") == key
    # its endpoint's port may serve another stack's audit once it stopped (h44 F3)
    assert audit_chain_key(plain, "http://baton:token@127.0.0.1:8123") == b""
    monkeypatch.setattr(StackRecord, "live", lambda self, data_dir=None: True)
    assert audit_chain_key(plain, "http://baton:token@127.0.0.1:8123") == key
    assert audit_chain_key(plain, "http://baton:token@localhost:8123") == key
    # the command's --data-dir names the stack whatever the DSN (h44 F3: it was ignored)
    assert audit_chain_key(plain, "http://ch.example.com:8123", data_dir) == key
    assert stack_chain_key(plain, None, None) == key
    assert stack_chain_key(plain, None, data_dir) == key
    # the workers' variable wins everywhere
    keyed = Settings(audit_chain_key=SecretStr("workers"))
    assert audit_chain_key(keyed, f"chdb://{data_dir / 'chdb'}") == b"workers"


def test_another_audit_or_kafka_is_not_checked_with_the_stack_s_key(stack, tmp_path) -> None:
    plain = Settings()
    assert audit_chain_key(plain, "http://baton:token@127.0.0.1:8124") == b""  # another port
    assert audit_chain_key(plain, "https://ch.example.com:8443") == b""
    assert audit_chain_key(plain, f"chdb://{tmp_path / 'elsewhere' / 'chdb'}") == b""
    assert stack_chain_key(plain, "kafka.example.com:9092", None) == b""  # --bootstrap


def test_a_key_file_others_may_read_is_refused_not_skipped(stack) -> None:
    data_dir, _ = stack
    (data_dir / "worker" / "chain.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chain key"):
        audit_chain_key(Settings(), f"chdb://{data_dir / 'chdb'}")


def test_verify_checks_seals_with_the_seal_key_of_the_stack_its_chain_key_comes_from(
    stack, monkeypatch
) -> None:
    """`baton audit verify --dsn http://…` of a running stack's endpoint, or with --data-dir,
    checked chains with the stack's chain.key but said seals "not checked": its seal.key was
    looked for beside a chdb audit only (session 44's review)."""
    from baton.cli.chain_keys import audit_worker_dir
    from baton.cli.restore_sealed import audit_seal_keys
    from baton.cli.stack_file import StackRecord
    from baton.processors.control_seal import ensure_seal_key, read_seal_key

    data_dir, _ = stack
    ensure_seal_key(data_dir / "worker")
    seal = read_seal_key(data_dir / "worker")
    plain = Settings()
    monkeypatch.setattr(StackRecord, "live", lambda self, data_dir=None: True)
    for dsn, given in (
        (f"chdb://{data_dir / 'chdb'}", None),
        ("http://baton:token@127.0.0.1:8123", None),
        ("http://ch.example.com:8123", data_dir),
    ):
        assert audit_seal_keys(plain, audit_worker_dir(dsn, given)) == [seal], dsn
    assert audit_seal_keys(plain, audit_worker_dir("https://ch.example.com:8443")) == []
    keyed = Settings(audit_chain_key=SecretStr("workers"))
    assert audit_seal_keys(keyed, audit_worker_dir("https://ch.example.com:8443")) == [b"workers"]
