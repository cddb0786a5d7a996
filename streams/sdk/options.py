"""Options of the client SDK (argument, ``BATON_*`` environment, default) and its fail-safe answers.

Every client option can be given as a constructor argument or as an environment variable; the
argument wins. The variables are the worker's (``BATON_BOOTSTRAP``, ``BATON_TOPIC_PREFIX``,
``BATON_SECURITY_PROTOCOL``, ``BATON_SASL_*``, ...) plus the ``BATON_CLIENT_*`` ones below.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from pydantic import Field, ValidationError

from baton.schemas.decision import Decision, Fallback, Outcome, Phase, Reason, decision_id_for
from baton.schemas.decision_signing import DecisionKeys
from baton.schemas.decision_signing import decision_keys as decision_keys_of
from baton.schemas.env_names import (
    closest,
    model_variables,
    settings_problems,
    unknown_text,
)
from baton.schemas.errors import ConfigError
from baton.schemas.policy_approval import MAX_APPROVAL_TTL_S
from baton.schemas.settings import MAX_TIMEOUT_S, Settings, checked_bootstrap
from baton.streams.kafka import printable_config
from baton.streams.topics import TopicCatalog

__all__ = [
    "MAX_APPROVAL_WAIT_S",
    "MAX_RETRIES",
    "ClientOptions",
    "ClientSettings",
    "checked_retries",
    "checked_seconds",
    "unanswered_decision",
    "warn_unknown_client_variables",
]

#: the most re-publications of one request (each waits up to a timeout: 100 x 3600 s is
#: still a time a datetime can hold, for the request's decide_by)
MAX_RETRIES = 100
#: the longest wait for an approval's answer: its longest TTL (the policy's bound) and a minute
MAX_APPROVAL_WAIT_S = MAX_APPROVAL_TTL_S + 60.0


def checked_seconds(
    name: str, value: object, *, upper: float = MAX_TIMEOUT_S, zero: bool = False
) -> float:
    """``value`` as a number of seconds in (0, ``upper``] ([0, ``upper``] with ``zero``), or a
    ValueError naming ``name``, the bound and the value. inf, nan and 1e308 were taken: a
    decide_by past datetime's range (OverflowError), a wait threading refuses."""
    low = "0 <=" if zero else "0 <"
    bound = f"{upper:.0f}" if upper == int(upper) else f"{upper:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: must be a number of seconds, {low} {name} <= {bound}, "
                         f"got {value!r}")  # fmt: skip
    if not (0 <= value <= upper) or (value == 0 and not zero):  # nan fails both comparisons
        raise ValueError(f"{name}: must be {low} {name} <= {bound} seconds, got {value!r}")
    return float(value)


def checked_retries(value: object) -> int:
    """``value`` as a retry count in [0, MAX_RETRIES], or a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
        raise ValueError(f"retries: must be an integer, 0 <= retries <= {MAX_RETRIES}, "
                         f"got {value!r}")  # fmt: skip
    return value


class ClientSettings(Settings):
    """The worker's settings plus what only an orchestrator needs (env ``BATON_CLIENT_*``)."""

    client_timeout_s: float = Field(
        5.0,
        gt=0,
        le=MAX_TIMEOUT_S,
        description="wait this long for a decision, then answer governance_unavailable",
    )
    client_retries: int = Field(
        0,
        ge=0,
        le=MAX_RETRIES,
        description="re-publish an unanswered request this many times (same request_id)",
    )
    client_fail_open: bool = Field(
        False, description="answer allow (not stop) when no decision arrives: only if you must"
    )
    client_fallback: Fallback = Field(
        Fallback.SINGLE_AGENT, description="fallback carried by a governance_unavailable stop"
    )
    client_fetch_wait_ms: int = Field(
        10,
        ge=0,
        le=300_000,  # librdkafka's bound on fetch.wait.max.ms
        description="longest a decisions fetch waits for data (Tansu never answers "
        "one early: this is added to every check there; raise it on Apache Kafka)",
    )
    client_delivery_timeout_s: float = Field(
        30.0,
        # 0.0001 passed gt=0 and was message.timeout.ms 0: librdkafka's "never time out", so
        # a check queued during an outage was sent whenever Kafka came back
        ge=0.01,
        le=MAX_TIMEOUT_S,
        description="drop a request librdkafka could not deliver within this",
    )


