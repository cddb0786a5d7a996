-- Dashboard views, fed by materialized views on every insert into governance.decisions.
--
-- Every aggregate here is idempotent (uniqExact of decision_id, min, max, argMax): a decision
-- inserted twice - Kafka redelivery, a sink restarted mid-batch - counts once, so each view
-- agrees with `governance.decisions FINAL` without waiting for merges. Never add a count()
-- or sum() state here: it would count duplicates that FINAL removes.

-- Stops by reason per minute (minute of event_time: a replayed copy lands in the same one).
CREATE TABLE IF NOT EXISTS governance.stops_per_minute_state
(
    minute DateTime('UTC'),
    tenant LowCardinality(String),
    reason LowCardinality(String),
    stops  AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, tenant, reason)
TTL minute + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS governance.stops_per_minute_mv
TO governance.stops_per_minute_state AS
SELECT
    toStartOfMinute(event_time) AS minute,
    tenant,
    reason,
    uniqExactState(decision_id) AS stops
FROM governance.decisions
WHERE outcome = 'stop'
GROUP BY minute, tenant, reason;

CREATE VIEW IF NOT EXISTS governance.stops_by_reason_per_minute AS
SELECT minute, tenant, reason, uniqExactMerge(stops) AS stops
FROM governance.stops_per_minute_state
GROUP BY minute, tenant, reason;

-- Per-run summary: handoffs, deepest delegation, spend, and how the run ended. handoff_count,
-- depth, spent_usd and tool_calls are running totals on every decision, so max() of them is
-- the run's total; "final" is the decision the worker made last (decided_at, then the order
-- it was published in).
CREATE TABLE IF NOT EXISTS governance.run_summary_state
(
    tenant            LowCardinality(String),
    run_id            String,
    first_at          SimpleAggregateFunction(min, DateTime64(6, 'UTC')),
    last_at           SimpleAggregateFunction(max, DateTime64(6, 'UTC')),
    decisions         AggregateFunction(uniqExact, String),
    stops             AggregateFunction(uniqExactIf, String, UInt8),
    handoffs          SimpleAggregateFunction(max, UInt32),
    max_depth         SimpleAggregateFunction(max, UInt16),
    spent_usd         SimpleAggregateFunction(max, Decimal(18, 6)),
    tool_calls        SimpleAggregateFunction(max, UInt32),
    final_outcome     AggregateFunction(argMax, String, Tuple(DateTime64(6, 'UTC'), UInt64)),
    final_reason      AggregateFunction(argMax, String, Tuple(DateTime64(6, 'UTC'), UInt64)),
    first_stop_reason AggregateFunction(argMinIf, String, Tuple(DateTime64(6, 'UTC'), UInt64), UInt8)
)
ENGINE = AggregatingMergeTree
ORDER BY (tenant, run_id)
TTL toDateTime(last_at) + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS governance.run_summary_mv
TO governance.run_summary_state AS
SELECT
    tenant,
    run_id,
    min(decided_at) AS first_at,
    max(decided_at) AS last_at,
    uniqExactState(decision_id) AS decisions,
    uniqExactIfState(decision_id, outcome = 'stop') AS stops,
    max(handoff_count) AS handoffs,
    max(depth) AS max_depth,
    max(spent_usd) AS spent_usd,
    max(tool_calls) AS tool_calls,
    argMaxState(toString(outcome), (decided_at, audit_offset)) AS final_outcome,
    argMaxState(toString(reason), (decided_at, audit_offset)) AS final_reason,
    argMinIfState(toString(reason), (decided_at, audit_offset), outcome = 'stop') AS first_stop_reason
FROM governance.decisions
GROUP BY tenant, run_id;

CREATE VIEW IF NOT EXISTS governance.run_summary AS
SELECT
    tenant,
    run_id,
    min(first_at) AS first_at,
    max(last_at) AS last_at,
    uniqExactMerge(decisions) AS decisions,
    uniqExactIfMerge(stops) AS stops,
    max(handoffs) AS handoffs,
    max(max_depth) AS max_depth,
    max(spent_usd) AS spent_usd,
    max(tool_calls) AS tool_calls,
    argMaxMerge(final_outcome) AS final_outcome,
    argMaxMerge(final_reason) AS final_reason,
    nullIf(argMinIfMerge(first_stop_reason), '') AS first_stop_reason
FROM governance.run_summary_state
GROUP BY tenant, run_id;

-- Approval latency: from the approval_required decision to the first approval-phase decision
-- (granted -> allow, denied, expired) of the same approval_id, on Baton's own clock.
CREATE TABLE IF NOT EXISTS governance.approval_latency_state
(
    tenant       LowCardinality(String),
    approval_id  String,
    run_id       SimpleAggregateFunction(any, String),
    requested_at AggregateFunction(minIf, DateTime64(6, 'UTC'), UInt8),
    resolved_at  AggregateFunction(minIf, DateTime64(6, 'UTC'), UInt8),
    resolution   AggregateFunction(argMinIf, String, DateTime64(6, 'UTC'), UInt8),
    resolution_reason AggregateFunction(argMinIf, String, DateTime64(6, 'UTC'), UInt8),
    last_at      SimpleAggregateFunction(max, DateTime64(6, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (tenant, approval_id)
TTL toDateTime(last_at) + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS governance.approval_latency_mv
TO governance.approval_latency_state AS
SELECT
    tenant,
    assumeNotNull(approval_id) AS approval_id,
    any(run_id) AS run_id,
    minIfState(decided_at, outcome = 'approval_required') AS requested_at,
    minIfState(decided_at, phase = 'approval') AS resolved_at,
    argMinIfState(toString(outcome), decided_at, phase = 'approval') AS resolution,
    argMinIfState(toString(reason), decided_at, phase = 'approval') AS resolution_reason,
    max(decided_at) AS last_at
FROM governance.decisions
-- not "approval_id IS NOT NULL": the alias above would turn that into assumeNotNull(...),
-- never NULL; assumeNotNull(NULL) is '' and approval ids are never empty
WHERE approval_id != ''
GROUP BY tenant, approval_id;

CREATE VIEW IF NOT EXISTS governance.approval_latency AS
SELECT
    tenant,
    approval_id,
    run_id,
    -- minIf over no matching row is the epoch: no such decision (yet)
    nullIf(requested, toDateTime64(0, 6, 'UTC')) AS requested_at,
    nullIf(resolved, toDateTime64(0, 6, 'UTC')) AS resolved_at,
    nullIf(resolution, '') AS resolution,
    nullIf(resolution_reason, '') AS resolution_reason,
    dateDiff('microsecond', requested_at, resolved_at) / 1e6 AS latency_s
FROM
(
    SELECT
        tenant,
        approval_id,
        any(run_id) AS run_id,
        minIfMerge(requested_at) AS requested,
        minIfMerge(resolved_at) AS resolved,
        argMinIfMerge(resolution) AS resolution,
        argMinIfMerge(resolution_reason) AS resolution_reason
    FROM governance.approval_latency_state
    GROUP BY tenant, approval_id
);
