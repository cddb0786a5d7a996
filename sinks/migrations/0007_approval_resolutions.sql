-- An approval is resolved by its grant, its denial or its expiry, never by an answer the worker
-- refused (session 29, H2).
--
-- 0002's approval_latency took the first approval-phase decision of an approval id as its
-- resolution, and a refused answer is one too: outcome 'recorded' (the requester approving
-- its own handoff, an unsigned or forged grant, a grant for another request). So one refused
-- `baton approve` by the requester made a pending approval "resolved" (reason self_approval):
-- the approvals_waiting alert stopped firing while `baton approvals` still listed it, and
-- docs/queries.sql's approval_turnaround counted it resolved and its real grant not at all.
--
-- An AggregatingMergeTree cannot take back what its states hold, so the states are made again
-- in a new table, fed by a new view that leaves 'recorded' out, and filled from the stored
-- decisions. Every aggregate here (min, argMin, any, max) gives the same state however often
-- a row is counted, so rows the new view and the fill both count change nothing, and a crash
-- in the middle of this migration re-runs it whole. approval_latency keeps its columns.
CREATE TABLE IF NOT EXISTS governance.approval_resolution_state
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

CREATE MATERIALIZED VIEW IF NOT EXISTS governance.approval_resolution_mv
TO governance.approval_resolution_state AS
SELECT
    tenant,
    assumeNotNull(approval_id) AS approval_id,
    any(run_id) AS run_id,
    minIfState(decided_at, outcome = 'approval_required') AS requested_at,
    minIfState(decided_at, phase = 'approval' AND outcome != 'recorded') AS resolved_at,
    argMinIfState(toString(outcome), decided_at, phase = 'approval' AND outcome != 'recorded')
        AS resolution,
    argMinIfState(toString(reason), decided_at, phase = 'approval' AND outcome != 'recorded')
        AS resolution_reason,
    max(decided_at) AS last_at
FROM governance.decisions
WHERE approval_id != ''
GROUP BY tenant, approval_id;

-- the decisions stored before this migration
INSERT INTO governance.approval_resolution_state
SELECT
    tenant,
    assumeNotNull(approval_id) AS approval_id,
    any(run_id) AS run_id,
    minIfState(decided_at, outcome = 'approval_required') AS requested_at,
    minIfState(decided_at, phase = 'approval' AND outcome != 'recorded') AS resolved_at,
    argMinIfState(toString(outcome), decided_at, phase = 'approval' AND outcome != 'recorded')
        AS resolution,
    argMinIfState(toString(reason), decided_at, phase = 'approval' AND outcome != 'recorded')
        AS resolution_reason,
    max(decided_at) AS last_at
FROM governance.decisions
WHERE approval_id != ''
GROUP BY tenant, approval_id;

CREATE OR REPLACE VIEW governance.approval_latency AS
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
    FROM governance.approval_resolution_state
    GROUP BY tenant, approval_id
);

DROP VIEW IF EXISTS governance.approval_latency_mv;
DROP TABLE IF EXISTS governance.approval_latency_state;
