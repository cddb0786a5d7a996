"""The orchestrator client SDK: ask Baton before a handoff, report after it, wait for approvals.

    from baton.streams.sdk import GovernanceClient

    with GovernanceClient("127.0.0.1:9092") as gov:
        decision = gov.check(handoff)            # HandoffRequested -> Decision (pre_handoff)
        if decision.outcome == "approval_required":
            decision = gov.wait_for_approval(decision)
        if decision.outcome == "allow":
            ...                                  # delegate the task
            gov.report(completed)                # HandoffCompleted -> Decision (post_handoff)
        else:
            ...                                  # decision.fallback: single_agent | constrained
        gov.finish(run_id)

``AsyncGovernanceClient`` is the same API for asyncio (``await gov.check(...)``; thousands of
checks may be in flight at once). ``ApproverClient`` grants and denies approvals,
``OperatorClient`` engages and releases kill switches and publishes policies.

Guarantees: a call that gets no decision within its timeout *fails closed*: it returns a
``stop`` with reason ``governance_unavailable`` and the configured fallback (``allow`` only
with ``fail_open=True``); it never raises for a slow or absent worker. Retries re-publish the
same ``request_id``, which Baton answers from its record: the same ``decision_id``, counted
once. Not guaranteed: a request answered after its timeout is still decided by Baton (and
counts against the run); an unreachable broker *at connect time* raises ``BrokerUnavailable``.

The rooms: ``governance`` and ``governance_async`` (the orchestrator's clients), ``approvers``,
``operators`` and the ``publisher`` they share, ``base`` (what every client shares),
``channel`` (requests out in order, decisions in), ``waiters`` (who waits for which
decision), ``options`` (arguments, ``BATON_*`` environment, fail-safe answers). The same
names are importable from ``baton.streams.client``, the path the docs use.
"""

from baton.streams.sdk.approvers import ApproverClient
from baton.streams.sdk.governance import GovernanceClient
from baton.streams.sdk.governance_async import AsyncGovernanceClient
from baton.streams.sdk.operators import MAX_POLICY_UPDATE_BYTES, OperatorClient
from baton.streams.sdk.options import ClientOptions, ClientSettings

__all__ = [
    "MAX_POLICY_UPDATE_BYTES",
    "ApproverClient",
    "AsyncGovernanceClient",
    "ClientOptions",
    "ClientSettings",
    "GovernanceClient",
    "OperatorClient",
]
