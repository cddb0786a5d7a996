-- Identity by signature and a tamper-evident audit (issue 12).
--
-- request_digest: the digest of the handoff request an approval is about, on approval_required
-- and approval decisions. It is what an approver's Ed25519 signature covers (with the approval
-- id, the run, the verdict, the approver and a time), so an approver can read it from the audit
-- (`baton approvals`) and sign without seeing Kafka.
--
-- chain_prev, chain_hash: the run's hash chain (baton.processors.chain). Every decision that
-- changes a run's state names the chain_hash of the run's decision before it ("" for the
-- first); `baton audit verify` walks the links and names every run whose rows were deleted,
-- altered or inserted out of band. NULL on decisions outside any chain (control records, a
-- refused reused request id, a run the worker would not take on) and on rows written before
-- this migration.
ALTER TABLE governance.decisions ADD COLUMN IF NOT EXISTS request_digest Nullable(String);
ALTER TABLE governance.decisions ADD COLUMN IF NOT EXISTS chain_prev Nullable(String);
ALTER TABLE governance.decisions ADD COLUMN IF NOT EXISTS chain_hash Nullable(String);
