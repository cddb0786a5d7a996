-- The workers' records of the policy they decide under, kept in the control log beside the
-- commands, with the worker's seal on them (session 42).
--
-- Why: a `baton up` restart names the policy in force before it from these records, and
-- refuses a start that would drop its operators. Anyone who can write gov.decisions could add
-- one: a forged record whose document did not hash to its version (its operators unknown)
-- refused every restart after it (exit 2) until --allow-unsigned, and one naming another
-- policy was said to be the policy in force. Since this version every worker seals its
-- record (processors/recorded.py, in request_digest as a command's), and a restart reads the
-- policy in force from the sealed records alone when there are any (cli/restore_sealed.py).
-- In decisions a record is one row per version (ReplacingMergeTree): a forged row under its
-- id replaced the sealed one; the log keeps every row.
--
-- Records stored before this migration are not copied: no worker sealed them.
CREATE MATERIALIZED VIEW IF NOT EXISTS governance.policy_log_mv
TO governance.control_log AS
SELECT decision_id, request_id, run_id, tenant, phase, outcome, reason, approver, event_time,
    detail, input, request_digest AS seal, decided_at, audit_partition, audit_offset
FROM governance.decisions
WHERE phase = 'control' AND reason = 'policy_in_force'
  AND startsWith(request_id, 'policy_in_force:');
