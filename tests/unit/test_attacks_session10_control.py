"""Session 10's attacks on the signed control plane and the policy path, against the pure
functions (the policy loader, the control follower on a fake consumer): a writer of any topic
without an operator's key, and a careless operator."""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from baton.processors.engine import NO_KILLS, apply_policy_update
from baton.schemas.errors import PolicyError
from baton.schemas.events import KillSwitchReleased, PolicyUpdated
from baton.schemas.policy import parse_policy
from baton.schemas.signing import (
    control_payload,
    new_private_key,
    policy_hash,
    public_key_text,
    sign,
)

pytestmark = pytest.mark.unit

_KEY = new_private_key()
_OTHER = new_private_key()
OPERATORS = f'operators:\n  oncall: "{public_key_text(_KEY)}"\n'


def _signed_update(policy_yaml: str, at: datetime) -> PolicyUpdated:
    sha = policy_hash(policy_yaml)
    payload = control_payload("policy_updated", "global", "*", "oncall", "", at, sha)
    return PolicyUpdated(
        policy_yaml=policy_yaml,
        operator="oncall",
        policy_sha=sha,
        signature=sign(_KEY, payload),
        event_time=at,
    )


# ------------------------------------------------------------------ a key written twice
#: a reader of each file (a reviewer, the operator) sees the first value; YAML kept the last
#: in silence, so the worker and `baton policy check` took the one nobody reviewed
WRITTEN_TWICE = {
    "a limit, further down its block": (
        "multi_agent:\n  max_handoffs: 2\n  shared_max_usd: 5\n  max_handoffs: 1000\n",
        'key "max_handoffs" is written twice in one mapping (first at line 2)',
    ),
    "an operator with a second key": (
        f'{OPERATORS}  oncall: "{public_key_text(_OTHER)}"\n',
        'key "oncall" is written twice',
    ),
    "the whole multi_agent block": (
        "multi_agent: {max_handoffs: 2}\nmulti_agent: {shared_max_usd: 1000}\n",
        'key "multi_agent" is written twice',
    ),
    "the seed's budgets block": (
        "budgets: {max_usd: 5}\nbudgets: {max_usd: 500}\n",
        'key "budgets" is written twice',
    ),
    "a tenant": (
        "tenants:\n  acme: {max_handoffs: 2}\n  acme: {max_handoffs: 200}\n",
        'key "acme" is written twice',
    ),
    "shadow_mode": (
        "multi_agent:\n  shadow_mode: false\n  shadow_mode: true\n",
        'key "shadow_mode" is written twice',
    ),
    "1 and true, one key once loaded": (
        "tenants:\n  acme: {1: x, true: y}\n",
        "key true is written twice",
    ),
}


