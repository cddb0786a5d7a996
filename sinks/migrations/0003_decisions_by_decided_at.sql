-- The audit partitioned and expired on the worker's clock (decided_at), not the client's
-- event_time (issue 11).
--
-- Until now governance.decisions was PARTITION BY toYYYYMM(event_time) with a TTL on it, and
-- event_time is whatever the orchestrator put in its event: a record dated 1971 was deleted by
-- the TTL at insert, silently; one dated 9999 outlived every retention; a batch spanning more
-- than 100 months of event_time was refused as a whole ("too many partitions") and retried
-- forever. decided_at is set by the worker when it decides, and a redelivered or re-emitted
-- decision carries the cached one, so every copy of a decision lands in the same partition
-- and ReplacingMergeTree still folds them. event_time stays a column (what the client said).
--
-- decided_at can be forged too, by anyone who writes gov.decisions directly. The sink accepts
-- decided_at only in [its clock - audit_ttl_days, its clock + 1 day] and sends any other
-- record to governance.rejected (error_kind decided_at_out_of_window, the raw record kept):
-- older rows would be deleted by this TTL at once, newer ones would outlive the retention and
-- open a partition per month (a month-of-partitions budget: ttl_days / 30 + 2 per batch).
-- Rejected, not clamped: clamping to the sink's clock would give two copies of one decision
-- two decided_at values (and maybe two partitions, which never fold), and would put a time
-- in the audit that nobody decided at. One day ahead tolerates a worker's clock that runs
-- fast; a worker whose clock is off by more has its decisions rejected, visibly.
--
-- Moving the rows: ClickHouse cannot change a table's partition key, so this migration
-- creates the new table as governance.decisions_0003, and the Python step of this
-- migration (baton.sinks.schema.move_decisions_to_decided_at) copies the rows, exchanges the
-- two tables atomically, moves rows that arrived during the copy, checks that every row in
-- retention is in the new table and drops the old one (or keeps it as
-- governance.decisions_before_0003 and says so). The materialized views follow the name
-- governance.decisions, so they keep being fed.
CREATE TABLE IF NOT EXISTS governance.decisions_0003
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
    audit_topic         LowCardinality(String),
    audit_partition     UInt32,
    audit_offset        UInt64,
    inserted_at         DateTime64(6, 'UTC') DEFAULT now64(6),
    INDEX run_id_bloom run_id TYPE bloom_filter(0.01) GRANULARITY 4,
    -- event_time no longer prunes partitions: this index lets "WHERE event_time ..." skip
    -- granules
    INDEX event_time_minmax event_time TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(decided_at)
ORDER BY (tenant, run_id, decision_id)
TTL toDateTime(decided_at) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Why a record was rejected, as a word to GROUP BY (baton.sinks.rows.RejectKind):
-- invalid_record, out_of_range, decided_at_out_of_window, refused_by_clickhouse,
-- unconvertible. Rows rejected before this column existed have ''.
ALTER TABLE governance.rejected ADD COLUMN IF NOT EXISTS error_kind LowCardinality(String) DEFAULT '';

-- Stops per minute on the worker's clock too: the state table was partitioned and expired by
-- the minute of event_time, so a client's times could explode its partitions (refusing the
-- insert into governance.decisions that feeds it) or expire its counts. It is rebuilt from the
-- base table; uniqExact states make the backfill idempotent (a re-run, or a decision the new
-- view also saw, counts once).
DROP VIEW IF EXISTS governance.stops_per_minute_mv;

DROP TABLE IF EXISTS governance.stops_per_minute_state;

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
    toStartOfMinute(decided_at) AS minute,
    tenant,
    reason,
    uniqExactState(decision_id) AS stops
FROM governance.decisions
WHERE outcome = 'stop'
GROUP BY minute, tenant, reason;

INSERT INTO governance.stops_per_minute_state
SELECT
    toStartOfMinute(decided_at) AS minute,
    tenant,
    reason,
    uniqExactState(decision_id) AS stops
FROM governance.decisions
WHERE outcome = 'stop'
GROUP BY minute, tenant, reason
SETTINGS max_partitions_per_insert_block = 0;
