-- When each kill was recorded, where no later row can move it (session 38, A2).
--
-- A `baton up` restart re-issues the kills and signed releases the audit holds, and holds a
-- switch whose kill it cannot re-issue (its row replaced in FINAL under its id, its command
-- altered) unless a re-issued release was signed after that kill. It dated the lost kill from
-- rows a writer of gov.decisions controls: the replacing row's decided_at, or decision_variants'
-- (a ReplacingMergeTree: a copy of the kill's variant with an earlier decided_at replaces it).
-- Kill t0, signed release t5, kill t10, then the t10 row replaced by one dated before t5: the
-- re-issued release read as lifting the lost kill, and a new run of the killed tenant was
-- allowed after the restart.
--
-- kill_times is a plain MergeTree: one row per kill record inserted into decisions (every sink
-- process, every copy), never replaced nor merged away, with when the sink stored it
-- (inserted_at: its clock, which no writer of the topic sets) and its request id (which ends in
-- the command's own time, the clock a release's is compared with). A forger can add rows, so
-- the latest time under an id can only move later: held longer, never shorter (fail closed).
-- The rows stored before this migration: every kill row still in decisions' parts, and what
-- decision_variants holds (its inserted_at is the later of the kill's and a replacing copy's);
-- a re-run after a crash adds copies, and max() of copies is the same.
CREATE TABLE IF NOT EXISTS governance.kill_times
(
    decision_id     String,
    tenant          LowCardinality(String),
    run_id          String,
    request_id      String,
    decided_at      DateTime64(6, 'UTC'),
    audit_partition UInt32,
    audit_offset    UInt64,
    inserted_at     DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = MergeTree
ORDER BY decision_id
TTL toDateTime(inserted_at) + INTERVAL {ttl_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS governance.kill_times_mv
TO governance.kill_times AS
SELECT decision_id, tenant, run_id, request_id, decided_at, audit_partition, audit_offset
FROM governance.decisions
WHERE reason = 'kill_switch';

INSERT INTO governance.kill_times
    (decision_id, tenant, run_id, request_id, decided_at, audit_partition, audit_offset,
     inserted_at)
SELECT decision_id, tenant, run_id, request_id, decided_at, audit_partition, audit_offset,
    inserted_at
FROM governance.decisions
WHERE reason = 'kill_switch';

INSERT INTO governance.kill_times
    (decision_id, tenant, run_id, request_id, decided_at, audit_partition, audit_offset,
     inserted_at)
SELECT decision_id, tenant, run_id, '', decided_at, audit_partition, audit_offset, inserted_at
FROM governance.decision_variants
WHERE reason = 'kill_switch';
