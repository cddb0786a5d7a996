"""What every SDK client shares: options, a channel, requests built, fail-safe answers."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from baton.processors.dedup_keys import untimed_fields
from baton.processors.recorded import input_text
from baton.schemas.decision import Decision, Fallback, Phase, Reason
from baton.schemas.events import HandoffCompleted, HandoffRequested, RunFinished
from baton.schemas.names import fold
from baton.schemas.settings import Settings
from baton.streams.sdk.channel import RequestChannel
from baton.streams.sdk.options import (
    MAX_APPROVAL_WAIT_S,
    ClientOptions,
    checked_retries,
    checked_seconds,
    unanswered_decision,
)
from baton.streams.sdk.waiters import WaitKey, unchained_allow

__all__ = ["ClientBase", "answers_approval", "answers_request"]

#: an approval's expiry is enforced by the worker's sweep (every second): wait a bit past it
_EXPIRY_GRACE_S = 5.0
#: decide_by is when the client stops waiting: no grace (a worker whose clock runs ahead
#: refuses a little early, which fails closed; one whose clock lags allows a little late)
_DECIDE_BY_GRACE_S = 0.0


_log = logging.getLogger("baton.client")

#: how many runs' tenants a client remembers for ``finish`` (the newest checked or reported)
RUN_TENANTS_KEPT = 16_384


class RunTenants:
    """The tenant of each run this client sent, so that ``finish(run_id)`` finishes it under
    that tenant: a run of tenant "acme" finished under the default tenant was refused
    ``tenant_mismatch`` by the worker, and ``finish`` does not wait, so nobody heard and the
    run went on allowing handoffs (session 29, H1).

    The worker's answers say it (a decision carries its run's tenant): what a check or a
    report heard wins; what a check sent counts until then, what a report sent only when
    nothing else is known. A report sent without ``tenant=`` (the default tenant) for an
    acme run is accepted (its cost counts) and must not make the finish go out under
    "default" (session 30, H3). Kept after the finish (a
    finish that fails to go out is retried under the same tenant). Bounded: the oldest is
    forgotten first (its ``finish`` then says "default" unless given the tenant)."""

    def __init__(self, kept: int = RUN_TENANTS_KEPT) -> None:
        self._lock = threading.Lock()
        #: run id -> (tenant, how sure: 0 a report sent, 1 a check sent, 2 the worker said)
        self._by_run: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._kept = kept

    def sent(self, run_id: str, tenant: str, *, check: bool) -> None:
        """A check (or a report) of ``run_id`` goes out under ``tenant``."""
        self._note(run_id, tenant, 1 if check else 0)

    def heard(self, decision: Decision) -> None:
        """The worker answered: its decision names the run's tenant (one refusing the event's
        tenant names the event's, and is not taken)."""
        if decision.reason != Reason.TENANT_MISMATCH:
            self._note(decision.run_id, decision.tenant, 2)

    def _note(self, run_id: str, tenant: str, sure: int) -> None:
        with self._lock:
            known = self._by_run.get(run_id)
            if known is None or sure >= known[1]:
                self._by_run[run_id] = (tenant, sure)
            self._by_run.move_to_end(run_id)
            if len(self._by_run) > self._kept:
                self._by_run.popitem(last=False)

    def finishing(self, run_id: str, tenant: str | None) -> str:
        """The tenant to finish ``run_id`` under: ``tenant`` when given (a warning when the
        run is known under another), else the one it is known under, else "default"."""
        with self._lock:
            known = self._by_run.get(run_id)
        sent = None if known is None else known[0]
        if tenant is None:
            return sent if sent is not None else "default"
        if sent is not None and sent != fold(tenant):  # a tenant is a name: ACME is acme
            _log.warning(
                "finish(%r, tenant=%r): this client sent the run under tenant %r; Baton "
                "refuses a finish under another tenant (tenant_mismatch) and the run stays open",
                run_id[:80],
                tenant[:80],
                sent[:80],
            )
        return tenant


