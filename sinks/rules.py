"""SQL alert rules over the audit for ``baton alerts check``: built-ins, YAML tuning, evaluation.

A rule is a query that returns one row per violation: it *fires* when it returns any row.
Thresholds are query parameters (``{name:Type}``), so a YAML file can tune a built-in rule
without copying its SQL::

    include_defaults: true          # the built-in rules below (default true)
    rules:
      - name: tenant_stop_rate      # a built-in: only change its parameters
        params: {max_stop_rate: 0.5}
      - name: refunds_stopped       # a new rule
        description: refund handoffs stopped in the last 10 minutes
        sql: |
          SELECT run_id, reason FROM governance.decisions FINAL
          WHERE outcome = 'stop' AND action LIKE 'billing.refund.%'
            AND decided_at >= now64(6) - INTERVAL 10 MINUTE
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from baton.schemas.errors import ConfigError
from baton.schemas.files import FileProblem, read_small_text
from baton.schemas.policy_load import MAX_POLICY_DEPTH, expanded_size

__all__ = ["DEFAULT_RULES", "AlertRule", "RuleResult", "evaluate_rules", "load_rules"]


@dataclass(frozen=True)
class AlertRule:
    name: str
    description: str
    sql: str
    params: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        try:
            return self.description.format(**self.params)
        except (KeyError, IndexError, ValueError):
            return self.description


DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule(
        "tenant_stop_rate",
        "a tenant's stop rate over the last {window_minutes} minutes is above "
        "{max_stop_rate} (with at least {min_decisions} handoff decisions)",
        """
        SELECT tenant,
               countIf(outcome = 'stop') AS stops,
               count() AS decisions,
               round(stops / decisions, 3) AS stop_rate
        FROM governance.decisions FINAL
        WHERE decided_at >= now64(6) - toIntervalMinute({window_minutes:UInt32})
          AND phase IN ('pre_handoff', 'approval')
          -- a refused answer to an approval (the requester's own grant, an unsigned one) is
          -- no handoff decided: twenty of them took a firing tenant's rate from 0.45 to 0.16
          AND outcome != 'recorded'
        GROUP BY tenant
        HAVING decisions >= {min_decisions:UInt32} AND stop_rate > {max_stop_rate:Float64}
        ORDER BY stop_rate DESC
        """,
        {"window_minutes": 5, "min_decisions": 20, "max_stop_rate": 0.2},
    ),
    AlertRule(
        "shared_budget_exhausted",
        "at least {min_runs} runs of a tenant hit their shared budget in the last "
        "{window_minutes} minutes",
        """
        SELECT tenant, uniqExact(run_id) AS runs, max(spent_usd) AS max_spent_usd
        FROM governance.decisions FINAL
        WHERE decided_at >= now64(6) - toIntervalMinute({window_minutes:UInt32})
          AND outcome = 'stop' AND reason = 'shared_budget_exceeded'
        GROUP BY tenant
        HAVING runs >= {min_runs:UInt32}
        ORDER BY runs DESC
        """,
        {"window_minutes": 5, "min_runs": 5},
    ),
    AlertRule(
        "approvals_waiting",
        "approvals requested more than {max_wait_minutes} minutes ago and still unresolved",
        """
        SELECT tenant, approval_id, run_id, requested_at
        FROM governance.approval_latency
        WHERE resolved_at IS NULL
          AND requested_at < now64(6) - toIntervalMinute({max_wait_minutes:UInt32})
          -- an approval may wait up to the longest TTL a policy can set (366 days, its expiry
          -- then resolves it): one day here silently dropped a day-old approval from the alert
          AND requested_at >= now64(6) - INTERVAL 367 DAY
        ORDER BY requested_at
        LIMIT 50
        """,
        {"max_wait_minutes": 15},
    ),
    AlertRule(
        "audit_rejects",
        "the audit sink rejected records in the last {window_minutes} minutes (not Decisions)",
        """
        SELECT audit_topic, count() AS rejected, any(error) AS example_error
        FROM governance.rejected FINAL
        WHERE inserted_at >= now64(6) - toIntervalMinute({window_minutes:UInt32})
        GROUP BY audit_topic
        """,
        {"window_minutes": 60},
    ),
)


@dataclass
class RuleResult:
    rule: AlertRule
    columns: tuple[str, ...] = ()
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    error: str | None = None

    @property
    def fired(self) -> bool:
        return bool(self.rows)


def load_rules(path: Path | None) -> list[AlertRule]:
    """The rules in force: the built-ins, tuned and extended by the YAML file ``path``."""
    if path is None:
        return list(DEFAULT_RULES)
    where = str(path)
    doc = _bounded_yaml(_rules_text(path), where) or {}
    if not isinstance(doc, dict) or not isinstance(doc.get("rules", []), list):
        raise ConfigError(f"{where}: expected a mapping with a 'rules' list, got {doc!r:.80}")
    unknown = set(doc) - {"rules", "include_defaults"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {sorted(unknown)}; expected rules, include_defaults"
        )
    include = doc.get("include_defaults", True)
    if not isinstance(include, bool):  # "false" in quotes is a string, and was true
        raise ConfigError(f"{where}: include_defaults: expected true or false, got {include!r:.80}")
    rules = {r.name: r for r in DEFAULT_RULES} if include else {}
    builtins = {r.name: r for r in DEFAULT_RULES}
    named: dict[str, int] = {}
    for i, entry in enumerate(doc.get("rules") or []):
        at = f"{where}: rules[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{at}: expected a mapping with a name, got {entry!r:.80}")
        name = entry["name"]
        if name in named:  # the later one replaced the first in silence
            raise ConfigError(
                f"{at} ({name}): a second rule of this name (the first is rules[{named[name]}]); "
                "give each rule a name of its own"
            )
        named[name] = i
        if name in builtins and "sql" in entry:  # checked as Baton's: the built-in no longer ran
            raise ConfigError(
                f"{at} ({name}): a built-in rule's name with sql of its own; a built-in takes "
                "params only: tune it, or give your rule another name"
            )
        extra = set(entry) - {"name", "description", "sql", "params"}
        if extra:
            raise ConfigError(
                f"{at} ({name}): unknown keys {sorted(extra)}; "
                "expected name, description, sql, params"
            )
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"{at} ({name}).params: expected a mapping, got {params!r:.80}")
        base = rules.get(name) or builtins.get(name)
        if "sql" not in entry:
            if base is None:
                raise ConfigError(
                    f"{at} ({name}): not a built-in rule ({', '.join(builtins)}), so it needs sql"
                )
            unknown_params = sorted(set(params) - set(base.params))
            if unknown_params:  # a typo'd threshold left the built-in's default in force
                raise ConfigError(
                    f"{at} ({name}).params: unknown {_named(unknown_params, list(base.params))}; "
                    f"{name} takes {', '.join(base.params)}"
                )
            rules[name] = replace(
                base,
                params={**base.params, **params},
                description=entry.get("description", base.description),
            )
        else:
            if not isinstance(entry["sql"], str) or not entry["sql"].strip():
                raise ConfigError(f"{at} ({name}).sql: expected a SELECT, got {entry['sql']!r:.80}")
            rules[name] = AlertRule(name, str(entry.get("description", name)), entry["sql"], params)
    return list(rules.values())


def _named(unknown: list[str], known: list[str]) -> str:
    """``'x' (did you mean 'y'?)`` for each unknown key, the closest known one suggested."""
    import difflib

    shown = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), known, n=1)
        shown.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ("key " if len(shown) == 1 else "keys ") + ", ".join(shown)


#: a rules file is a few KB; read whole, it is bounded (a FIFO, /dev/zero or a 1 GB file is
#: refused on the open file) and so is what its YAML aliases expand to: an 800-byte file of
#: nested aliases (10**8 values) took 30 s and 2 GB before MemoryError
MAX_RULES_BYTES = 1024 * 1024
MAX_RULES_VALUES = 100_000


def _rules_text(path: Path) -> str:
    """The text of the rules file ``path``; a ConfigError naming it when it cannot be one."""
    try:
        return read_small_text(path, MAX_RULES_BYTES)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: cannot read alert rules: {exc.strerror or exc}") from None
    except FileProblem as exc:
        raise ConfigError(f"{path}: {exc}; alert rules are a UTF-8 YAML file") from None


def _bounded_yaml(text: str, where: str) -> Any:
    """``text`` parsed as YAML, refused (ConfigError) past MAX_RULES_VALUES values with its
    aliases expanded or MAX_POLICY_DEPTH levels deep, or when the parser cannot read it."""
    from baton.schemas.policy_load import strict_yaml

    try:
        # a key written twice (`rules:` twice, `max_stop_rate` twice) kept the last in silence
        doc = strict_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    except ValueError as exc:  # an integer past Python's 4,300 digits of int(str)
        raise ConfigError(f"{where}: a value YAML cannot read: {str(exc)[:120]}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested deeper than {MAX_POLICY_DEPTH} levels") from None
    too_many, deepest = expanded_size(doc, MAX_RULES_VALUES)
    if too_many:
        raise ConfigError(
            f"{where}: more than {MAX_RULES_VALUES} values once its YAML aliases (*name) are "
            "expanded; expected alert rules written out"
        )
    if deepest > MAX_POLICY_DEPTH:
        raise ConfigError(f"{where}: nested deeper than {MAX_POLICY_DEPTH} levels")
    return doc


def evaluate_rules(client: Client, rules: list[AlertRule]) -> list[RuleResult]:
    """Run every rule; a rule whose query fails has ``error`` set (the others still run)."""
    results = []
    for rule in rules:
        try:
            answer = client.query(rule.sql, parameters=rule.params)
        except ClickHouseError as exc:
            text = str(exc).strip().splitlines()
            results.append(RuleResult(rule, error=text[0][:400] if text else type(exc).__name__))
            continue
        results.append(
            RuleResult(rule, tuple(answer.column_names), [tuple(r) for r in answer.result_rows])
        )
    return results
