"""`baton replay` over an audit written by a real worker and a real sink: the recorded policy
reproduces every decision (exit 0), a stricter one names the runs it would have stopped
(exit 1), and so does --from-kafka over the topics; a client retry answered from the run's
state leaves one row in the audit, the original."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from baton.processors.recorded import input_text
from baton.schemas.events import HandoffRequested
from tests.helpers import wait_for
from tests.integration.conftest import PARTITIONS, TEST_POLICY
from tests.integration.test_audit_verify import CHAIN_KEY, Audit, _traffic
from tests.integration.test_audit_verify import audit as audit  # the fixture
from tests.replay_support import replay_from_kafka
from tests.stack import EventSender

pytestmark = pytest.mark.integration

_BATON = (sys.executable, "-m", "baton.cli")


def _replay(a: Audit, policy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env["BATON_AUDIT_CHAIN_KEY"] = CHAIN_KEY
    return subprocess.run(
        [*_BATON, "replay", "--policy", str(policy), "--dsn", f"chdb://{a.chdb}", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_replay_reproduces_the_audit_and_names_what_a_stricter_policy_stops(
    audit: Audit, tmp_path: Path
) -> None:
    runs = [f"rp{i}" for i in range(6)]
    _traffic(audit, runs)  # 3 handoffs each, refunds granted (then finished) or expired
    assert audit.decisions is not None and audit.sink is not None
    # a client retry of a run's second request, after the run moved on: answered from state
    first = next(d for d in audit.decisions.for_run("rp1") if d.request_id == "rp1-2")
    retry = HandoffRequested(
        request_id="rp1-2",
        run_id="rp1",
        task_id="research",
        parent_task_id="plan",
        from_agent="planner",
        to_agent="researcher",
        event_time=datetime.now(UTC),
    )
    EventSender(audit.bootstrap, audit.catalog.requests).send([retry])
    copies = wait_for(
        lambda: [d for d in audit.decisions.for_run("rp1") if d.decision_id == first.decision_id][
            1:
        ],
        30,
        message="the retry's re-emitted decision",
    )
    assert copies[0].reemitted and first.input is not None
    # the copy carries the retry's input (the client matches it), the original its own
    assert copies[0].input == input_text(HandoffRequested.model_validate_json(retry.to_json()))
    audit.audited_all()
    rows = audit.sink.query(
        "SELECT count(), any(input) IS NOT NULL FROM governance.decisions "
        f"WHERE decision_id = '{first.decision_id}'"
    )
    assert rows == [(1, True)]  # the original only: the re-emitted copy is not stored

    same = tmp_path / "same.yaml"
    same.write_text(TEST_POLICY)
    done = _replay(audit, same)
    assert done.returncode == 0, done.stdout + done.stderr
    # the six runs, and the worker readiness probe's when the sink stored it
    assert re.search(r"replayed [67] runs", done.stdout), done.stdout
    assert "reproduced exactly" in done.stdout and "nothing changes" in done.stdout

    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(TEST_POLICY.replace("max_handoffs: 8", "max_handoffs: 2"))
    changed = _replay(audit, stricter, "--format", "json")
    assert changed.returncode == 1, changed.stdout + changed.stderr
    report = orjson.loads(changed.stdout)
    assert report["faithful"] and report["runs"] in (6, 7)
    assert {c["run_id"] for c in report["changes"]} == set(runs)
    # the third handoff (the refund) of every run: asked for approval, now stopped
    assert {c["first_step"] for c in report["changes"]} == {5}
    assert {(c["recorded"], c["replayed"]) for c in report["changes"]} == {
        ("approval_required:approval_pending", "stop:handoff_budget_exceeded")
    }
    one = _replay(audit, stricter, "--run", "rp1")
    assert one.returncode == 1 and "replayed 1 run," in one.stdout, one.stdout + one.stderr
    assert "rp1  step 5" in one.stdout
    # an empty scope proves nothing: a policy gate aimed at the wrong run must not pass
    none = _replay(audit, stricter, "--run", "no_such_run")
    assert none.returncode == 7, none.stdout + none.stderr
    assert "no recorded run in scope" in none.stderr + none.stdout

    # the same history from the topics, for a deployment without the audit: decided under
    # the baseline (the policy the worker ran), compared with the stricter one
    kafka = replay_from_kafka(
        audit.bootstrap, audit.prefix, PARTITIONS, stricter, same, *("--format", "json")
    )
    assert kafka.returncode == 1, kafka.stdout + kafka.stderr
    from_topics = orjson.loads(kafka.stdout)
    assert {c["run_id"] for c in from_topics["changes"]} == set(runs)
    assert {(c["first_step"], c["replayed"]) for c in from_topics["changes"]} == {
        (5, "stop:handoff_budget_exceeded")
    }

    # the workers' decisions read from gov.decisions: the audit replay's report, field by
    # field (a deployment without the audit, or before its sink caught up)
    read = _from_decisions(audit, stricter, "--format", "json")
    assert read.returncode == 1, read.stdout + read.stderr
    assert _comparable(orjson.loads(read.stdout)) == _comparable(report)
    read = _from_decisions(audit, same)
    assert read.returncode == 0, read.stdout + read.stderr
    runs_read = re.search(r"replayed \d+ runs, \d+ decisions", read.stdout)
    assert runs_read and runs_read.group() in done.stdout, (read.stdout, done.stdout)
    assert "reproduced exactly" in read.stdout and "nothing changes" in read.stdout


def _from_decisions(a: Audit, policy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env.update(BATON_AUDIT_CHAIN_KEY=CHAIN_KEY, BATON_TOPIC_PREFIX=a.prefix)
    env["BATON_PARTITIONS"] = str(PARTITIONS)
    return subprocess.run(
        [*_BATON, "replay", "--policy", str(policy), "--from-kafka", "--bootstrap", a.bootstrap,
         *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _comparable(report: dict) -> dict:
    """A replay's JSON report without its timing, its changes in run order."""
    report = {k: v for k, v in report.items() if k != "seconds"}
    report["changes"] = sorted(report["changes"], key=lambda c: c["run_id"])
    return report