class ClientBase:
    """Options, the channel and the request -> decision bookkeeping every client shares."""

    def __init__(
        self,
        bootstrap: str | None = None,
        *,
        settings: Settings | None = None,
        topic_prefix: str | None = None,
        partitions: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        fail_open: bool | None = None,
        fallback: Fallback | str | None = None,
        connect_timeout: float | None = None,
        kafka_config: Mapping[str, Any] | None = None,
        client_id: str = "baton-client",
        decision_keys: str | Sequence[str] | None = None,
    ) -> None:
        self.options = ClientOptions.resolve(
            bootstrap,
            settings=settings,
            topic_prefix=topic_prefix,
            partitions=partitions,
            timeout=timeout,
            retries=retries,
            fail_open=fail_open,
            fallback=fallback,
            connect_timeout=connect_timeout,
            kafka_config=kafka_config,
            client_id=client_id,
            decision_keys=decision_keys,
        )
        self.channel = RequestChannel(self.options)
        self.run_tenants = RunTenants()

    @property
    def bootstrap(self) -> str:
        return self.options.bootstrap

    def _attempts(self, timeout: float | None, retries: int | None) -> tuple[float, int]:
        """A call's timeout per attempt and retries (the client's when None), bounded: a
        ValueError before anything is published."""
        timeout = self.options.timeout_s if timeout is None else checked_seconds("timeout", timeout)
        retries = self.options.retries if retries is None else checked_retries(retries)
        return timeout, retries

    def _request(
        self, event: HandoffRequested | HandoffCompleted, wait_s: float
    ) -> tuple[str, bytes, bytes, int, WaitKey, Phase, Callable[[Decision], bool]]:
        """The record to publish for ``event``, its wait key and phase, and which decisions
        answer it (``answers_request`` of the event as sent, ``decide_by`` set)."""
        phase = Phase.PRE_HANDOFF if isinstance(event, HandoffRequested) else Phase.POST_HANDOFF
        self.run_tenants.sent(event.run_id, event.tenant, check=phase is Phase.PRE_HANDOFF)
        if isinstance(event, HandoffRequested) and event.decide_by is None:
            # the client stops waiting (and fails closed) after wait_s: a request the worker
            # reads only later (a paused broker, a backlog) must not be allowed behind its back
            decide_by = datetime.now(UTC) + timedelta(seconds=wait_s + _DECIDE_BY_GRACE_S)
            event = event.model_copy(update={"decide_by": decide_by})
        return (
            self.channel.catalog.requests,
            event.run_id.encode(),
            event.to_json(),
            self.channel.partition_of(event.run_id),
            (event.run_id, event.request_id, str(phase)),
            phase,
            answers_request(event),
        )

    def _unanswered(
        self,
        event: HandoffRequested | HandoffCompleted | Decision,
        phase: Phase,
        detail: str,
        *,
        fail_open: bool | None = None,
    ) -> Decision:
        extra = _echoed_fields(event)
        error = self.channel.last_delivery_error()
        if error:
            detail = f"{detail}; last Kafka error: {error}"
        ignored = self.channel.unsigned.count((event.run_id, event.request_id, str(phase)))
        if ignored:
            detail = (
                f"{detail}; {ignored} decision(s) for it ignored: signed by no key of "
                "decision_keys (forged, or the workers' BATON_DECISION_SIGNING_KEY is another)"
            )
            # an answer came and was not the workers' (or was, under a key we lack: a signed
            # stop): never waited out into a fail-open allow (session 43, F2)
            fail_open = False
        return unanswered_decision(
            request_id=event.request_id,
            run_id=event.run_id,
            tenant=event.tenant,
            phase=phase,
            fail_open=self.options.fail_open if fail_open is None else fail_open,
            fallback=self.options.fallback,
            detail=detail,
            **extra,
        )

    def _no_decision(self, timeout: float, attempts: int) -> str:
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        return (
            f"no decision from Baton within {timeout:g} s{tries} "
            f"(Kafka at {self.bootstrap}, topic {self.channel.catalog.decisions}); "
            "is a worker running?"
        )

    @staticmethod
    def _approval_wait(decision: Decision, timeout: float | None) -> float:
        if timeout is not None:
            return checked_seconds("timeout", timeout, upper=MAX_APPROVAL_WAIT_S)
        expires = decision.approval_expires_at
        if expires is None:
            return 900.0 + _EXPIRY_GRACE_S
        left = (expires - datetime.now(expires.tzinfo or UTC)).total_seconds()
        # an expiry past the policy's longest TTL (a decision made by hand, a far-off year) is
        # no wait threading takes: bounded like a timeout given
        return min(max(left, 0.0) + _EXPIRY_GRACE_S, MAX_APPROVAL_WAIT_S)

    def _finish_event(self, run_id: str, tenant: str | None) -> tuple[str, bytes, bytes, int]:
        tenant = self.run_tenants.finishing(run_id, tenant)
        event = RunFinished(run_id=run_id, tenant=tenant, event_time=datetime.now(UTC))
        return (
            self.channel.catalog.requests,
            run_id.encode(),
            event.to_json(),
            self.channel.partition_of(run_id),
        )


