-- Every control record of an operator's command kept where no later row can replace it, with
-- the worker's seal on it (session 40).
--
-- Why: a `baton up` restart re-issues the kill switches, releases and policy updates the audit
-- says were applied, and anyone who can write gov.decisions can write such a row, or replace a
-- real one under its id (decisions is a ReplacingMergeTree: FINAL and merges keep one row).
-- Five attack rounds found forged, copied, re-dated and replaced rows that a restart re-issued.
--
-- seal: with BATON_AUDIT_CHAIN_KEY, the worker's keyed digest of the record
-- (processors/control_seal.py), which it writes in the record's request_digest (a control
-- record had no use for it); NULL without the key and on records of older workers.
--
-- control_log: a plain MergeTree, one row per command record inserted into decisions (every
-- sink process, every copy, refusals too), never replaced nor merged away, with when the sink
-- stored it (inserted_at: its clock, which no writer of the topic sets). The restart reads the
-- sealed records from here: a forged row cannot replace a sealed one, and an unsealed one is
-- not re-issued once a sealed one was stored before it. The rows stored before this migration
-- are copied from what decisions' parts still hold.
CREATE TABLE IF NOT EXISTS governance.control_log
(
    decision_id     String,
    request_id      String,
    run_id          String,
    tenant          LowCardinality(String),
    phase           LowCardinality(String),
    outcome         LowCardinality(String),
    reason          LowCardinality(String),
    approver        Nullable(String),
    event_time      DateTime64(6, 'UTC'),
    detail          Nullable(String),
    input           Nullable(String) CODEC(ZSTD(3)),
    seal            Nullable(String),
    decided_at      DateTime64(6, 'UTC'),
    audit_partition UInt32,
    audit_offset    UInt64,
    inserted_at     DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = MergeTree
ORDER BY (inserted_at, decision_id)
TTL toDateTime(inserted_at) + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS governance.control_log_mv
TO governance.control_log AS
SELECT decision_id, request_id, run_id, tenant, phase, outcome, reason, approver, event_time,
    detail, input, request_digest AS seal, decided_at, audit_partition, audit_offset
FROM governance.decisions
WHERE phase = 'control'
  AND match(request_id, '^(kill_switch|kill_switch_released|policy_updated):');

INSERT INTO governance.control_log
    (decision_id, request_id, run_id, tenant, phase, outcome, reason, approver, event_time,
     detail, input, seal, decided_at, audit_partition, audit_offset, inserted_at)
SELECT decision_id, request_id, run_id, tenant, phase, outcome, reason, approver, event_time,
    detail, input, request_digest, decided_at, audit_partition, audit_offset, inserted_at
FROM governance.decisions
WHERE phase = 'control'
  AND match(request_id, '^(kill_switch|kill_switch_released|policy_updated):');
