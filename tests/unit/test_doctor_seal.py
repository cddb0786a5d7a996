"""`baton doctor`'s seal key line (session 41): the key a `baton up` restart verifies the
workers' command records with, named; gone or unreadable, a failure (the next start would make
another and issue none of the commands sealed with this one again)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from baton.cli.doctor_seal import seal_key_check
from baton.cli.stack_file import write_record
from baton.processors.control_seal import ensure_seal_key
from baton.schemas.settings import Settings
from tests.unit.test_up_audit import _record

pytestmark = pytest.mark.unit


def test_a_stack_s_key_is_named_and_its_loss_fails(tmp_path: Path) -> None:
    write_record(_record(tmp_path))
    settings = Settings()
    ensure_seal_key(tmp_path / "worker")
    line = seal_key_check(settings, tmp_path)
    assert line.status.name == "OK" and str(tmp_path / "worker" / "seal.key") in line.detail
    (tmp_path / "worker" / "seal.key").chmod(0o644)
    line = seal_key_check(settings, tmp_path)
    assert line.status.name == "FAIL" and "chmod 600" in line.detail
    (tmp_path / "worker" / "seal.key").unlink()
    line = seal_key_check(settings, tmp_path)
    assert line.status.name == "FAIL" and "is gone" in line.detail, line
    assert "backup" in line.hint
    # the chain key, when set, is what the workers seal with: the file is not needed
    keyed = Settings(audit_chain_key=SecretStr("k" * 32))
    assert seal_key_check(keyed, tmp_path).status.name == "OK"


def test_no_stack_and_no_key_is_said_never_failed(tmp_path: Path) -> None:
    line = seal_key_check(Settings(), tmp_path)
    assert line.status.name == "SKIP" and "BATON_AUDIT_CHAIN_KEY" in line.hint


def test_the_decision_signing_line_names_the_stacks_key_and_fails_when_clients_would_refuse(
    tmp_path: Path,
) -> None:
    from baton.cli.doctor_seal import decision_signing_check
    from baton.schemas.decision_signing import ensure_decision_key, signing_key_of
    from baton.schemas.signing import new_private_key, public_key_text, write_private_key

    # nothing signs: said, never a failure
    line = decision_signing_check(Settings(), tmp_path)
    assert line.status.name == "SKIP" and "BATON_DECISION_SIGNING_KEY" in line.hint
    key = ensure_decision_key(tmp_path / "worker")
    write_record(_record(tmp_path, decision_keys=signing_key_of(key)[1]))
    line = decision_signing_check(Settings(), tmp_path)
    assert line.status.name == "OK" and str(key) in line.detail, line
    # the key replaced since the stack recorded it: its clients would take nothing
    key.unlink()
    write_private_key(new_private_key(), key)
    line = decision_signing_check(Settings(), tmp_path)
    assert line.status.name == "FAIL" and "take none" in line.detail, line
    key.chmod(0o644)
    line = decision_signing_check(Settings(), tmp_path)
    assert line.status.name == "FAIL" and "BATON_DECISION_SIGNING_KEY" in line.detail, line
    key.unlink()
    line = decision_signing_check(Settings(), tmp_path)
    assert line.status.name == "FAIL" and "is gone" in line.detail, line
    # a key the settings name wins, and what clients check with is said
    other = tmp_path / "other.key"
    write_private_key(new_private_key(), other)
    public = public_key_text(new_private_key())
    line = decision_signing_check(
        Settings(decision_signing_key=other, decision_keys=public), tmp_path
    )
    assert line.status.name == "OK" and "clients check with" in line.detail, line


def test_the_chain_key_line_names_the_stacks_key_and_says_an_unkeyed_audit(
    tmp_path: Path,
) -> None:
    """(session 44) without a chain key a forged row appended at a run's end passes `baton audit
    verify`: the line says so, names the stack's chain.key, and fails on one that does not
    read."""
    from baton.cli.doctor_seal import chain_key_check
    from baton.processors.control_seal import ensure_chain_key

    line = chain_key_check(Settings(), tmp_path)  # no stack, no key: said, never a failure
    assert line.status.name == "SKIP" and "passes `baton audit verify`" in line.detail
    write_record(_record(tmp_path))
    line = chain_key_check(Settings(), tmp_path)  # a stack whose audit was begun unkeyed
    assert line.status.name == "SKIP" and "begun without" in line.detail, line
    assert ensure_chain_key(tmp_path / "worker", fresh_audit=True)
    line = chain_key_check(Settings(), tmp_path)
    assert line.status.name == "OK" and str(tmp_path / "worker" / "chain.key") in line.detail
    (tmp_path / "worker" / "chain.key").chmod(0o640)
    line = chain_key_check(Settings(), tmp_path)
    assert line.status.name == "FAIL" and "chmod 600" in line.detail, line
    keyed = Settings(audit_chain_key=SecretStr("k" * 32))
    assert chain_key_check(keyed, tmp_path).status.name == "OK"


def test_the_chain_key_line_fails_when_the_key_is_not_the_one_the_audit_is_chained_with(
    tmp_path: Path,
) -> None:
    """(h44 F1, F2) stack.json names the key's id: the file gone, or another key set, fails
    (the stack's next start is refused)."""
    from baton.cli.doctor_seal import chain_key_check
    from baton.processors.control_seal import chain_key_id, ensure_chain_key

    key = ensure_chain_key(tmp_path / "worker", fresh_audit=True)
    write_record(_record(tmp_path, chain_key_id=chain_key_id(key)))
    assert chain_key_check(Settings(), tmp_path).status.name == "OK"
    other = Settings(audit_chain_key=SecretStr("k" * 32))
    line = chain_key_check(other, tmp_path)
    assert line.status.name == "FAIL" and "another" in line.detail, line
    (tmp_path / "worker" / "chain.key").unlink()
    line = chain_key_check(Settings(), tmp_path)
    assert line.status.name == "FAIL" and "is gone" in line.detail, line