#: what a fail-safe decision repeats of the handoff it answers (a request or its pending approval)
_HANDOFF_FIELDS = ("from_agent", "to_agent", "task_id", "parent_task_id", "action", "tool")


#: how much longer or shorter than ours a retry's input can be: its two times written
#: otherwise (fractions, zones: ~20 characters each), decide_by absent, steps left out
_TIMING_CHARS = 200


def answers_request(event: HandoffRequested | HandoffCompleted) -> Callable[[Decision], bool]:
    """Whether a decision under ``event``'s run, request id and phase answers ``event``: its
    ``input`` (the event the worker decided, as it parsed it) is ``event`` but for the
    client's timing (``event_time``, ``decide_by``), as the worker tells a retry from another
    request (``request_digest``).

    Another request under the same run and request id (another orchestrator's counter, or a
    writer of the requests topic racing a predictable id) is decided first and its answer
    published under the same key; the worker refuses ours ``request_id_reused``, and that
    refusal is ours. A decision with no input (a worker older than inputs, a forged record)
    answers nothing: the caller waits on, and gets the client's stop at its timeout.

    A decision without a ``chain_hash`` answers only as a stop or a recorded refusal: a worker
    links every decision that changes a run (an allow, an approval asked) into the run's
    chain, so an unchained allow is a forged record (under a decision id the worker never
    uses, or another tenant: the audit kept it outside every chain and verify passed it).

    Cost per decision read under the key: one string comparison for our own request's
    decision (the same bytes: ``input_text`` of the parsed event is ``input_text`` of
    ``event``); a parse and a dump for any other (a retry sent with another timing, a twin).
    """
    own_text = input_text(event)
    untimed: list[bytes] = []  # made at the first decision that is not the same text

    def answers(decision: Decision) -> bool:
        if unchained_allow(decision):
            return False
        said = decision.input
        if said == own_text:
            return True
        if said is None or abs(len(said) - len(own_text)) > _TIMING_CHARS:
            return False  # (a retry's input differs in its timing only: never parse a flood)
        if not untimed:
            untimed.append(_untimed(own_text) or b"")
        # compared as bytes, not as dicts: 1 == 1.0 == True would make two inputs equal
        return _untimed(said) == untimed[0]

    return answers


def _untimed(text: str) -> bytes | None:
    """An input as the worker's request digest sees it (``dedup_keys.untimed_fields``, the
    one rule both apply), keys sorted (a worker of another version may order them otherwise),
    as JSON (None: not a JSON object, or one no request is)."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict:
        return None
    try:
        return orjson.dumps(untimed_fields(doc), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # orjson reads 1,024 levels but writes 254: a forged record's input nested deeper
        # raised here, in the decision reader, and killed it (every check then unanswered)
        return None


def answers_approval(asked: Decision) -> Callable[[Decision], bool]:
    """Whether an approval-phase decision answers the approval ``asked`` opened: it names
    that approval (another request under the same run and request id opened another; the
    worker names the approval on every approval-phase record) and, when both carry one, the
    same request digest; unchained, only as a stop or a recorded refusal (``answers_request``)."""
    approval_id, digest = asked.approval_id, asked.request_digest

    def answers(decision: Decision) -> bool:
        if approval_id is None or decision.approval_id != approval_id:
            return False
        if unchained_allow(decision):
            return False
        said = decision.request_digest
        return said is None or digest is None or said == digest

    return answers


def _echoed_fields(event: HandoffRequested | HandoffCompleted | Decision) -> dict[str, Any]:
    """The fields of ``event`` a fail-safe decision about it carries, as Baton's would."""
    if isinstance(event, HandoffCompleted):
        return dict(
            to_agent=event.agent,
            task_id=event.task_id,
            tool_calls=event.tool_calls,
            handoff_status=event.status,
            event_time=event.event_time,
        )
    extra: dict[str, Any] = {name: getattr(event, name) for name in _HANDOFF_FIELDS}
    if isinstance(event, HandoffRequested):
        extra["event_time"] = event.event_time
    else:
        extra.update(
            approval_id=event.approval_id,
            approval_expires_at=event.approval_expires_at,
            depth=event.depth,
        )
    return extra
