"""Session 18 (H7, review of H5's F5): what a `baton up` restart prints of audit rows others
wrote, escaped like the rest of the notice.

H5's F5 escaped a policy's label and errors in `baton policy current`; the restart notice
(``up_restart``) already escaped who published the policy in force, but printed two other
fields of the same forged control rows raw. A writer of gov.decisions stores a control row
(control rows are not chained) whose ``policy_version`` holds ESC sequences: every `baton up`
on that data dir printed them in its "policy in force before this restart" WARNING. A kill
row whose ``detail`` is ``scope=<ESC ...>`` (its id derived as a worker's, so it counts as
made) was named in the "kill switch(es) ... NOT in force" WARNING as ``<ESC ...> *``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from baton.cli import restart_notice, up_restart
from baton.cli.restart_notice import PolicyInForce, as_made, fold_kill_switches
from baton.schemas.decision import Phase, decision_id_for
from baton.sinks.audit_batch import AuditBatch
from baton.sinks.rows import DECISION_COLUMNS

pytestmark = pytest.mark.unit

_ESC = "\x1b]0;PWNED\x07\x1b[2J"


def test_the_sink_stores_a_control_row_whose_version_and_detail_hold_escapes() -> None:
    """The rows below reach the audit: nothing on the way refuses the characters."""
    doc = {
        "decision_id": "c" * 32,
        "request_id": "policy_updated:x",
        "run_id": "*",
        "tenant": "default",
        "phase": "control",
        "outcome": "allow",
        "reason": "policy_updated",
        "policy_version": _ESC,
        "detail": f"scope={_ESC}",
        "decided_at": datetime.now(UTC).isoformat(),
    }
    batch = AuditBatch(topic="gov.decisions", ttl_days=365)
    batch.add(0, 0, orjson.dumps(doc))
    assert not batch.rejected
    row = dict(zip(DECISION_COLUMNS, batch.controls[0][0], strict=True))  # stored after rows
    assert (row["policy_version"], row["detail"]) == (_ESC, f"scope={_ESC}")


def test_a_lost_policy_whose_version_holds_escapes_is_named_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forged = PolicyInForce(_ESC, "mallory", "2026-12-01 11:00:00")
    monkeypatch.setattr(restart_notice, "policy_in_force", lambda audit, keys=(): forged)
    (tmp_path / "metadata").mkdir()  # an audit's tables (up_audit.has_tables)
    (tmp_path / "metadata" / "governance").mkdir(exist_ok=True)
    (tmp_path / "metadata" / "governance" / "decisions.sql").write_text("ATTACH TABLE")
    said: list[str] = []
    up_restart.name_a_lost_policy(tmp_path, "0123456789abcdef", said.append)
    assert len(said) == 1 and "NOT in force now" in said[0]
    assert "\x1b" not in said[0] and "\x07" not in said[0], said


def test_a_lost_kill_whose_scope_holds_escapes_is_named_escaped() -> None:
    request_id = "kill_switch:x"
    row = (
        "kill_switch",
        "r1",
        "*",
        f"scope={_ESC}",
        "",
        decision_id_for("r1", request_id, Phase.CONTROL),
        request_id,
    )
    names = fold_kill_switches([as_made(row)])
    assert len(names) == 1
    assert "\x1b" not in names[0] and "\x07" not in names[0], names


def test_the_restore_names_run_and_request_ids_of_the_audit_escaped() -> None:
    """The restore's WARNING lines at `baton up` named run ids (ids, not names: any
    character, a client's or a forged row's) and the request ids of replaced policy rows
    raw: a run whose forged rows replay unfaithfully, or whose chain is broken, sent its id's
    ESC sequences to the terminal at every start."""
    from baton.cli.restore_rebuild import Rebuilt as _Rebuilt
    from baton.cli.restore_rebuild import first_names as _first_names
    from baton.cli.restore_rebuild import say_what_was_not_verified as _say_what_was_not_verified

    rebuilt = _Rebuilt(unfaithful=[f"r{_ESC}"], broken=[f"r{_ESC}: a gap after step 2"])
    said: list[str] = []
    _say_what_was_not_verified(rebuilt, False, said.append)
    assert len(said) >= 2 and all("PWNED" in line for line in said[:2]), said
    assert not any("\x1b" in line or "\x07" in line for line in said), said
    names = _first_names([f"policy_updated:{_ESC}", "b"])
    assert "\x1b" not in names and "\x07" not in names and names.endswith(", b")
