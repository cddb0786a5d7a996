-- The audit table: one row per Decision (baton.schemas.decision), plus where the sink read it.
--
-- Engine: ReplacingMergeTree with ORDER BY ending in decision_id. decision_id determines
-- tenant and run_id, so every copy of one decision has the same sorting key and `FINAL` (or a
-- merge) keeps exactly one: the Kafka side is at-least-once and duplicates are expected.
-- Dedup only happens inside a partition; the partition is the month of event_time, which a
-- redelivered or replayed decision reproduces (the sink fills a missing event_time with
-- decided_at), so copies always meet.
--
-- ORDER BY (tenant, run_id, decision_id): per-tenant scans read one contiguous key range, and
-- one run's decisions sit together inside it. `baton trace` knows only the run_id: the bloom
-- filter index lets it skip granules without the tenant prefix.
--
-- Spend: Decimal(18, 6), not Float64. Audit sums over millions of rows must add up to the
-- cent the way an accountant adds them, and Float64 sums drift (0.1 + 0.2 != 0.3) and depend
-- on summation order (so two replicas can disagree). Six decimals = micro-dollars, enough
-- for per-token prices; 18 digits holds up to 10^12 USD. Decimal64 costs the same 8 bytes.
--
-- LowCardinality: outcome, reason, phase, tenant, agents and the other few-valued strings
-- (dictionary-encoded: smaller, faster GROUP BY). Ids stay plain String.
-- Times: DateTime64(6, 'UTC') - microseconds, and an explicit zone so no client or server
-- time zone ever shifts an audit timestamp.
CREATE TABLE IF NOT EXISTS governance.decisions
(
    decision_id         String,
    request_id          String,
    run_id              String,
    tenant              LowCardinality(String),
    phase               LowCardinality(String),
    outcome             LowCardinality(String),
    reason              LowCardinality(String),
    owner               LowCardinality(Nullable(String)),
    from_agent          LowCardinality(Nullable(String)),
    to_agent            LowCardinality(Nullable(String)),
    task_id             Nullable(String),
    parent_task_id      Nullable(String),
    action              LowCardinality(Nullable(String)),
    depth               UInt16,
    handoff_count       UInt32,
    spent_usd           Decimal(18, 6),
    tool_calls          UInt32,
    handoff_status      LowCardinality(Nullable(String)),
    fallback            LowCardinality(Nullable(String)),
    approval_id         Nullable(String),
    approval_expires_at Nullable(DateTime64(6, 'UTC')),
    approver            LowCardinality(Nullable(String)),
    policy_version      LowCardinality(String),
    event_time          DateTime64(6, 'UTC'),
    decided_at          DateTime64(6, 'UTC'),
    worker              LowCardinality(Nullable(String)),
    `partition`         Nullable(Int32),
    `offset`            Nullable(Int64),
    shadow_outcome      LowCardinality(Nullable(String)),
    tool                LowCardinality(Nullable(String)),
    reserved_usd        Decimal(18, 6),
    detail              Nullable(String),
    -- where the sink read this copy: gov.decisions is keyed by run_id, so (partition, offset)
    -- is the order the worker published a run's decisions in
    audit_topic         LowCardinality(String),
    audit_partition     UInt32,
    audit_offset        UInt64,
    inserted_at         DateTime64(6, 'UTC') DEFAULT now64(6),
    INDEX run_id_bloom run_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX event_time_minmax event_time TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant, run_id, decision_id)
TTL toDateTime(event_time) + INTERVAL {ttl_days} DAY
-- insert_deduplication_token is ignored by a non-replicated MergeTree unless it keeps a
-- window of recent block ids (the default window is 0): the sink retries a failed batch
-- with the same token and must not double it.
SETTINGS non_replicated_deduplication_window = 1000;

-- Records the sink could not parse: kept with their bytes and the error, never dropped.
CREATE TABLE IF NOT EXISTS governance.rejected
(
    audit_topic     LowCardinality(String),
    audit_partition UInt32,
    audit_offset    UInt64,
    error           String,
    raw             String,
    inserted_at     DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (audit_topic, audit_partition, audit_offset)
TTL toDateTime(inserted_at) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;
