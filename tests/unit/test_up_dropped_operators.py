"""A restart whose policy lists no operators is refused when the earlier start's workers held
operators the restart does not give back, whatever the audit's rows say.

Session 36's "not fixed": the guard read the operators from the audit's last
``policy_in_force`` row, which any writer of gov.decisions can append; one whose document
lists none (and hashes to its version), or names this start's version, let a start without
operators through: signing off, in silence. The operators now come from the earlier start's
own policy (its copy in DATA_DIR, a file only `baton up` writes) folded through the recorded
policy updates a worker would apply."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from baton.cli import restart_notice, up_restart
from baton.cli.restart_notice import PolicyInForce, operators_not_given_back
from baton.cli.stack_file import StackRecord
from baton.processors.recorded import input_text
from baton.schemas.errors import ConfigError
from baton.schemas.events import PolicyUpdated
from baton.schemas.policy import Policy, load_policy, parse_policy
from baton.schemas.signing import (
    control_payload,
    new_private_key,
    policy_hash,
    public_key_text,
    sign,
)

pytestmark = pytest.mark.unit

ONCALL, MALLORY = new_private_key(), new_private_key()
WITH_OPERATORS = f'operators:\n  oncall: "{public_key_text(ONCALL)}"\n'
WITHOUT = "multi_agent: {max_handoffs: 8}\n"


def _published(yaml: str, t: float, key=ONCALL) -> str:
    """A recorded policy update (its command, as the audit holds it), signed at ``t``."""
    when = datetime.fromtimestamp(t, UTC)
    sha = policy_hash(yaml)
    payload = control_payload("policy_updated", "global", "*", "oncall", "", when, sha)
    event = PolicyUpdated(
        policy_yaml=yaml,
        operator="oncall",
        signature=sign(key, payload) if key is not None else None,
        event_time=when,
    )
    return input_text(event)


def _start(yaml: str) -> Policy:
    return parse_policy(yaml, "earlier start")


NOW = datetime.now(UTC)
T = NOW.timestamp() - 600


@pytest.mark.parametrize(
    "earlier, commands, dropped",
    [
        (WITH_OPERATORS, [], ("oncall",)),  # the start's own policy: not re-issued
        (WITH_OPERATORS, [_published(WITHOUT, T)], ()),  # removed, signed: re-issued
        (WITH_OPERATORS, [_published(WITH_OPERATORS + WITHOUT, T)], ()),  # re-issued
        (WITH_OPERATORS, [_published(WITHOUT, T, MALLORY)], ("oncall",)),  # not theirs
        (WITH_OPERATORS, [_published(WITHOUT, T, None)], ("oncall",)),  # unsigned: refused
        (WITHOUT, [], ()),
        (WITHOUT, [_published(WITH_OPERATORS, T, None)], ("oncall",)),  # unsigned: not re-issued
        (WITHOUT, [_published(WITH_OPERATORS, T)], ()),  # signed: re-issued, applied again
        (WITH_OPERATORS, ["{not json", '{"type": "kill_switch"}'], ("oncall",)),
    ],
    ids=[
        "start's own",
        "signed removal",
        "signed update keeping them",
        "mallory's removal",
        "unsigned removal",
        "none",
        "unsigned addition",
        "signed addition",
        "junk rows",
    ],
)
def test_the_operators_a_restart_does_not_give_back(
    earlier: str, commands: list[str], dropped: tuple[str, ...]
) -> None:
    assert operators_not_given_back(commands, _start(earlier), NOW) == dropped


def _guard(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    before: PolicyInForce | None,
    earlier: Policy | None,
    commands: list[str],
    **kw: bool,
) -> list[str]:
    monkeypatch.setattr(restart_notice, "policy_in_force", lambda _audit, _keys=(): before)
    monkeypatch.setattr(restart_notice, "recorded_commands", lambda _audit, _keys=(): commands)
    (tmp_path / "metadata" / "governance").mkdir(parents=True, exist_ok=True)
    (tmp_path / "metadata" / "governance" / "decisions.sql").write_text("ATTACH TABLE")
    said: list[str] = []
    start = load_policy(None)  # no operators
    up_restart.name_a_lost_policy(
        tmp_path, start.version, said.append, bool(start.operators), earlier=earlier, **kw
    )
    return said


def test_a_forged_policy_in_force_without_operators_no_longer_passes_the_guard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    earlier = _start(WITH_OPERATORS)
    plain = _start(WITHOUT)
    seed = load_policy(None)
    for forged in (
        PolicyInForce(plain.version, None, "2026-12-04 09:00:00", False, ()),  # no operators
        PolicyInForce(seed.version, None, "2026-12-04 09:00:00", False, ()),  # this start's
    ):
        with pytest.raises(ConfigError, match=r"lists operators \(oncall\) and this start's"):
            _guard(tmp_path, monkeypatch, forged, earlier, [])
        # confirmed, or an operator removed them with a signed publication (re-issued)
        _guard(tmp_path, monkeypatch, forged, earlier, [], allow_unsigned=True)
        _guard(tmp_path, monkeypatch, forged, earlier, [_published(WITHOUT, T)])
    # a first start, or an earlier copy that no longer reads: the audit's own check alone
    assert _guard(tmp_path, monkeypatch, None, None, []) == []


def test_the_earlier_start_s_policy_is_its_copy_or_the_seed(tmp_path: Path) -> None:
    def record(policy: Path | None) -> StackRecord:
        return StackRecord(
            state="stopped", pid=1, started_at=NOW, data_dir=tmp_path, app_id="a",
            bootstrap="127.0.0.1:9092", partitions=4, policy=policy,
        )  # fmt: skip

    copy = tmp_path / "policy-0123456789abcdef.yaml"  # named by its hash, as baton up names it
    assert up_restart.earlier_policy(tmp_path, None) is None  # a first start
    assert up_restart.earlier_policy(tmp_path, record(None)) == load_policy(None)
    copy.write_text(WITH_OPERATORS)
    earlier = up_restart.earlier_policy(tmp_path, record(copy))
    assert earlier is not None and list(earlier.operators) == ["oncall"]
    # a data dir moved since: its copy is read here, by name (A2, session 38: None then, and
    # one forged policy_in_force row passed the guard)
    moved = up_restart.earlier_policy(tmp_path, record(Path("/gone/elsewhere") / copy.name))
    assert moved is not None and list(moved.operators) == ["oncall"]
    # a copy that no longer reads is refused (fail closed), unless confirmed
    copy.write_text("operators: [")
    with pytest.raises(ConfigError, match=r"earlier start's copy of its policy .* does not read"):
        up_restart.earlier_policy(tmp_path, record(copy))
    assert up_restart.earlier_policy(tmp_path, record(copy), allow_unsigned=True) is None
    copy.unlink()
    with pytest.raises(ConfigError, match=r"put it back, or confirm with --allow-unsigned"):
        up_restart.earlier_policy(tmp_path, record(copy))
    elsewhere = tmp_path / "mine.yaml"  # a start older than the copies
    elsewhere.write_text(WITH_OPERATORS)
    assert up_restart.earlier_policy(tmp_path, record(elsewhere)) is None
    # ... whose file is named policy.yaml: not taken for DATA_DIR's policy.yaml (session 39)
    theirs = tmp_path / "etc" / "policy.yaml"
    theirs.parent.mkdir()
    theirs.write_text(WITH_OPERATORS)
    (tmp_path / "policy.yaml").write_text(WITHOUT)
    assert up_restart.earlier_policy(tmp_path, record(theirs)) is None
    legacy = up_restart.earlier_policy(tmp_path, record(tmp_path / "policy.yaml"))
    assert legacy is not None and not legacy.operators  # the old copy's one name, read


def test_a_forged_update_the_fresh_workers_would_apply_first_is_refused() -> None:
    """H4, session 38: a `policy_updated` row with any signature (mallory's operators), dated
    before oncall's real signed publication: folded from the earlier start's policy the
    forgery is refused and the real one re-issued, so the guard passed; but a restart
    without --policy (the seed, no operators) has its workers apply the forgery first (no
    operators: every command counts) and refuse the real one: mallory the only operator."""
    mallory = f'operators:\n  mallory: "{public_key_text(MALLORY)}"\n'
    real = _published(WITH_OPERATORS + WITHOUT, T)
    forged = _published(mallory, T - 3600, MALLORY)
    earlier, seed = _start(WITH_OPERATORS), load_policy(None)
    assert operators_not_given_back([real, forged], earlier, NOW) == ()  # the hole
    assert operators_not_given_back([real, forged], earlier, NOW, seed) == ("oncall",)
    assert operators_not_given_back([real], earlier, NOW, seed) == ()  # re-issued, applied
    assert operators_not_given_back([], earlier, NOW, seed) == ("oncall",)


def test_a_forged_update_copying_the_operators_keys_is_refused() -> None:
    """Session 38's second attack, H1: a `policy_updated` row with any signature whose policy
    copies oncall's public key (from a policy_in_force document) into the forger's rules:
    both folds ended with the same operators, the guard passed, and the fresh workers (no
    operators yet) applied the forger's policy. The fresh fold must apply the same updates."""
    evil = WITH_OPERATORS + "multi_agent: {max_handoffs: 1000}\n"
    forged = _published(evil, T, MALLORY)  # a signature, not oncall's
    earlier, seed = _start(WITH_OPERATORS), load_policy(None)
    assert operators_not_given_back([forged], earlier, NOW, seed) == ("oncall",)
    real = _published(evil, T)  # the same policy, signed by oncall: given back
    assert operators_not_given_back([real], earlier, NOW, seed) == ()


def test_operators_from_an_unsigned_recorded_update_are_said_to_be_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A2, session 38: after a start without operators, one unsigned `policy_updated` row
    listing some (anyone who writes gov.decisions can add it) makes the restart refuse,
    naming them as if the workers held them: fail closed, but the refusal now says what it
    rests on. Signed, or from the start's own policy, nothing is added."""
    seed = load_policy(None)
    unsigned = _published(WITH_OPERATORS, T, key=None)
    with pytest.raises(ConfigError, match=r"lists operators \(oncall\) \(from an unsigned") as e:
        _guard(tmp_path, monkeypatch, None, seed, [unsigned])
    assert "anyone who writes gov.decisions" in str(e.value)
    with pytest.raises(ConfigError) as signed:
        _guard(tmp_path, monkeypatch, None, _start(WITH_OPERATORS), [])
    assert "unsigned policy update" not in str(signed.value)
