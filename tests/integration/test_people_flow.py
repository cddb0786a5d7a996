"""A person approves, kills and changes policy from the `baton` command, through a real worker,
broker and audit sink; and nobody without a listed private key can do any of it: every forged,
unsigned, replayed, self- or beneficiary answer and every forged release or policy is refused,
recorded with its reason, and changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from baton.schemas.decision import Decision, Outcome, Phase, Reason
from baton.schemas.events import (
    ApprovalGranted,
    HandoffRequested,
    KillSwitchReleased,
    PolicyUpdated,
)
from baton.schemas.policy import parse_policy
from baton.schemas.signing import approval_payload, load_private_key, sign
from baton.streams.embedded import EmbeddedBroker
from baton.streams.sdk import ApproverClient, GovernanceClient, OperatorClient
from baton.streams.topics import TopicCatalog
from tests.helpers import wait_for
from tests.stack import (
    Collector,
    EventSender,
    SinkProcess,
    WorkerProcess,
    fresh_topics,
    wait_deciding,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
REFUND = "billing.refund.create"
#: who gets a key: an approver, the agent that asks (self), the one that would receive the
#: refund (beneficiary), an operator; mallory's key is listed nowhere
PEOPLE = ("finance_lead", "planner", "billing_agent", "oncall", "mallory")


def _policy(lines: dict[str, str], extra: str = "") -> str:
    return f"""\
multi_agent:
  max_handoffs: 100
  require_approval_for: [{REFUND}]
  approval:
    ttl_seconds: 600
    keys:
      {lines["finance_lead"]}
      {lines["planner"]}
      {lines["billing_agent"]}
