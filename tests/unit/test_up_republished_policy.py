"""A restart says when a re-issued published policy will decide instead of its --policy.

Session 29, H3: `baton up --policy stricter.yaml` on a data dir whose workers ran a signed,
looser published policy re-issued that publication (it wins over the file, by design), and
every line named stricter.yaml's version: "waiting for the worker (policy <stricter>)". All six
handoffs were allowed where the file stops the fifth."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.cli import restart_notice, up_restart
from baton.cli.restart_notice import PolicyInForce

pytestmark = pytest.mark.unit


def _said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: PolicyInForce | None, **kw: bool
):
    monkeypatch.setattr(restart_notice, "policy_in_force", lambda _audit, _keys=(): before)
    (tmp_path / "metadata").mkdir(exist_ok=True)  # an audit's tables (up_audit.has_tables)
    (tmp_path / "metadata" / "governance").mkdir(exist_ok=True)
    (tmp_path / "metadata" / "governance" / "decisions.sql").write_text("ATTACH TABLE")
    said: list[str] = []
    version = up_restart.name_a_lost_policy(tmp_path, "53aec0f4a78e37af", said.append, **kw)
    return version, said


def test_a_reissued_looser_publication_is_named_as_the_policy_that_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = PolicyInForce("c3692a4f00000000", "oncall", "2026-12-03 07:10:00.000", reissued=True)
    version, said = _said(tmp_path, monkeypatch, before)
    assert version == "c3692a4f00000000"
    assert len(said) == 1 and "re-issued" in said[0] and "oncall" in said[0]
    assert "decides instead of this start's policy 53aec0f4a78e37af" in said[0]
    assert "baton policy publish FILE" in said[0]


@pytest.mark.parametrize(
    "before",
    [None, PolicyInForce("53aec0f4a78e37af", "oncall", "2026-12-03 07:10:00", reissued=True)],
    ids=["no policy recorded", "the same policy"],
)
def test_nothing_is_said_when_the_start_s_policy_is_the_one_in_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: PolicyInForce | None
) -> None:
    assert _said(tmp_path, monkeypatch, before) == (None, [])


def test_a_lost_unsigned_publication_is_still_named_as_not_in_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = PolicyInForce("c3692a4f00000000", "oncall", "2026-12-03 07:10:00", reissued=False)
    version, said = _said(tmp_path, monkeypatch, before)
    assert version is None and "is NOT in force now" in said[0]


def test_doctor_says_when_the_policy_in_force_is_not_the_file() -> None:
    from types import SimpleNamespace

    from baton.cli.doctor_checks import policy_checks
    from baton.schemas.settings import Settings

    def published(settings: object, policy: object, source: str, timeout: float, note: object):
        return SimpleNamespace(version="c3692a4f00000000"), "a publication by oncall"

    def the_file(settings: object, policy: object, source: str, timeout: float, note: object):
        return policy, source

    _file_line, in_force = policy_checks(Settings(), published, 1.0)
    assert "NOT the policy file's" in in_force.detail and "baton policy publish" in in_force.detail
    assert "NOT" not in policy_checks(Settings(), the_file, 1.0)[1].detail


def test_a_restart_whose_policy_drops_the_operators_in_force_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """H3, session 34: started with --policy FILE listing operators, restarted without it:
    the seed (no operators) took unsigned releases; a re-issued signed kill was lifted."""
    from baton.schemas.errors import ConfigError

    before = PolicyInForce("0123456789abcdef", None, "2026-12-04 07:00:00", False, ("alice",))
    with pytest.raises(ConfigError, match=r"lists operators \(alice\) and this start's"):
        _said(tmp_path, monkeypatch, before, operators=False)
    # with operators, confirmed, or a publication the restore re-issues (it lists them): on
    assert _said(tmp_path, monkeypatch, before, operators=True)[1]
    assert _said(tmp_path, monkeypatch, before, operators=False, allow_unsigned=True)[1]
    reissued = PolicyInForce("0123456789abcdef", "oncall", "2026-12-04", True, ("alice",))
    assert _said(tmp_path, monkeypatch, reissued, operators=False)[0] == "0123456789abcdef"


def test_the_operators_of_the_policy_in_force_are_read_from_its_document() -> None:
    from baton.processors.recorded import policy_document
    from baton.schemas.policy import parse_policy
    from baton.schemas.signing import new_private_key, public_key_text

    keys = {name: public_key_text(new_private_key()) for name in ("alice", "bob")}
    signed = parse_policy("operators:\n" + "".join(f'  {n}: "{k}"\n' for n, k in keys.items()), "p")
    plain = parse_policy("multi_agent: {}\n", "p")
    v1, v2 = signed.version, plain.version
    rows = [
        ("policy_in_force", v1, "", "2026-12-04 07:00:00", policy_document(signed)),
        ("policy_in_force", v2, "", "2026-12-04 07:01:00", policy_document(plain)),
        ("policy_in_force", v1, "", "2026-12-04 07:02:00", policy_document(signed)),
    ]
    last = restart_notice.fold_policy_in_force(rows)
    assert last is not None and last.version == v1 and last.operators == ("alice", "bob")
    assert restart_notice.fold_policy_in_force(rows[:2]).operators == ()  # type: ignore[union-attr]
    assert restart_notice._operators("", v1) == ()  # recorded before documents were: none
    # a document that is no policy, or hashes to another version (H2, session 36: a forged
    # record without operators passed the guard against a start that drops them): unknown
    for forged in ("[" * 5000, policy_document(plain)):
        (unknown,) = restart_notice._operators(forged, v1)
        assert "does not hash to its version" in unknown
