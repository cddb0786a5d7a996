-- Every distinct thing said under one decision id, kept where no later row can replace it.
--
-- Why: governance.decisions is a ReplacingMergeTree on (tenant, run_id, decision_id), so of two
-- records under one id FINAL and merges keep one. Decision ids are derived from the request,
-- so a writer of gov.decisions who reads gov.handoff.requests can publish a forged allow under
-- the id the worker will use, before the worker does: a waiting SDK client may take it, and
-- the worker's row then replaced it. The one record that made the client proceed left no row.
--
-- decision_variants: one row per (id, outcome, reason, chain hash), filled by a materialized
-- view on every insert into decisions (every sink process, every block, either order).
-- Copies of one record (redelivery, the sink's retries) fold into one row; records that say
-- different things under one id all stay. Only the key columns and where the sink read each
-- record (its bytes stay in decisions' parts until a merge; gov.decisions' offset names it).
--
-- decision_conflicts: the ids with more than one variant, one row each, and why it matters.
-- `baton audit verify` fails on those whose records differ in outcome or reason (`differs`)
-- and `baton trace` warns; the same outcome and reason under other chain hashes is what a
-- worker that died before writing its state leaves when its successor decides again (counted).
CREATE TABLE IF NOT EXISTS governance.decision_variants
(
    tenant          LowCardinality(String),
    run_id          String,
    decision_id     String,
    outcome         LowCardinality(String),
    reason          LowCardinality(String),
    chain_hash      String,
    decided_at      DateTime64(6, 'UTC'),
    worker          LowCardinality(Nullable(String)),
    audit_topic     LowCardinality(String),
    audit_partition UInt32,
    audit_offset    UInt64,
    inserted_at     DateTime64(6, 'UTC') DEFAULT now64(6),
    -- `baton trace` and `baton audit verify --run` know the run id, not the tenant
    INDEX run_id_bloom run_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(decided_at)
ORDER BY (tenant, run_id, decision_id, outcome, reason, chain_hash)
TTL toDateTime(decided_at) + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS governance.decision_variants_mv
TO governance.decision_variants AS
SELECT
    tenant,
    run_id,
    decision_id,
    outcome,
    reason,
    ifNull(chain_hash, '') AS chain_hash,
    decided_at,
    worker,
    audit_topic,
    audit_partition,
    audit_offset
FROM governance.decisions;

-- the rows stored before this migration: what is left of them (FINAL has kept one per id)
INSERT INTO governance.decision_variants
    (tenant, run_id, decision_id, outcome, reason, chain_hash, decided_at, worker, audit_topic,
     audit_partition, audit_offset)
SELECT tenant, run_id, decision_id, outcome, reason, ifNull(chain_hash, ''), decided_at, worker,
    audit_topic, audit_partition, audit_offset
FROM governance.decisions
WHERE (tenant, run_id, decision_id) NOT IN (
    SELECT tenant, run_id, decision_id FROM governance.decision_variants);

CREATE VIEW IF NOT EXISTS governance.decision_conflicts AS
SELECT
    tenant,
    run_id,
    decision_id,
    count() AS variants,
    groupArray((outcome, reason, chain_hash, audit_partition, audit_offset, decided_at))
        AS said,
    uniqExact(outcome, reason) > 1 AS differs,
    if(differs,
       'records under one decision id say different outcomes or reasons: a client may have '
       || 'acted on one the stored row does not show (a forged record on gov.decisions, or a '
       || 'decision a crashed worker published and its successor decided otherwise)',
       'records under one decision id say the same outcome and reason with other chain '
       || 'hashes: a worker restarted under at-least-once decided it again (or a forged copy)')
        AS why
FROM governance.decision_variants FINAL
GROUP BY tenant, run_id, decision_id
HAVING count() > 1;