@dataclass(frozen=True)
class ClientOptions:
    """What one client was configured with, resolved once (arguments over environment)."""

    kafka_config: Mapping[str, Any]
    catalog: TopicCatalog
    #: expected partition count of the run-keyed topics; None = take the broker's
    partitions: int | None = None
    timeout_s: float = 5.0
    retries: int = 0
    fail_open: bool = False
    fallback: Fallback = Fallback.SINGLE_AGENT
    connect_timeout_s: float = 10.0
    delivery_timeout_s: float = 30.0
    fetch_wait_ms: int = 10
    client_id: str = field(default="baton-client")
    #: take only decisions one of these keys signed (empty: any)
    decision_keys: DecisionKeys = field(default_factory=lambda: DecisionKeys(()))

    @property
    def bootstrap(self) -> str:
        return str(self.kafka_config.get("bootstrap.servers", "?"))

    def __repr__(self) -> str:
        # kafka_config holds sasl.password / ssl.key.password in clear: never print it as is
        shown = [f"kafka_config={printable_config(self.kafka_config)!r}"]
        shown += [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)[1:]]
        return f"ClientOptions({', '.join(shown)})"

    @classmethod
    def resolve(
        cls,
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
    ) -> ClientOptions:
        """Arguments first, then ``settings`` (default: read from ``BATON_*`` variables)."""
        if not isinstance(settings, ClientSettings):  # the client_* fields come from env
            warn_unknown_client_variables(os.environ)
        try:
            if settings is None:
                s = ClientSettings()
            elif isinstance(settings, ClientSettings):
                s = settings
            else:  # a plain Settings: keep what it says, the client_* fields from env/defaults
                s = ClientSettings(**settings.model_dump(exclude_unset=True))
        except ValidationError as exc:  # a BATON_* variable: named, as the CLI names it
            raise ValueError(f"invalid settings: {settings_problems(exc)}") from None
        if bootstrap is not None:  # (model_copy validates nothing: checked as Settings would)
            s = s.model_copy(update={"bootstrap": checked_bootstrap(bootstrap)})
        if partitions is None and "partitions" in s.model_fields_set:
            # only an explicitly set count is a claim to check; the default 8 is not
            partitions = s.partitions
        if partitions is not None and (
            isinstance(partitions, bool)
            or not isinstance(partitions, int)
            or not 1 <= partitions <= 100_000
        ):
            raise ValueError(f"partitions: must be an integer, 1 <= partitions <= 100000, "
                             f"got {partitions!r}")  # fmt: skip
        if timeout is not None:
            timeout = checked_seconds("timeout", timeout)
        if connect_timeout is not None:
            connect_timeout = checked_seconds("connect_timeout", connect_timeout)
        if retries is not None:
            retries = checked_retries(retries)
        if fail_open is not None and not isinstance(fail_open, bool):
            # fail_open="false" (read from a file or variable by the caller) is a true string:
            # every check Baton did not answer in time was allowed
            raise ValueError(f"fail_open: must be True or False, got {fail_open!r}"[:200])
        prefix = s.topic_prefix if topic_prefix is None else topic_prefix
        try:  # (a ValueError like every other option's)
            if decision_keys is None:
                keys = decision_keys_of(s.decision_keys, "BATON_DECISION_KEYS", unset="")
            else:
                keys = decision_keys_of(decision_keys)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return cls(
            kafka_config={**s.kafka_config(), **(kafka_config or {})},
            catalog=TopicCatalog(prefix, partitions or s.partitions, s.replication_factor),
            partitions=partitions,
            timeout_s=s.client_timeout_s if timeout is None else timeout,
            retries=s.client_retries if retries is None else retries,
            fail_open=s.client_fail_open if fail_open is None else fail_open,
            fallback=Fallback(fallback) if fallback is not None else s.client_fallback,
            connect_timeout_s=s.connect_timeout_s if connect_timeout is None else connect_timeout,
            delivery_timeout_s=s.client_delivery_timeout_s,
            fetch_wait_ms=s.client_fetch_wait_ms,
            client_id=client_id,
            decision_keys=keys,
        )


def unanswered_decision(
    *,
    request_id: str,
    run_id: str,
    tenant: str,
    phase: Phase,
    fail_open: bool,
    fallback: Fallback,
    detail: str,
    **fields: Any,
) -> Decision:
    """The decision the client gives itself when Baton did not answer: fail closed by default.

    Fail closed is ``stop`` with reason ``governance_unavailable`` and the configured fallback;
    fail open is ``allow`` (``recorded`` for a post-handoff report). The id is derived from the
    request like Baton's, with its own phase tag, so it never collides with a real decision.
    """
    if fail_open:
        outcome = Outcome.RECORDED if phase == Phase.POST_HANDOFF else Outcome.ALLOW
    else:
        outcome = Outcome.STOP
    return Decision(
        decision_id=decision_id_for(run_id, request_id, f"{phase}:unanswered"),
        request_id=request_id,
        run_id=run_id,
        tenant=tenant,
        phase=phase,
        outcome=outcome,
        reason=Reason.GOVERNANCE_UNAVAILABLE,
        fallback=fallback if outcome == Outcome.STOP else None,
        decided_at=datetime.now(UTC),
        detail=detail,
        **fields,
    )


#: the ``BATON_CLIENT_*`` names this process has warned about (once each)
_CLIENT_WARNED: set[str] = set()
#: what only an orchestrator reads (the rest of ``BATON_*`` is the workers' too, checked by
#: the ``baton`` commands: cli/env_check.py)
_CLIENT_PREFIX = "BATON_CLIENT_"
log = logging.getLogger("baton.client")


def warn_unknown_client_variables(environ: Mapping[str, str]) -> list[str]:
    """Log a warning (logger ``baton.client``), once a process, for each set
    ``BATON_CLIENT_*`` variable ``ClientSettings`` does not read, with the closest it reads:
    a mistyped timeout or retry count would be the default, silently. Returns them."""
    names = [n for n in environ if n.upper().startswith(_CLIENT_PREFIX) and n not in _CLIENT_WARNED]
    if not names:
        return []
    known = model_variables(ClientSettings)
    unknown = sorted(n for n in set(names) if n.upper() not in known)  # (pydantic: any case)
    for name in unknown:
        _CLIENT_WARNED.add(name)
        suggestion = closest(name, [k for k in known if k.startswith(_CLIENT_PREFIX)])
        log.warning("%s", unknown_text(name, suggestion))
    return unknown
