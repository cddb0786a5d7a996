-- An approval belongs to the run that asked for it (session 30, H3).
--
-- 0007's approval_resolution_state kept any(run_id) over every decision carrying the approval
-- id, refused answers included: a grant for approval X sent keyed by another run of the
-- tenant (refused, outcome 'recorded', approval_id X, run_id B) could make X read as run B's
-- in approval_latency, and the approvals_waiting alert send on-call after the wrong run.
--
-- The states gain the asking run: the run id of the approval_required decisions (an approval
-- id is made from its run, so they all name one), fed by a second view into the same table
-- and filled from the stored decisions. max() of one value is that value however often a row
-- is counted, and the other states' defaults are empty states that merge as nothing, so the
-- view and the fill overlapping, or this migration re-run after a crash, change nothing.
-- approval_latency keeps its columns; an approval no stored decision asked for (a refused
-- answer naming an unknown id) keeps the run of its rows, as before.
ALTER TABLE governance.approval_resolution_state
    ADD COLUMN IF NOT EXISTS asked_in_run SimpleAggregateFunction(max, String);

CREATE MATERIALIZED VIEW IF NOT EXISTS governance.approval_asked_in_run_mv
TO governance.approval_resolution_state AS
SELECT
    tenant,
    assumeNotNull(approval_id) AS approval_id,
    max(run_id) AS asked_in_run,
    max(decided_at) AS last_at
FROM governance.decisions
WHERE approval_id != '' AND outcome = 'approval_required'
GROUP BY tenant, approval_id;

-- the decisions stored before this migration
INSERT INTO governance.approval_resolution_state (tenant, approval_id, asked_in_run, last_at)
SELECT
    tenant,
    assumeNotNull(approval_id) AS approval_id,
    max(run_id) AS asked_in_run,
    max(decided_at) AS last_at
FROM governance.decisions
WHERE approval_id != '' AND outcome = 'approval_required'
GROUP BY tenant, approval_id;

CREATE OR REPLACE VIEW governance.approval_latency AS
SELECT
    tenant,
    approval_id,
    if(asked_in_run != '', asked_in_run, any_run) AS run_id,
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
        max(asked_in_run) AS asked_in_run,
        -- the second view's rows hold no run_id ('')
        anyIf(run_id, run_id != '') AS any_run,
        minIfMerge(requested_at) AS requested,
        minIfMerge(resolved_at) AS resolved,
        argMinIfMerge(resolution) AS resolution,
        argMinIfMerge(resolution_reason) AS resolution_reason
    FROM governance.approval_resolution_state
    GROUP BY tenant, approval_id
);
