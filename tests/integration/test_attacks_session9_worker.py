"""Session 9's worker-side attacks through a real broker and worker: `baton kill --tenant` in
another case than the folded tenant, and a release signed on an operator's clock a year ahead
of the worker's, read by the control follower."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
from tests.stack import Collector, EventSender, WorkerProcess

pytestmark = pytest.mark.integration

PARTITIONS = 2
ONCALL = new_private_key()


@dataclass
class Deployment:
    """One worker under a policy that lists oncall as its only operator."""

    bootstrap: str
    prefix: str
    catalog: TopicCatalog
    key_file: Path
    decisions: Collector

    def baton(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "BATON_BOOTSTRAP": self.bootstrap,
            "BATON_TOPIC_PREFIX": self.prefix,
            "BATON_PARTITIONS": str(PARTITIONS),
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
    policy = workdir / "policy.yaml"
    policy.write_text(f'operators:\n  oncall: "{public_key_text(ONCALL)}"\n')
    prefix = f"s9w{uuid.uuid4().hex[:8]}."
    catalog = TopicCatalog(prefix=prefix, partitions=PARTITIONS, replication=1)
    conf = {"bootstrap.servers": broker.bootstrap}
    ensure_topics(conf, catalog, timeout=10)
    worker = WorkerProcess(
        broker.bootstrap, prefix, workdir, partitions=PARTITIONS, policy=policy, name="w1"
    )
    decisions = Collector(broker.bootstrap, catalog.decisions)
    try:
        wait_until_deciding(conf, catalog.requests, catalog.decisions, PARTITIONS, 60)
        yield Deployment(broker.bootstrap, prefix, catalog, key_file, decisions)
    finally:
        decisions.close()
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
