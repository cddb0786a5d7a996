-- Analyst queries over the Baton audit trail (ClickHouse database `governance`).
--
-- Run them all with `baton sql - < docs/queries.sql` (each result under its name), one with
-- `baton sql "..."` (its `-- name:` line may come along), or paste into clickhouse-client.
-- Each query starts with a `-- name:` line; tests/integration/test_audit_schema.py and
-- tests/integration/test_docs.py run every one of them.
--
-- Always read governance.decisions with FINAL (or count uniqExact(decision_id)): Kafka
-- delivery is at-least-once, and a decision can sit in the table twice until a merge folds
-- the copies. The views (run_summary, stops_by_reason_per_minute, approval_latency) are
-- already exact.

-- name: top_stop_reasons_per_tenant
-- The five most frequent stop reasons of each tenant over the last 7 days.
SELECT tenant, reason, count() AS stops, uniqExact(run_id) AS runs
FROM governance.decisions FINAL
WHERE outcome = 'stop' AND decided_at >= now64(6) - INTERVAL 7 DAY
GROUP BY tenant, reason
ORDER BY tenant, stops DESC
LIMIT 5 BY tenant;

-- name: runs_that_hit_shared_budget
-- Runs stopped because the shared budget (USD, tool calls or wall-clock) ran out, newest first.
SELECT
    tenant,
    run_id,
    min(decided_at) AS first_hit_at,
    max(spent_usd) AS spent_usd,
    max(tool_calls) AS tool_calls,
    arraySort(groupUniqArray(phase)) AS phases,
    -- the first hit's detail (why the budget ran out), not a later "run already stopped"
    argMin(detail, (decided_at, audit_offset)) AS detail
FROM governance.decisions FINAL
WHERE outcome = 'stop' AND reason = 'shared_budget_exceeded'
GROUP BY tenant, run_id
ORDER BY first_hit_at DESC
LIMIT 100;

-- name: agents_in_ownership_conflicts
-- Agents most often on either side of an ownership conflict: the one a task was handed to
-- while another owned it (requested), and the owner holding it (owner).
SELECT
    agent,
    count() AS conflicts,
    countIf(side = 'requested') AS as_requested,
    countIf(side = 'owner') AS as_owner,
    uniqExact(run_id) AS runs
FROM
(
    SELECT run_id, pair.1 AS agent, pair.2 AS side
    FROM governance.decisions FINAL
    ARRAY JOIN [(ifNull(to_agent, '?'), 'requested'), (ifNull(owner, '?'), 'owner')] AS pair
    WHERE reason = 'ownership_conflict'
)
GROUP BY agent
ORDER BY conflicts DESC
LIMIT 20;

-- name: spend_per_tenant_per_day
-- USD spent per tenant and day. spent_usd is the run's running total after each decision, so
-- the day's spend is the sum of its increments (a run crossing midnight is split correctly).
-- A run id used again once its tombstone is forgotten is decided on a fresh state: its chain
-- starts again (chain_prev '') and its running total from 0, so increments are taken per life
-- (without, a $10 life and a later $3 one summed to $3, the later day -$7). A refusal the
-- worker decides without the run's state (too many runs, an unknown tenant: unchained, $0)
-- holds no running total: such rows are a partition of their own (they took a life's $10
-- back, and the day read $0).
SELECT tenant, toDate(decided_at) AS day, sum(increment) AS spent_usd, uniqExact(run_id) AS runs
FROM
(
    SELECT
        tenant,
        run_id,
        decided_at,
        spent_usd - lagInFrame(spent_usd, 1, toDecimal64(0, 6)) OVER (
            PARTITION BY tenant, run_id, life, stateless
            ORDER BY decided_at, audit_partition, audit_offset
            ROWS BETWEEN 1 PRECEDING AND CURRENT ROW
        ) AS increment
    FROM
    (
        SELECT
            tenant,
            run_id,
            decided_at,
            audit_partition,
            audit_offset,
            spent_usd,
            chain_prev IS NULL AND spent_usd = 0 AS stateless,
            sum(toUInt8(ifNull(chain_prev, '-') = '')) OVER (
                PARTITION BY tenant, run_id ORDER BY decided_at, audit_partition, audit_offset
                ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
            ) AS life
        FROM governance.decisions FINAL
        WHERE tenant NOT IN ('*', '__baton__')  -- operators' control records, readiness probes
    )
)
GROUP BY tenant, day
ORDER BY day DESC, spent_usd DESC;

-- name: approval_turnaround
-- How long approvals take per tenant (seconds from approval_required to the approval
-- decision), and how they ended; unresolved ones are counted apart.
SELECT
    tenant,
    countIf(resolved_at IS NOT NULL) AS resolved,
    countIf(resolved_at IS NULL) AS pending_or_lost,
    round(avgIf(latency_s, latency_s IS NOT NULL), 1) AS avg_s,
    round(quantileIf(0.5)(latency_s, latency_s IS NOT NULL), 1) AS p50_s,
    round(quantileIf(0.9)(latency_s, latency_s IS NOT NULL), 1) AS p90_s,
    countIf(resolution_reason = 'approval_granted') AS granted,
    countIf(resolution_reason = 'approval_denied') AS denied,
    countIf(resolution_reason = 'approval_expired') AS expired
FROM governance.approval_latency
WHERE requested_at IS NOT NULL
GROUP BY tenant
ORDER BY tenant;

-- name: deepest_delegation
-- Runs with the deepest delegation chains (depth 1 = delegated by the orchestrator).
SELECT tenant, run_id, max_depth, handoffs, spent_usd, final_outcome, first_stop_reason, last_at
FROM governance.run_summary
WHERE tenant NOT IN ('*', '__baton__')  -- operators' control records, readiness probes
ORDER BY max_depth DESC, handoffs DESC, last_at DESC
LIMIT 20;

-- name: stops_per_minute_last_hour
-- What a dashboard polls every minute: stops by reason per minute over the last hour.
SELECT minute, reason, sum(stops) AS stops
FROM governance.stops_by_reason_per_minute
WHERE minute >= now() - INTERVAL 1 HOUR
GROUP BY minute, reason
ORDER BY minute, stops DESC;
