"""The policy in force before a `baton up` restart, read from the records the workers sealed
(session 42): a writer of gov.decisions no longer refuses every restart with one record whose
document does not hash to its version, nor names another policy as the one in force.

Real chDB, the sink's own write path (its views fill the control log), the restart's own
functions. Without the workers' key the unsealed records are read as before (the attack is
shown to work there)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from baton.cli.restart_notice import PolicyInForce, policy_in_force
from baton.cli.up_restart import name_a_lost_policy
from baton.processors.control_seal import SEAL_FIELDS, is_sealed, seal
from baton.processors.engine import apply_policy_update
from baton.processors.recorded import input_text
from baton.processors.recorded import policy_in_force as record_of
from baton.schemas.errors import ConfigError
from baton.schemas.events import PolicyUpdated
from baton.schemas.policy import load_policy, parse_policy
from baton.schemas.signing import (
    control_payload,
    new_private_key,
    policy_hash,
    public_key_text,
    sign,
)
from tests.integration.test_restore_runs import _store

pytestmark = pytest.mark.integration

KEY = b"the workers' seal key"
AGO = datetime.now(UTC) - timedelta(minutes=30)


def _said(chdb: Path, version: str, keys: list[bytes]) -> list[str]:
    lines: list[str] = []
    name_a_lost_policy(chdb, version, lines.append, operators=False, keys=keys)
    return lines


def test_the_worker_seals_the_record_of_its_policy() -> None:
    record = record_of(load_policy(None), AGO, "w1", KEY)
    values = [getattr(record, f) for f in SEAL_FIELDS]
    assert is_sealed(KEY, values, record.request_digest)
    assert record_of(load_policy(None), AGO, "w1").request_digest is None  # no key: no seal


@pytest.mark.parametrize(
    "forged",
    [
        "a document that does not hash to its version",  # its operators unknown: refused
        "another policy's document, hashing to its version",  # named as the one in force
    ],
)
def test_a_forged_policy_record_neither_refuses_the_restart_nor_is_named_in_force(
    tmp_path: Path, forged: str
) -> None:
    seed = load_policy(None)
    chdb = tmp_path / "chdb"
    _store(chdb, [record_of(seed, AGO, "w1", KEY)])
    if forged.startswith("a document"):
        version = "0123456789abcdef"
        bad = replace(record_of(seed, datetime.now(UTC), "w1"), input='{"x": 1}')
        bad = replace(bad, request_id=f"policy_in_force:{version}", policy_version=version,
                      decision_id="forged")  # fmt: skip
    else:
        bad = record_of(parse_policy("multi_agent: {max_handoffs: 2}\n"), datetime.now(UTC), "w1")
    _store(chdb, [bad], first_offset=10)
    # without the key the restart reads every record: the forged one is the last
    if forged.startswith("a document"):
        with pytest.raises(ConfigError, match="unknown: its record does not hash"):
            _said(chdb, seed.version, [])
    else:
        assert "is NOT in force now" in _said(chdb, seed.version, [])[0]
    # with it, the sealed records alone: the seed was in force, nothing to say
    assert _said(chdb, seed.version, [KEY]) == []
    assert policy_in_force(chdb, [KEY]) == PolicyInForce(
        seed.version, None, AGO.strftime("%Y-%m-%d %H:%M:%S.%f"), False, ()
    )


def test_a_sealed_record_re_dated_altered_or_replaced_keeps_its_place(tmp_path: Path) -> None:
    """A copy of an older sealed record re-dated after the newest keeps its sealed time; one
    whose document was altered (its seal copied) verifies not; a row replacing the newest in
    ``decisions`` under its id leaves the control log's sealed row."""
    seed = load_policy(None)
    oncall = new_private_key()
    strict = parse_policy(f'operators: {{oncall: "{public_key_text(oncall)}"}}\n')
    chdb = tmp_path / "chdb"
    older = record_of(strict, AGO, "w1", KEY)
    newest = record_of(seed, AGO + timedelta(minutes=5), "w1", KEY)
    _store(chdb, [older, newest])
    late = datetime.now(UTC)
    _store(
        chdb,
        [
            replace(older, decided_at=late),
            replace(newest, input=older.input, decided_at=late + timedelta(seconds=1)),
            replace(newest, input='{"x": 1}', request_digest=None, decided_at=late),
        ],
        first_offset=10,
    )
    found = policy_in_force(chdb, [KEY])
    assert found is not None and (found.version, found.operators) == (seed.version, ())
    # (without the key: the replacing row's unknown operators)
    assert policy_in_force(chdb, [])  != found  # fmt: skip