@pytest.mark.parametrize(("text", "says"), WRITTEN_TWICE.values(), ids=WRITTEN_TWICE.keys())
def test_a_key_written_twice_is_refused_naming_both_lines(text: str, says: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    assert says in str(caught.value)
    assert "keep one" in str(caught.value)


def test_keys_a_merge_brings_in_are_still_overridden_as_yaml_says() -> None:
    text = (
        "tenants:\n"
        "  acme: &base {max_handoffs: 2, shared_max_usd: 3}\n"
        "  globex: {<<: *base, max_handoffs: 5}\n"
    )
    policy = parse_policy(text, "p.yaml")
    assert policy.tenants["globex"].max_handoffs == 5
    assert policy.tenants["globex"].shared_max_usd == 3


def test_a_signed_policy_update_with_a_key_written_twice_is_not_applied() -> None:
    """On gov.control: the update is no policy (its dead letter names the line); the policy
    in force stays, never the value nobody reviewed."""
    policy = parse_policy(OPERATORS, "file")
    text = f"{OPERATORS}multi_agent:\n  max_handoffs: 2\n  max_handoffs: 1000\n"
    now = datetime.now(UTC)
    step = apply_policy_update(policy, None, _signed_update(text, now), now)
    assert step.record is None and step.policy is policy
    assert step.error is not None and 'key "max_handoffs" is written twice' in step.error


# ------------------------------------------------------------------ a flood of gov.control
def test_a_flood_of_junk_read_at_start_holds_a_bounded_number_of_bytes_for_the_publisher(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Everything the follower makes of a record waits in the publisher's queue until the
    worker decides, so a worker starting on a control topic of 72 MB of junk held all of it
    (measured on a real worker: 3,000 records of 60 KB, 340 MB more; 100,000 of them, out of
    memory at every start: a crash loop). Now at most MAX_HELD_BYTES of refusals and dead
    letters; the kill switch after the flood is applied and recorded, and the rest named."""
    from tests.unit.test_control_follower import (
        _FakeAdmin,
        _FakeConsumer,
        _follower,
        _kill,
        _run,
    )

    junk = b"x" * 60_000
    records: list[bytes | None] = [junk] * 1200 + [_kill("r1")]
    letters: list[Any] = []
    decisions: list[Any] = []
    f = _follower(on_decision=decisions.append, on_dead_letter=letters.append)
    with caplog.at_level(logging.ERROR, "baton.processors.control"):
        _run(f, _FakeConsumer(records, batches=[500] * 8), _FakeAdmin(high=len(records)))
    assert f.caught_up.is_set() and f.kills.runs == frozenset({"r1"})
    assert [d.reason for d in decisions] == ["kill_switch"]
    held = sum(len(letter.value) for letter in letters)
    assert held <= 32 * 1024 * 1024, f"{held:,} bytes of dead letters held for the publisher"
    withheld = 1200 - len(letters)
    assert withheld > 0
    assert f"{withheld} refusals and dead letters" in caplog.text
    assert f"offsets {len(letters)} to 1199" in caplog.text


def test_once_fresh_again_refusals_and_dead_letters_are_handed_over_again() -> None:
    from tests.unit.test_control_follower import (
        _FakeAdmin,
        _FakeConsumer,
        _follower,
        _run,
    )

    letters: list[Any] = []
    f = _follower(on_dead_letter=letters.append)
    junk = b"x" * 60_000
    consumer = _FakeConsumer([junk] * 1200, batches=[500] * 6)
    _run(f, consumer, _FakeAdmin(high=1200))
    assert f.is_fresh()
    flood = len(letters)
    assert flood < 1200
    consumer.records += [junk] * 3
    consumer.batches = [500] * 3
    f._stop.clear()
    _run(f, consumer, _FakeAdmin(high=1203))
    assert len(letters) == flood + 3


# ------------------------------------------------------------------ keys of small order
def _small_order_keys() -> list[str]:
    from baton.schemas import signing

    raws = sorted(signing._SMALL_ORDER)
    both = [*raws, *(r[:31] + bytes([r[31] | 0x80]) for r in raws)]
    return ["ed25519:" + base64.b64encode(r).decode() for r in both]


IDENTITY_KEY = "ed25519:" + base64.b64encode(bytes([1] + [0] * 31)).decode()
ZERO_KEY = "ed25519:" + base64.b64encode(bytes(32)).decode()


def _forged_release(at: datetime) -> KillSwitchReleased:
    """A global release "signed" by oncall with no private key: R = the identity, S = 0."""
    forged = base64.b64encode(bytes([1] + [0] * 31) + bytes(32)).decode()
    return KillSwitchReleased(
        scope="global", operator="oncall", reason="", signature=forged, event_time=at
    )


def test_a_signature_made_without_a_key_verifies_against_a_small_order_point() -> None:
    """Why such a key must never load: OpenSSL verifies Ed25519 without checking the key's
    order. With the identity every forged signature verifies; with 32 zero bytes (the
    placeholder one would write) one message in four, any time field away."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from baton.schemas.signing import verify

    at = datetime(2026, 11, 30, 13, 0, tzinfo=UTC)
    event = _forged_release(at)
    payload = control_payload(event.type, "global", "*", "oncall", "", at)
    identity = Ed25519PublicKey.from_public_bytes(bytes([1] + [0] * 31))
    assert verify(identity, payload, event.signature or "")


@pytest.mark.parametrize("key", _small_order_keys())
def test_a_public_key_of_small_order_is_refused(key: str) -> None:
    from baton.schemas.signing import SigningKeyError, parse_public_key

    with pytest.raises(SigningKeyError, match="small order"):
        parse_public_key(key)


@pytest.mark.parametrize("key", [IDENTITY_KEY, ZERO_KEY], ids=["identity", "zeros"])
@pytest.mark.parametrize(
    "where",
    ["operators:\n  oncall: {key}\n", "multi_agent:\n  approval:\n    keys: {{cfo: {key}}}\n"],
    ids=["operators", "approval_keys"],
)
def test_a_policy_listing_a_small_order_key_is_refused(where: str, key: str) -> None:
    """Listed, anyone could lift a kill switch, publish a policy or grant an approval as that
    name with no private key (a global kill lifted by `_forged_release`, on HEAD)."""
    with pytest.raises(PolicyError, match="small order"):
        parse_policy(where.format(key=f'"{key}"'), "p.yaml")


# ------------------------------------------------------------------ baton up's re-issue order
def _signed_by(key: Any, name: str, event: Any) -> str:
    """``event`` (a kill, a release or a policy update) signed by ``key`` as ``name``."""
    if isinstance(event, PolicyUpdated):
        sha = policy_hash(event.policy_yaml)
        payload = control_payload(event.type, "global", "*", name, "", event.event_time, sha)
        event = event.model_copy(update={"policy_sha": sha})
    else:
        payload = control_payload(
            event.type, event.scope, event.target, name, event.reason, event.event_time
        )
    signed = event.model_copy(update={"operator": name, "signature": sign(key, payload)})
    return signed.to_json().decode()


def _fold_reissued(commands: list[str], policy: Any) -> tuple[Any, Any, list[str]]:
    """What a worker holds after reading the commands `baton up` re-issues (in its order)."""
    from baton.cli.restore_kills import reissued_commands
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.schemas.events import parse_control_event

    now = datetime.now(UTC)
    kills, signed_at, reasons = NO_KILLS, None, []
    for _scope, _target, text in reissued_commands(commands, lambda line: None):
        event = parse_control_event(text.encode())
        if isinstance(event, PolicyUpdated):
            step = apply_policy_update(policy, signed_at, event, now)
            assert step.record is not None
            policy, signed_at = step.policy, step.signed_at
            reasons.append(str(step.record.reason))
        else:
            kills, record = apply_control(kills, event, policy, now)
            reasons.append(str(record.reason))
    return kills, policy, reasons


def test_a_kill_moved_before_the_update_that_made_its_signer_an_operator_still_holds() -> None:
    """Rotation as docs/security.md says: oncall publishes a policy adding oncall_2027, who
    then kills a run. `baton up` re-issued the commands in the audit's decided_at order, a
    column any writer of gov.decisions sets (a copy of the kill's row, same id, replaces it in
    FINAL): the kill came first, was refused (unknown_operator) and the run reopened."""
    from baton.schemas.events import KillSwitch

    new_key = new_private_key()
    t0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    both = f'{OPERATORS}  oncall_2027: "{public_key_text(new_key)}"\n'
    add = PolicyUpdated(policy_yaml=both, event_time=t0)
    kill = KillSwitch(scope="run", run_id="r1", operator="x", event_time=t0.replace(minute=5))
    audit_order = [
        _signed_by(new_key, "oncall_2027", kill),  # its row's decided_at forged earlier
        _signed_by(_KEY, "oncall", add),
    ]
    kills, _policy, reasons = _fold_reissued(audit_order, parse_policy(OPERATORS, "file"))
    assert kills.killed("r1", "default"), reasons
    assert reasons == ["policy_updated", "kill_switch"]


def test_the_removal_of_a_key_moved_before_its_successors_addition_still_removes_it() -> None:
    """Rotation again: add oncall_2027 (signed by oncall), then remove oncall (signed by
    oncall_2027). Re-issued removal first: refused (oncall_2027 unknown yet), and the
    policy listing the removed (stolen) key was in force after the restart."""
    new_key = new_private_key()
    t0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    new_line = f'  oncall_2027: "{public_key_text(new_key)}"\n'
    add = PolicyUpdated(policy_yaml=f"{OPERATORS}{new_line}", event_time=t0)
    remove = PolicyUpdated(policy_yaml=f"operators:\n{new_line}", event_time=t0.replace(minute=9))
    audit_order = [_signed_by(new_key, "oncall_2027", remove), _signed_by(_KEY, "oncall", add)]
    _kills, policy, reasons = _fold_reissued(audit_order, parse_policy(OPERATORS, "file"))
    assert list(policy.operators) == ["oncall_2027"], reasons


# ------------------------------------------------------------------ numbers YAML 1.1 misreads
@pytest.mark.parametrize(
    ("value", "read_as", "kind"),
    [
        ("010", 8, "octal"),
        ("0100", 64, "octal"),
        ("1:30", 90, "base 60"),
        ("1:00:00", 3600, "base 60"),
    ],
)
def test_a_number_yaml_11_reads_otherwise_than_it_looks_is_refused(
    value: str, read_as: int, kind: str
) -> None:
    """A careless `max_handoffs: 010` loaded as 8, `max_run_seconds: 1:30` as 90, silently."""
    import yaml

    assert yaml.safe_load(f"x: {value}") == {"x": read_as}
    with pytest.raises(PolicyError, match=f"{value} is a YAML 1.1 {kind}"):
        parse_policy(f"multi_agent:\n  max_run_seconds: {value}\n", "p.yaml")


@pytest.mark.parametrize(
    ("value", "number"),
    [("0", 0), ("10", 10), ("0.5", 0.5), ("1_000", 1000), ("0x10", 16), ("1e3", 1000)],
)
def test_numbers_written_plainly_still_load(value: str, number: float) -> None:
    policy = parse_policy(f"multi_agent:\n  max_run_seconds: {value}\n", "p.yaml")
    assert policy.multi_agent.max_run_seconds == number


# ------------------------------------------------------------------ before operators were listed
def test_an_update_applied_before_operators_were_listed_cannot_be_replayed_after() -> None:
    """The documented bootstrap: the --policy file lists no operators and the first published
    policy (signed: `baton policy publish` always signs) brings them in. Its time was not kept
    (only updates applied under operators were), so the signed update before it, replayed
    later, was applied: the policy went back to one without operators, and from then on
    anyone's unsigned update counted."""
    from baton.processors.engine import apply_policy_update

    t0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    old = _signed_update("multi_agent: {max_handoffs: 100}\n", t0)
    first = _signed_update(f"{OPERATORS}multi_agent: {{max_handoffs: 3}}\n", t0.replace(minute=5))
    policy, signed_at = parse_policy("", "file"), None
    for event in (old, first):
        step = apply_policy_update(policy, signed_at, event, t0.replace(minute=6))
        assert step.applied
        policy, signed_at = step.policy, step.signed_at
    replayed = apply_policy_update(policy, signed_at, old, t0.replace(minute=30))
    assert replayed.record is not None
    assert replayed.record.reason == "control_replayed", replayed.record.detail
    assert replayed.policy is policy


def test_a_kill_engaged_before_operators_were_listed_holds_against_an_older_release() -> None:
    """A global kill engaged while no operators were listed (names trusted), then operators
    listed: the kill's time was not kept, so a release signed before the kill (an old one,
    replayed) was newer than nothing and lifted it."""
    from baton.processors.engine import apply_control
    from baton.schemas.events import KillSwitch

    t0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    old_release = KillSwitchReleased(scope="global", operator="oncall", event_time=t0)
    old_release = KillSwitchReleased.model_validate_json(_signed_by(_KEY, "oncall", old_release))
    kill = KillSwitch(scope="global", operator="oncall", event_time=t0.replace(minute=10))
    unsigned = parse_policy("", "file")
    kills, _ = apply_control(NO_KILLS, old_release, unsigned, t0.replace(minute=1))
    kills, _ = apply_control(kills, kill, unsigned, t0.replace(minute=10))
    assert kills.everything
    signed = parse_policy(OPERATORS, "published")
    kills, record = apply_control(kills, old_release, signed, t0.replace(minute=30))
    assert record.reason == "control_replayed", record.detail
    assert kills.everything


def test_a_release_dated_a_year_ahead_before_operators_were_listed_keeps_no_time() -> None:
    """Kept capped at the reading clock instead, it would make every kill the operators sign
    a replay after the next restart (read then, it is capped at the later clock)."""
    from baton.processors.engine import apply_control
    from baton.schemas.events import KillSwitch

    t0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    ahead = KillSwitchReleased(scope="global", operator="x", event_time=t0.replace(year=2027))
    kill = KillSwitch(scope="global", operator="x", event_time=t0.replace(minute=10))
    kill = KillSwitch.model_validate_json(_signed_by(_KEY, "oncall", kill))
    unsigned, signed = parse_policy("", "file"), parse_policy(OPERATORS, "published")
    for read_at in (t0.replace(minute=10), t0.replace(hour=20)):  # first read, a restart
        kills, _ = apply_control(NO_KILLS, ahead, unsigned, read_at)
        kills, record = apply_control(kills, kill, signed, read_at)
        assert record.reason == "kill_switch" and kills.everything, read_at


# ------------------------------------------------------------------ a policy row replaced in FINAL
def _policy_rows() -> tuple[list[tuple[str, ...]], Any]:
    """The rows a worker writes for two signed updates it applied (and the policies it then
    used), as `baton up`'s restore reads them; and the second update's record."""
    from baton.processors.recorded import input_text, policy_in_force

    t0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    policy, signed_at, rows, record = parse_policy(OPERATORS, "file"), None, [], None
    for minute, limit in ((1, 100), (2, 3)):
        text = f"{OPERATORS}multi_agent: {{max_handoffs: {limit}}}\n"
        event = _signed_update(text, t0.replace(minute=minute))
        step = apply_policy_update(policy, signed_at, event, t0.replace(minute=minute))
        assert step.applied and step.record is not None
        record = step.record
        record.input = input_text(event)
        policy, signed_at = step.policy, step.signed_at
        for d in (record, policy_in_force(policy, t0, "w1")):
            rows.append((d.decision_id, d.run_id, d.request_id, str(d.reason), d.input or ""))
    return rows, record


def test_the_workers_own_policy_rows_hold_together() -> None:
    from baton.cli.restore_kills import replaced_policy_rows

    rows, _ = _policy_rows()
    assert replaced_policy_rows(rows) == []
    # a row recorded before commands were (no input) is not taken for a replaced one
    assert replaced_policy_rows([(*row[:4], "") for row in rows]) == []


@pytest.mark.parametrize("forged", ["reason", "input", "in_force"])
def test_a_policy_row_replaced_in_final_is_named_as_lost(forged: str) -> None:
    """A row written into gov.decisions under the id of the worker's record of the tighter
    update (its id is its request id's: anyone can compute it) replaced it in FINAL (checked
    on chDB: the later insert wins): `baton up` did not re-issue that update, and the
    restart ran the looser policy before it without a word."""
    from baton.cli.restore_kills import replaced_policy_rows

    rows, record = _policy_rows()
    i = next(i for i, row in enumerate(rows) if row[2] == record.request_id)
    decision_id, run_id, request_id, reason, command = rows[i]
    if forged == "reason":
        rows[i] = (decision_id, run_id, request_id, "bad_signature", command)
    elif forged == "input":  # the looser update's command under the tighter one's id
        rows[i] = (decision_id, run_id, request_id, reason, rows[0][4])
    else:
        j = i + 1  # the worker's policy_in_force record of the tighter policy
        rows[j] = (*rows[j][:3], "bad_signature", rows[j][4])
        request_id = rows[j][2]
    assert replaced_policy_rows(rows) == [request_id]


# ------------------------------------------------------------------ one key under two names
def test_one_public_key_under_two_operators_is_refused() -> None:
    """A line copied for a new operator with its key left as it was: the key's holder could
    sign as both names (a kill "by oncall_2027" that oncall made)."""
    key = f'"{public_key_text(_KEY)}"'
    with pytest.raises(PolicyError, match="oncall and oncall_2027 hold the same public key"):
        parse_policy(f"operators:\n  oncall: {key}\n  oncall_2027: {key}\n", "p.yaml")


def test_a_signer_listed_as_operator_and_approver_with_one_key_still_loads() -> None:
    key = f'"{public_key_text(_KEY)}"'
    text = f"operators: {{oncall: {key}}}\nmulti_agent: {{approval: {{keys: {{oncall: {key}}}}}}}\n"
    assert list(parse_policy(text, "p.yaml").operators) == ["oncall"]


# ------------------------------------------------------------------ a start on many kill switches
def test_applying_a_kill_switch_copies_a_bounded_part_of_the_targets() -> None:
    """Each applied kill switch copied the whole map of targets (immutable, read by the hot
    path without a lock): a worker starting on 16,000 killed runs took 174 s to read them
    (13.6 s with C-level copies; 1.8 s now), 100,000 would have taken an hour. Now the next
    kill switches share the targets' base with the last and copy at most 256 changes."""
    from baton.processors import engine_control
    from baton.processors.engine import apply_control
    from baton.schemas.events import KillSwitch

    t0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    policy = parse_policy("", "file")
    kills = engine_control.KillSwitches(runs=[f"r{i}" for i in range(10_000)])
    shared = 0
    for i in range(1000):
        event = KillSwitch(scope="run", run_id=f"new{i}", operator="op", event_time=t0)
        after, _ = apply_control(kills, event, policy, t0)
        shared += after._runs._base is kills._runs._base
        assert len(after._runs._delta) <= engine_control._DELTA
        kills = after
    assert shared >= 1000 - 1000 // engine_control._DELTA - 1
    assert len(kills.runs) == 11_000 and kills.killed("r0", "-") and kills.killed("new999", "-")


def test_the_kill_switches_after_random_commands_are_the_plain_sets() -> None:
    import random

    from baton.processors.engine import apply_control
    from baton.schemas.events import KillSwitch

    rng = random.Random(10)
    t0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    policy, kills, runs, tenants = parse_policy("", "file"), NO_KILLS, set(), set()
    for i in range(3000):  # past several merges of the layers (every 256 changes)
        scope, name, on = (
            rng.choice(["run", "tenant"]),
            f"n{rng.randrange(400)}",
            rng.random() < 0.6,
        )
        kind = KillSwitch if on else KillSwitchReleased
        target = {"run_id": name} if scope == "run" else {"tenant": name}
        event = kind(scope=scope, operator="op", event_time=t0, **target)
        kills, _ = apply_control(kills, event, policy, t0)
        plain = runs if scope == "run" else tenants
        (plain.add if on else plain.discard)(name)
        if i % 97 == 0:
            assert (kills.runs, kills.tenants) == (frozenset(runs), frozenset(tenants))
            assert bool(kills) == bool(runs or tenants)
            assert all(kills.killed(r, "-") for r in runs)
            assert not any(
                kills.killed(f"n{k}", "-") for k in range(400) if f"n{k}" not in runs | tenants
            )
