"""schemas/decision_signing.py: what a worker signs, what a client takes, what it refuses."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import orjson
import pytest

from baton.schemas.decision_signing import (
    DECISION_KEY_FILE,
    FIELD,
    MAX_DECISION_KEYS,
    DecisionSigner,
    decision_keys,
    ensure_decision_key,
    load_signer,
    signing_key_of,
)
from baton.schemas.errors import ConfigError
from baton.schemas.signing import new_private_key, public_key_text, write_private_key

pytestmark = pytest.mark.unit

VALUE = b'{"decision_id":"d","outcome":"allow"}'


@pytest.fixture
def signer_and_public() -> tuple[DecisionSigner, str]:
    key = new_private_key()
    return DecisionSigner(key), public_key_text(key)


def test_a_signed_value_verifies_and_nothing_else_does(signer_and_public) -> None:
    signer, public = signer_and_public
    signed = signer.signed(VALUE)
    keys = decision_keys(public)
    assert keys.verifies(signed)
    # the value read as JSON: the decision, and its signature as one more (last) member
    doc = orjson.loads(signed)
    assert list(doc) == ["decision_id", "outcome", FIELD] and doc["outcome"] == "allow"
    assert not keys.verifies(VALUE)  # unsigned
    assert not keys.verifies(signed.replace(b"allow", b"allOw"))
    assert not keys.verifies(signed[:-3] + b'A"}')
    assert not keys.verifies(b" " + signed)
    # a signature made over the value without the domain (any other use of the key) is no
    # decision's
    raw = new_private_key()
    plain = VALUE[:-1] + b',"signature":"' + base64.b64encode(raw.sign(VALUE)) + b'"}'
    assert not decision_keys(public_key_text(raw)).verifies(plain)
    assert decision_keys(public_key_text(raw)).verifies(DecisionSigner(raw).signed(VALUE))


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"}",
        b'"}',
        b"{" + b"x" * 200 + b'"}',
        b'{"a":1,"signature":"' + b"!" * 88 + b'"}',
        b'{"a":1,"signature":"' + b"A" * 88 + b'"}',
        b'{"a":1,"signature":"' + b"A" * 87 + b'="}',
        b'{"a":1, "signature":"' + b"A" * 88 + b'"}',
        "text, not bytes",
        None,
    ],
)
def test_a_value_of_any_shape_is_an_answer_never_an_error(signer_and_public, value) -> None:
    _, public = signer_and_public
    assert not decision_keys(public).verifies(value)


def test_any_listed_key_verifies_a_rotation(signer_and_public) -> None:
    signer, public = signer_and_public
    other = public_key_text(new_private_key())
    assert decision_keys(f"{other},{public}").verifies(signer.signed(VALUE))
    assert decision_keys(f" {other}  {public} ").verifies(signer.signed(VALUE))
    assert not decision_keys([other]).verifies(signer.signed(VALUE))


def test_keys_that_do_not_read_are_named() -> None:
    assert not decision_keys(None) and not decision_keys("", unset="")
    # a value given that holds no key would turn checking off in silence (F3)
    for empty in ("", " ", ",", [], ()):
        with pytest.raises(ConfigError, match="empty, which would take any decision"):
            decision_keys(empty)
    with pytest.raises(ConfigError, match="got bytes"):
        decision_keys(b"ed25519:x")
    with pytest.raises(ConfigError, match=r"BATON_DECISION_KEYS\[1\]: must look like"):
        decision_keys(f"{public_key_text(new_private_key())},nope", "BATON_DECISION_KEYS")
    with pytest.raises(ConfigError, match="small order"):
        decision_keys("ed25519:" + base64.b64encode(bytes(32)).decode())
    many = [public_key_text(new_private_key()) for _ in range(MAX_DECISION_KEYS + 1)]
    with pytest.raises(ConfigError, match=f"at most {MAX_DECISION_KEYS}"):
        decision_keys(many)


def test_a_signing_key_that_does_not_read_stops_the_worker_naming_the_variable(
    tmp_path: Path,
) -> None:
    assert load_signer(None) is None
    missing = tmp_path / "none.key"
    with pytest.raises(ConfigError, match="BATON_DECISION_SIGNING_KEY: key file"):
        load_signer(missing)
    shared = tmp_path / "shared.key"
    write_private_key(new_private_key(), shared)
    os.chmod(shared, 0o644)
    with pytest.raises(ConfigError, match="BATON_DECISION_SIGNING_KEY"):
        load_signer(shared)
    with pytest.raises(ConfigError, match="BATON_DECISION_SIGNING_KEY"):
        load_signer(tmp_path)  # a directory (an empty variable reads as ".")


def test_baton_up_makes_one_key_and_keeps_it(tmp_path: Path) -> None:
    worker = tmp_path / "worker"
    path = ensure_decision_key(worker)
    assert path == worker / DECISION_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = signing_key_of(path)
    assert ensure_decision_key(worker) == path
    assert signing_key_of(path) == first  # kept: clients given its public key go on verifying
    signer = load_signer(path)
    assert signer is not None
    assert decision_keys(first[1]).verifies(signer.signed(VALUE))


def test_a_signature_has_one_spelling(signer_and_public) -> None:
    """The 86th base64 character carries 4 bits decoding ignores: 15 other spellings of the
    same signature decoded alike and verified (h43b F1): a record's bytes were malleable."""
    signer, public = signer_and_public
    signed = signer.signed(VALUE)
    keys = decision_keys(public)
    at = len(signed) - 5  # the character before '=="}'
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    others = [
        signed[:at] + bytes([c]) + signed[at + 1 :]
        for c in alphabet
        if c != signed[at] and alphabet.index(c) >> 4 == alphabet.index(signed[at]) >> 4
    ]
    assert len(others) == 15 and keys.verifies(signed)
    assert not any(keys.verifies(v) for v in others)