operators:
  {lines["oncall"]}
{extra}"""


@dataclass
class People:
    bootstrap: str
    prefix: str
    workdir: Path
    keys: Path
    lines: dict[str, str]
    catalog: TopicCatalog
    worker: WorkerProcess
    sink: SinkProcess
    decisions: Collector
    env: dict[str, str]

    def baton(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "baton.cli", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=90,
        )

    def key(self, name: str) -> str:
        return str(self.keys / f"{name}.key")

    def client(self) -> GovernanceClient:
        return GovernanceClient(self.bootstrap, topic_prefix=self.prefix, timeout=20)

    def refund(self, gov: GovernanceClient, run: str, request: str = "r-refund") -> Decision:
        d = gov.check(
            HandoffRequested(
                request_id=request,
                run_id=run,
                task_id="refund",
                from_agent="planner",
                to_agent="billing_agent",
                action=REFUND,
                event_time=datetime.now(UTC),
            )
        )
        assert d.outcome == Outcome.APPROVAL_REQUIRED, d
        assert d.approval_id and d.request_digest, d
        return d

    def listed(self, approval_id: str) -> dict:
        """The approval as `baton approvals` lists it, once the audit has it."""

        def find() -> dict | None:
            out = self.baton("approvals", "-f", "json")
            assert out.returncode == 0, out.stderr
            rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
            return next((r for r in rows if r["approval_id"] == approval_id), None)

        return wait_for(find, 30, interval=0.3, message=f"{approval_id} in `baton approvals`")

    def audited(self, sql: str) -> list[tuple]:
        return self.sink.query(sql)

    def record(self, run: str, match) -> Decision:  # type: ignore[no-untyped-def]
        return wait_for(
            lambda: next((d for d in self.decisions.for_run(run) if match(d)), None),
            20,
            message=lambda: f"a decision of {run}: {self.decisions.for_run(run)}",
        )


@pytest.fixture(scope="module")
def people(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[People]:
    workdir = tmp_path_factory.mktemp("people")
    keys = workdir / "keys"
    lines = {}
    # side by side: each is a Python start-up, the keys are independent
    making = {
        name: subprocess.Popen(
            [sys.executable, "-m", "baton.cli", "keys", "new", name, "--dir", str(keys)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in PEOPLE
    }
    for name, proc in making.items():
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        lines[name] = out.strip()
    policy = workdir / "policy.yaml"
    policy.write_text(_policy(lines))
    prefix = f"p{uuid.uuid4().hex[:8]}."
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    (workdir / "chdb").mkdir()
    env = {
        "BATON_BOOTSTRAP": broker.bootstrap,
        "BATON_TOPIC_PREFIX": prefix,
        "BATON_PARTITIONS": str(PARTITIONS),
        "BATON_CLICKHOUSE_DSN": f"chdb://{workdir / 'chdb'}",
    }
    worker = WorkerProcess(
        broker.bootstrap, prefix, workdir, partitions=PARTITIONS, policy=policy, name="w1"
    )
    sink = SinkProcess(
        broker.bootstrap, prefix, workdir / "chdb", workdir / "sink.log", partitions=PARTITIONS
    )
    decisions = Collector(broker.bootstrap, catalog.decisions)
    try:
        wait_deciding(broker.bootstrap, catalog)
        sink.wait_ready()
        yield People(
            broker.bootstrap, prefix, workdir, keys, lines, catalog, worker, sink, decisions, env
        )
    finally:
        decisions.close()
        sink.stop()
        worker.stop()


def _run_id() -> str:
    return f"run_{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- approvals


def test_keys_new_then_approve_from_the_command_line_allows_the_refund(people: People) -> None:
    # the key made by `baton keys new` is what the worker's policy lists
    assert people.lines["finance_lead"].startswith('finance_lead: "ed25519:')
    assert (people.keys / "finance_lead.key").stat().st_mode & 0o777 == 0o600
    run = _run_id()
    with people.client() as gov:
        asked = people.refund(gov, run)
        listed = people.listed(asked.approval_id)
        assert (listed["run_id"], listed["request_id"], listed["action"]) == (
            run,
            "r-refund",
            REFUND,
        )
        assert (listed["asked_by"], listed["to_agent"]) == ("planner", "billing_agent")
        assert listed["request_digest"] == asked.request_digest
        assert 500 < listed["expires_in"] <= 600 and 0 <= listed["age"] < 60
        table = people.baton("approvals", "--run", run)
        assert asked.approval_id in table.stdout and "expires_in" in table.stdout

        out = people.baton(
            "approve",
            asked.approval_id,
            "--as",
            "finance_lead",
            "--key",
            people.key("finance_lead"),
            "--comment",
            "refund checked against the invoice",
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "approval allow approval_granted by finance_lead" in out.stdout
        assert asked.request_digest in out.stdout
        # the orchestrator waiting for it gets the same allow
        final = gov.wait_for_approval(asked, timeout=20)
        assert (final.phase, final.outcome, final.reason, final.approver) == (
            Phase.APPROVAL,
            Outcome.ALLOW,
            Reason.APPROVAL_GRANTED,
            "finance_lead",
        )
    # answered: no longer listed, and a second answer is turned away before publishing
    wait_for(
        lambda: asked.approval_id not in people.baton("approvals").stdout,
        20,
        message="the answered approval to leave the list",
    )
    again = people.baton(
        "approve", asked.approval_id, "--as", "finance_lead", "--key", people.key("finance_lead")
    )
    assert again.returncode == 2 and "was answered already" in again.stderr


def test_deny_from_the_command_line_stops_the_refund(people: People) -> None:
    run = _run_id()
    with people.client() as gov:
        asked = people.refund(gov, run)
        people.listed(asked.approval_id)
        out = people.baton(
            "deny",
            asked.approval_id,
            "--as",
            "finance_lead",
            "--key",
            people.key("finance_lead"),
            "--comment",
            "duplicate refund",
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "approval stop approval_denied by finance_lead" in out.stdout
        final = gov.wait_for_approval(asked, timeout=20)
    assert (final.outcome, final.reason, final.detail) == (
        Outcome.STOP,
        Reason.APPROVAL_DENIED,
        "duplicate refund",
    )


def test_every_answer_without_the_approvers_key_is_refused_recorded_and_changes_nothing(
    people: People,
) -> None:
    run = _run_id()
    with people.client() as gov:
        asked = people.refund(gov, run)
        other = people.refund(gov, run, "r-refund-2")  # a second pending approval, same run
        people.listed(asked.approval_id)

        def cli(name: str, key: str) -> subprocess.CompletedProcess[str]:
            return people.baton("approve", asked.approval_id, "--as", name, "--key", key)

        # forged: finance_lead's name, mallory's key
        forged = cli("finance_lead", people.key("mallory"))
        # a name the policy does not list
        stranger = cli("mallory", people.key("mallory"))
        # the agent that asked for the handoff, with its own listed key
        self_ = cli("planner", people.key("planner"))
        # the agent that would receive the refund, with its own listed key
        beneficiary = cli("billing_agent", people.key("billing_agent"))
        for result, reason in [
            (forged, Reason.BAD_SIGNATURE),
            (stranger, Reason.UNKNOWN_APPROVER),
            (self_, Reason.SELF_APPROVAL),
            (beneficiary, Reason.BENEFICIARY_APPROVAL),
        ]:
            assert result.returncode == 6, (reason, result.stdout, result.stderr)
            assert f"approval recorded {reason}" in result.stdout, result.stdout
            assert f"refused this grant ({reason})" in result.stderr
            assert "is still pending" in result.stderr

        finance = load_private_key(people.key("finance_lead"))
        now = datetime.now(UTC)

        def grant(**kw: object) -> ApprovalGranted:
            fields: dict = dict(
                approval_id=asked.approval_id,
                run_id=run,
                approver="finance_lead",
                request_digest=asked.request_digest,
                event_time=now,
            )
            fields.update(kw)
            return ApprovalGranted(**fields)

        # unsigned: plain JSON on gov.approvals, as any Kafka client can write it
        sender = EventSender(people.bootstrap, people.catalog.approvals)
        unsigned = grant()
        sender.send([unsigned])
        # replayed: the approver's real signature over the *other* request's grant, moved here
        real_other = sign(
            finance,
            approval_payload(
                other.approval_id, run, other.request_digest, "grant", "finance_lead", now
            ),
        )
        moved = grant(signature=real_other, request_digest=other.request_digest)
        # signed by the approver, but over another request's digest: not this request
        wrong_request = grant(
            signature=sign(
                finance,
                approval_payload(
                    asked.approval_id, run, other.request_digest, "grant", "finance_lead", now
                ),
            ),
            request_digest=other.request_digest,
        )
        # an old signature: made two hours before the approval was asked for
        old = now - timedelta(hours=2)
        stale = grant(
            event_time=old,
            signature=sign(
                finance,
                approval_payload(
                    asked.approval_id, run, asked.request_digest, "grant", "finance_lead", old
                ),
            ),
        )
        with ApproverClient(people.bootstrap, topic_prefix=people.prefix, timeout=20) as sdk:
            answers = {
                reason: sdk.publish(event, wait=True, request_id=asked.request_id)
                for event, reason in [
                    (moved, Reason.BAD_SIGNATURE),
                    (wrong_request, Reason.SIGNED_FOR_ANOTHER_REQUEST),
                    (stale, Reason.SIGNATURE_EXPIRED),
                ]
            }
        for reason, record in answers.items():
            assert record is not None
            assert (record.phase, record.outcome, record.reason) == (
                Phase.APPROVAL,
                Outcome.RECORDED,
                reason,
            ), record
        unsigned_record = people.record(
            run, lambda d: d.reason == Reason.APPROVAL_UNSIGNED and d.approval_id
        )
        assert unsigned_record.outcome == Outcome.RECORDED
        assert unsigned_record.approval_id == asked.approval_id

        # nothing of it counted: the approval is pending, and the approver's own grant (the
        # SDK, signing inside) still turns it into an allow
        assert people.listed(asked.approval_id)
        with ApproverClient(
            people.bootstrap,
            topic_prefix=people.prefix,
            key_file=people.key("finance_lead"),
            timeout=20,
        ) as finance_lead:
            applied = finance_lead.grant(asked, approver="finance_lead", wait=True)
        assert applied is not None
        assert (applied.outcome, applied.reason) == (Outcome.ALLOW, Reason.APPROVAL_GRANTED)
        assert gov.wait_for_approval(asked, timeout=20).outcome == Outcome.ALLOW

    # every attempt is in the audit with its reason
    want = {
        Reason.BAD_SIGNATURE,
        Reason.UNKNOWN_APPROVER,
        Reason.SELF_APPROVAL,
        Reason.BENEFICIARY_APPROVAL,
        Reason.APPROVAL_UNSIGNED,
        Reason.SIGNED_FOR_ANOTHER_REQUEST,
        Reason.SIGNATURE_EXPIRED,
    }

    def audited() -> set[str]:
        rows = people.audited(
            "SELECT reason, approver FROM governance.decisions FINAL "
            f"WHERE run_id = '{run}' AND phase = 'approval' AND outcome = 'recorded'"
        )
        return {r[0] for r in rows}

    wait_for(lambda: audited() >= want, 20, message=lambda: f"refusals audited: {audited()}")


# --------------------------------------------------------------------------- control


def test_a_kill_holds_against_forged_and_unsigned_releases(people: People) -> None:
    run = _run_id()

    def handoff(n: int) -> Decision:
        return gov.check(
            HandoffRequested(
                request_id=f"h{n}",
                run_id=run,
                task_id=f"t{n}",
                from_agent="planner",
                to_agent="researcher",
                event_time=datetime.now(UTC),
            )
        )

    def kill(*args: str) -> subprocess.CompletedProcess[str]:
        return people.baton("kill", "--run", run, "--reason", "runaway", *args)

    with people.client() as gov:
        assert handoff(1).outcome == Outcome.ALLOW
        engaged = kill("--as", "oncall", "--key", people.key("oncall"))
        assert engaged.returncode == 0, engaged.stdout + engaged.stderr
        assert f"kill switch engaged: scope=run target={run} (applied by worker" in engaged.stdout

        for args, reason in [
            (("--as", "oncall", "--key", people.key("mallory")), Reason.BAD_SIGNATURE),
            (("--as", "oncall"), Reason.CONTROL_UNSIGNED),
            (("--as", "mallory", "--key", people.key("mallory")), Reason.UNKNOWN_OPERATOR),
        ]:
            released = kill("--release", *args)
            assert released.returncode == 6, (reason, released.stdout, released.stderr)
            assert f"kill switch NOT released: scope=run target={run}" in released.stdout
            assert f"control recorded {reason}" in released.stdout
            assert f"refused this release ({reason})" in released.stderr
        # and a release written straight to gov.control without a signature
        raw = KillSwitchReleased(
            scope="run", run_id=run, operator="oncall", event_time=datetime.now(UTC)
        )
        EventSender(people.bootstrap, people.catalog.control).send_raw(raw.to_json(), b"x")
        # (a run's control records are keyed by the run)
        people.record(run, lambda d: d.reason == Reason.CONTROL_UNSIGNED)

        stopped = handoff(2)
        assert (stopped.outcome, stopped.reason) == (Outcome.STOP, Reason.KILLED)

        with OperatorClient(
            people.bootstrap,
            topic_prefix=people.prefix,
            key_file=people.key("oncall"),
            timeout=20,
        ) as oncall:
            record = oncall.release(run_id=run, operator="oncall", reason="fixed")
        assert record is not None and record.reason == Reason.KILL_SWITCH_RELEASED
        assert handoff(3).outcome == Outcome.ALLOW


def test_the_example_orchestrator_signs_its_grants_or_ends_naming_why(people: People) -> None:
    """H2, session 33: under a policy with approval.keys the example's approver sent unsigned
    grants, the workers recorded approval_unsigned, and the example waited without a word
    until the approvals expired (15 minutes)."""
    example = Path(__file__).resolve().parents[2] / "examples" / "orchestrator.py"
    args = [sys.executable, str(example), "--bootstrap", people.bootstrap]
    args += ["--topic-prefix", people.prefix, "--runs", "30", "--seed", "3"]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*args, *extra], capture_output=True, text=True, timeout=120)

    unsigned = run()
    assert unsigned.returncode == 2, unsigned.stdout + unsigned.stderr
    assert "did not count finance_lead's grant" in unsigned.stderr
    assert "approval_unsigned" in unsigned.stderr and "--approver-key" in unsigned.stderr
    signed = run("--approver-key", people.key("finance_lead"))
    assert signed.returncode == 0, signed.stdout + signed.stderr
    granted = next(ln for ln in signed.stdout.splitlines() if ln.startswith("approvals granted"))
    assert int(granted.split(":")[1].split(";")[0]) > 0, signed.stdout
    assert "allow:approval_granted" in signed.stdout, signed.stdout


def test_a_forged_policy_is_refused_and_a_signed_one_is_applied(people: People) -> None:
    # a policy that would turn enforcement off: signed with mallory's key, unsigned, then
    # the real one (the same rules with a new version) signed by oncall
    lax = people.workdir / "lax.yaml"
    lax.write_text("multi_agent:\n  shadow_mode: true\n")
    workers = ("--policy", str(people.workdir / "policy.yaml"))
    publish = ("policy", "publish", str(lax), "--as", "oncall", "--key", people.key("mallory"))
    # it drops every operator of the policy in force: refused before anything is sent, the
    # changes said (H2, session 33: one such publish switched signing off in silence)
    refused = people.baton(*publish, *workers)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    # addressed by the bootstrap alone (no --policy: the seed is what this command computes),
    # the workers' own record of their policy says what they hold (H1, session 34: published)
    blind = people.baton(*publish)
    assert blind.returncode == 2, blind.stdout + blind.stderr
    assert "the workers recorded policy" in blind.stderr and "turns signing off" in blind.stderr
    assert "security change: operators removed: oncall" in blind.stderr
    # a forged record of the seed policy in force (no operators), as anyone who may write
    # gov.decisions can write it: the drop is still refused (H2, session 34: it went through)
    from baton.processors.recorded import policy_in_force
    from baton.schemas.policy import load_policy

    forged_record = policy_in_force(load_policy(None), datetime.now(UTC), "forger")
    EventSender(people.bootstrap, people.catalog.decisions).send_raw(forged_record.to_json(), b"*")
    still = people.baton(*publish)
    assert still.returncode == 2, still.stdout + still.stderr
    assert "operators: unknown (addressed by --bootstrap with no --policy" in still.stderr
    # the bootstrap in a variable of another case, which the settings read too (H3, s. 34)
    env = {k: v for k, v in {**os.environ, **people.env}.items() if k != "BATON_BOOTSTRAP"}
    lower = subprocess.run(
        [sys.executable, "-m", "baton.cli", *publish],
        env={**env, "BATON_bootstrap": people.bootstrap},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert lower.returncode == 2, lower.stdout + lower.stderr
    assert "operators: unknown" in lower.stderr
    assert "turns signing off" in refused.stderr and "operators: " in refused.stderr
    assert "security change: operators removed: oncall" in refused.stderr
    assert "multi_agent shadow_mode: off -> on" in refused.stderr
    assert "Nothing was published" in refused.stderr and not refused.stdout
    forged = people.baton(*publish, *workers, "--allow-unsigned")
    assert forged.returncode == 6, forged.stdout + forged.stderr
    assert "control recorded bad_signature" in forged.stdout
    assert "refused this policy update (bad_signature)" in forged.stderr
    unsigned = PolicyUpdated(
        policy_yaml=lax.read_text(), operator="oncall", event_time=datetime.now(UTC)
    )
    EventSender(people.bootstrap, people.catalog.control).send_raw(unsigned.to_json(), b"*")
    people.record(
        "*",
        lambda d: d.reason == Reason.CONTROL_UNSIGNED and d.request_id.startswith("policy_updated"),
    )
    with people.client() as gov:
        # still enforced: a refund still waits for an approver
        people.refund(gov, _run_id())

    newer = people.workdir / "newer.yaml"
    newer.write_text(
        _policy(people.lines, "# max_handoffs raised by oncall\n").replace(
            "max_handoffs: 100", "max_handoffs: 120"
        )
    )
    applied = people.baton(
        "policy", "publish", str(newer), "--as", "oncall", "--key", people.key("oncall")
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "control recorded policy_updated by oncall" in applied.stdout
    # the audit has who and the hashes before and after
    rows = wait_for(
        lambda: people.audited(
            "SELECT approver, detail FROM governance.decisions FINAL "
            "WHERE reason = 'policy_updated'"
        ),
        20,
        message="the policy update in the audit",
    )
    assert rows[0][0] == "oncall" and "->" in rows[0][1]
    # which policy the workers use, and why: the forged and the unsigned updates refused,
    # the signed one in force
    current = people.baton("policy", "current", "--policy", str(people.workdir / "policy.yaml"))
    assert current.returncode == 0, current.stdout + current.stderr
    assert "refused" in current.stdout and "bad_signature" in current.stdout
    assert "control_unsigned" in current.stdout
    assert f"policy in force: {parse_policy(newer.read_text()).version}" in current.stdout
    assert "from the policy update at" in current.stdout and "by oncall" in current.stdout
