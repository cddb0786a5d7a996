"""Session 9's worker-side attacks through a real broker and worker: `baton kill --tenant` in
another case than the folded tenant, and a release signed on an operator's clock a year ahead
of the worker's, read by the control follower."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from baton.processors.probe import wait_until_deciding
from baton.schemas.decision import Decision, Outcome, Reason
from baton.schemas.events import HandoffRequested, KillSwitchReleased
from baton.schemas.signing import (
    control_payload,
    new_private_key,
    public_key_text,
    sign,
    write_private_key,
)
from baton.streams.embedded import EmbeddedBroker
from baton.streams.sdk import GovernanceClient
from baton.streams.topics import TopicCatalog, ensure_topics
from tests.helpers import wait_for
from tests.stack import Collector, EventSender, SinkProcess, WorkerProcess

pytestmark = pytest.mark.integration

PARTITIONS = 2
ONCALL = new_private_key()
FINANCE = new_private_key()
REFUND = "billing.refund.create"


@dataclass
class Deployment:
    """One worker under a policy that lists oncall as its only operator and gates refunds
    behind finance_lead's signed grant, and an audit sink."""

    bootstrap: str
    prefix: str
    catalog: TopicCatalog
    key_file: Path
    decisions: Collector
    workdir: Path
    sink: SinkProcess

    def baton(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "BATON_BOOTSTRAP": self.bootstrap,
            "BATON_TOPIC_PREFIX": self.prefix,
            "BATON_PARTITIONS": str(PARTITIONS),
            "BATON_CLICKHOUSE_DSN": self.sink.dsn,
        }
        return subprocess.run(
            [sys.executable, "-m", "baton.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )

    def check(self, tenant: str) -> Decision:
        run = f"run_{uuid.uuid4().hex[:10]}"
        with GovernanceClient(self.bootstrap, topic_prefix=self.prefix, timeout=20) as gov:
            return gov.check(
                HandoffRequested(
                    request_id="h1",
                    run_id=run,
                    tenant=tenant,
                    task_id="t1",
                    from_agent="planner",
                    to_agent="researcher",
                    event_time=datetime.now(UTC),
                )
            )


@pytest.fixture(scope="module")
def deployment(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("session9-worker")
    key_file = workdir / "oncall.key"
    write_private_key(ONCALL, key_file)
    write_private_key(FINANCE, workdir / "finance_lead.key")
    policy = workdir / "policy.yaml"
    policy.write_text(
        f'operators:\n  oncall: "{public_key_text(ONCALL)}"\n'
        f"multi_agent:\n  require_approval_for: [{REFUND}]\n"
        f'  approval:\n    keys:\n      finance_lead: "{public_key_text(FINANCE)}"\n'
    )
    prefix = f"s9w{uuid.uuid4().hex[:8]}."
    catalog = TopicCatalog(prefix=prefix, partitions=PARTITIONS, replication=1)
    conf = {"bootstrap.servers": broker.bootstrap}
    ensure_topics(conf, catalog, timeout=10)
    worker = WorkerProcess(
        broker.bootstrap, prefix, workdir, partitions=PARTITIONS, policy=policy, name="w1"
    )
    (workdir / "chdb").mkdir()
    sink = SinkProcess(
        broker.bootstrap, prefix, workdir / "chdb", workdir / "sink.log", partitions=PARTITIONS
    )
    decisions = Collector(broker.bootstrap, catalog.decisions)
    try:
        wait_until_deciding(conf, catalog.requests, catalog.decisions, PARTITIONS, 60)
        sink.wait_ready()
        yield Deployment(broker.bootstrap, prefix, catalog, key_file, decisions, workdir, sink)
    finally:
        decisions.close()
        sink.stop()
        worker.stop()


def test_a_tenant_kill_named_in_capitals_is_confirmed_and_a_future_dated_release_refused(
    deployment: Deployment,
) -> None:
    d = deployment
    engaged = d.baton("kill", "--tenant", "ACME", "--as", "oncall", "--key", str(d.key_file))
    # it waited for a record named after "ACME"; the worker names it after "acme": exit 4
    assert engaged.returncode == 0, engaged.stdout + engaged.stderr
    assert "kill switch engaged: scope=tenant target=ACME (applied by worker" in engaged.stdout
    stopped = d.check("acme")
    assert (stopped.outcome, stopped.reason) == (Outcome.STOP, Reason.KILLED), stopped

    # a release signed on a clock a year ahead (a careless operator's machine), sent raw
    ahead = datetime.now(UTC) + timedelta(days=365)
    payload = control_payload("kill_switch_released", "tenant", "acme", "oncall", "", ahead)
    release = KillSwitchReleased(
        scope="tenant",
        tenant="acme",
        operator="oncall",
        signature=sign(ONCALL, payload),
        event_time=ahead,
    )
    EventSender(d.bootstrap, d.catalog.control).send_raw(release.to_json(), b"acme")
    refused = wait_for(
        lambda: next(
            (r for r in d.decisions.for_run("*") if r.reason == Reason.SIGNATURE_EXPIRED), None
        ),
        30,
        message=lambda: f"the refusal of the future release: {d.decisions.for_run('*')}",
    )
    assert refused.outcome == Outcome.RECORDED and "future" in (refused.detail or "")
    still = d.check("acme")
    assert (still.outcome, still.reason) == (Outcome.STOP, Reason.KILLED), still

    # the on-call's own release, signed now, still counts (applied, it would have been a
    # "replay" of the year-ahead one)
    released = d.baton(
        "kill", "--tenant", "acme", "--release", "--as", "oncall", "--key", str(d.key_file)
    )
    assert released.returncode == 0, released.stdout + released.stderr
    assert d.check("acme").outcome == Outcome.ALLOW


def test_a_kill_published_without_waiting_is_not_said_to_be_engaged(
    deployment: Deployment,
) -> None:
    """`baton kill --no-wait` printed "kill switch engaged" for a command no worker had
    applied: here an unsigned one, which the worker refuses (the run goes on)."""
    run = f"run_{uuid.uuid4().hex[:10]}"
    sent = deployment.baton("kill", "--run", run, "--as", "oncall", "--no-wait")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "engaged" not in sent.stdout
    assert f"published, not confirmed (--no-wait): scope=run target={run}" in sent.stdout
    refused = wait_for(
        lambda: next(
            (r for r in deployment.decisions.for_run(run) if r.reason == Reason.CONTROL_UNSIGNED),
            None,
        ),
        30,
        message=lambda: f"the refusal: {deployment.decisions.for_run(run)}",
    )
    assert refused.outcome == Outcome.RECORDED


def test_baton_approve_signs_the_row_it_lists_never_a_copy_showing_another_request(
    deployment: Deployment,
) -> None:
    """A writer of gov.decisions puts a copy of a pending refund's approval_required record,
    showing a harmless handoff, into the audit ahead of the real one: `baton approve` took it,
    signed the refund's digest, and the worker allowed the refund. Then it refused to sign
    (the copy does not hold together), and the real approval could not be answered. Now
    `baton approvals` lists the worker's row and names the copy, and `baton approve` signs
    the worker's row: the refund, as listed."""
    d = deployment
    run = f"run_{uuid.uuid4().hex[:10]}"
    refund = HandoffRequested(
        request_id="h-refund",
        run_id=run,
        task_id="refund",
        from_agent="planner",
        to_agent="billing_agent",
        action=REFUND,
        event_time=datetime.now(UTC),
    )
    with GovernanceClient(d.bootstrap, topic_prefix=d.prefix, timeout=20) as gov:
        asked = gov.check(refund)
    assert asked.outcome == Outcome.APPROVAL_REQUIRED and asked.approval_id, asked
    # the same approval id and digest, another handoff shown, decided a second earlier
    shown = dataclasses.replace(
        asked,
        decision_id="f" * 32,
        to_agent="researcher",
        action=None,
        task_id="summary",
        decided_at=(asked.decided_at or datetime.now(UTC)) - timedelta(seconds=1),
    )
    EventSender(d.bootstrap, d.catalog.decisions).send_raw(shown.to_json(), run.encode())

    def both_rows() -> bool:
        rows = d.sink.query(
            "SELECT count() FROM governance.decisions FINAL WHERE approval_id = "
            f"'{asked.approval_id}' AND outcome = 'approval_required'"
        )
        return rows[0][0] == 2

    wait_for(both_rows, 30, message="both approval_required rows in the audit")
    listed = d.baton("approvals", "--run", run, "-f", "json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert [orjson.loads(line)["to_agent"] for line in listed.stdout.splitlines()] == [
        "billing_agent"
    ], listed.stdout
    assert "not listed: its record does not hold together" in listed.stderr, listed.stderr
    key = str(d.workdir / "finance_lead.key")
    out = d.baton("approve", asked.approval_id, "--as", "finance_lead", "--key", key)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"request digest {asked.request_digest}" in out.stdout, out.stdout
    # signed for the refund as listed: the worker takes it as the refund's answer
    wait_for(
        lambda: [
            r for r in d.decisions.for_run(run) if r.phase == "approval" and r.outcome == "allow"
        ],
        30,
        message="the refund's grant decided",
    )