def test_the_alerter_reads_a_stop_the_keys_did_not_sign_as_unsigned(signer_and_public) -> None:
    """(session 44) a stop none of the alerter's keys signed is skipped, counted ``unsigned``
    on baton_alerts_skipped_total; one they signed is read; without keys, as before."""
    from types import SimpleNamespace

    from baton.processors.metrics_audit import AlertMetrics
    from baton.schemas.decision import Decision, Outcome, Phase
    from baton.sinks.alert_records import BadRecord, read_stop

    signer, public = signer_and_public
    keys = decision_keys([public])
    stop = Decision(
        decision_id="d" * 32, request_id="r", run_id="run", tenant="default",
        phase=Phase.PRE_HANDOFF, outcome=Outcome.STOP, reason="ownership_conflict",
    )  # fmt: skip
    signed, plain = signer.signed(stop.to_json()), stop.to_json()
    assert isinstance(read_stop(signed, keys), Decision)
    assert read_stop(plain, keys) == BadRecord("unsigned", read_stop(plain, keys).detail)
    assert isinstance(read_stop(plain), Decision) and isinstance(read_stop(signed), Decision)
    assert read_stop(b"", keys).kind == "empty"  # the other kinds first
    watched = AlertMetrics()
    watched.watch(SimpleNamespace(announced=0, folded=0, skipped={"unsigned": 3}),
                  SimpleNamespace(duplicates=0), None)  # fmt: skip
    (family,) = [m for m in watched.collect() if m.name == "baton_alerts_skipped"]
    assert [(s.labels, s.value) for s in family.samples if s.name.endswith("_total")] == [
        ({"kind": "unsigned"}, 3)
    ]


def test_an_old_stop_says_its_age_and_every_unsigned_json_line_is_marked() -> None:
    """(h44b F1, F5) a stop decided more than 5 minutes ago is announced with its age (a
    genuine signed stop written to gov.stops again is announced anew); `tail --format json`
    marks an unsigned record that is no JSON object too (it was printed unmarked)."""
    from baton.cli.tail_cmds import UNSIGNED, _marked
    from baton.sinks.alert_text import stale_note

    assert stale_note(None) == stale_note(299.0) == ""
    assert stale_note(7_300.0) == " (decided 2 h ago)"
    assert stale_note(3 * 86_400.0) == " (decided 3 d ago)"
    assert stale_note(600.0) == " (decided 10 min ago)"
    assert _marked(b"[1]", [1]) == {"value": [1], "unsigned": UNSIGNED}
    assert _marked(b"not json", None) == {"raw": "not json", "unsigned": UNSIGNED}
    assert _marked(b"{}", {"unsigned": False, "a": 1}) == {"unsigned": UNSIGNED, "a": 1}