def test_a_sealed_published_policy_names_its_operator_and_is_reissued(tmp_path: Path) -> None:
    seed = load_policy(None)
    oncall = new_private_key()
    text = f'operators: {{oncall: "{public_key_text(oncall)}"}}\n'
    when = AGO + timedelta(minutes=1)
    payload = control_payload("policy_updated", "global", "*", "oncall", "", when,
                              policy_hash(text))  # fmt: skip
    update = PolicyUpdated(policy_yaml=text, operator="oncall", signature=sign(oncall, payload),
                           event_time=when)  # fmt: skip
    step = apply_policy_update(seed, None, update, when)
    assert step.applied and step.record is not None
    published = seal(replace(step.record, input=input_text(update)), KEY)
    chdb = tmp_path / "chdb"
    _store(chdb, [record_of(seed, AGO, "w1", KEY), published,
                  record_of(step.policy, when + timedelta(seconds=1), "w1", KEY)])  # fmt: skip
    found = policy_in_force(chdb, [KEY])
    assert found is not None
    assert (found.version, found.published_by, found.reissued, found.operators) == (
        step.policy.version,
        "oncall",
        True,
        ("oncall",),
    )


def test_an_audit_whose_records_no_key_here_sealed_is_read_as_before(tmp_path: Path) -> None:
    """Records from workers before the seals (or under another key): every record, as before."""
    seed = load_policy(None)
    chdb = tmp_path / "chdb"
    _store(chdb, [record_of(seed, AGO, "w1", b"another key")])
    assert policy_in_force(chdb, [KEY]) == policy_in_force(chdb, []) != None  # noqa: E711


def test_a_forged_unsigned_update_listing_operators_no_longer_refuses_the_restart(
    tmp_path: Path,
) -> None:
    """A policy update record forged into gov.decisions, unsigned, listing an operator, on a
    stack whose policy listed none: folded from the earlier start's policy it gave the workers
    operators this restart (the seed) drops, and every restart was refused until
    --allow-unsigned. The guard now folds the commands the workers sealed (what the restart
    issues again), whenever they sealed any."""
    seed = load_policy(None)
    mallory = new_private_key()
    text = f'operators: {{mallory: "{public_key_text(mallory)}"}}\n'
    update = PolicyUpdated(policy_yaml=text, operator="mallory", event_time=AGO)
    step = apply_policy_update(seed, None, update, AGO)
    assert step.applied and step.record is not None
    forged = replace(step.record, input=input_text(update))  # no worker sealed it
    chdb = tmp_path / "chdb"
    _store(chdb, [record_of(seed, AGO - timedelta(minutes=1), "w1", KEY), forged])
    with pytest.raises(ConfigError, match="mallory"):
        name_a_lost_policy(chdb, seed.version, print, False, False, seed, seed, [])
    lines: list[str] = []
    name_a_lost_policy(chdb, seed.version, lines.append, False, False, seed, seed, [KEY])
    assert lines == []


def test_an_update_dated_a_year_ahead_is_not_the_policy_in_force_after_later_ones(
    tmp_path: Path,
) -> None:
    """While no operators are listed a worker applies an update whatever time it carries: one
    dated a year ahead, then the seed's record again (a restart under the seed): the policy in
    force is the seed's (the workers' records are ordered by the workers' clocks)."""
    seed = load_policy(None)
    ahead = datetime.now(UTC) + timedelta(days=365)
    text = "multi_agent: {max_handoffs: 2}\n"
    update = PolicyUpdated(policy_yaml=text, operator="someone", event_time=ahead)
    step = apply_policy_update(seed, None, update, AGO)
    assert step.applied and step.record is not None
    chdb = tmp_path / "chdb"
    _store(chdb, [seal(replace(step.record, input=input_text(update)), KEY),
                  record_of(step.policy, AGO, "w1", KEY),
                  record_of(seed, AGO + timedelta(minutes=1), "w1", KEY)])  # fmt: skip
    found = policy_in_force(chdb, [KEY])
    assert found is not None and found.version == seed.version


def test_copies_of_a_sealed_record_are_read_once(tmp_path: Path) -> None:
    """A writer of gov.decisions can re-send the worker's sealed record (its seal covers all it
    says) as often as it likes, each copy stored in the control log: each was kept and its
    document parsed and hashed (200k copies: a restart 16.7 s later, found by a helper's
    attack in session 42). One record a seal, and the fold reads at most three documents."""
    from baton.cli.restore_sealed import sealed_policy_records
    from baton.sinks.clickhouse import connect

    seed = load_policy(None)
    record = record_of(seed, AGO, "w1", KEY)
    chdb = tmp_path / "chdb"
    copies = [replace(record, decided_at=AGO + timedelta(seconds=i)) for i in range(1, 60)]
    _store(chdb, [record, *copies])
    client = connect(f"chdb://{chdb}")
    try:
        records = sealed_policy_records(client, [KEY])
    finally:
        client.close()
    assert records is not None and len(records) == 1
    assert policy_in_force(chdb, [KEY]) == PolicyInForce(
        seed.version, None, AGO.strftime("%Y-%m-%d %H:%M:%S.%f"), False, ()
    )
