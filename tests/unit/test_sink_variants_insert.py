"""The audit's inserts without ClickHouse's fold on insert, and the forged-record trail kept.

The sink inserts with ``optimize_on_insert=0`` (``audit_insert.INSERT_SETTINGS``): a
ReplacingMergeTree no longer folds a block's own copies of one key as it writes them (a fifth
of chDB's insert CPU, more than the decision_variants view costs). These tests hold what that
must not change: FINAL keeps the last record of an id (a block's order included), every
distinct thing said under an id stays in decision_variants whatever the order and the block
(row path and Native path), a retried block is stored once, and verify fails closed when the
variants cannot be read.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from baton.cli.verify_cmds import audit_group
from baton.schemas.decision import Decision, Outcome
from baton.schemas.errors import AuditUnavailable
from baton.sinks import audit_insert
from baton.sinks.audit_batch import DECISIONS_TABLE, AuditBatch, write_batch
from baton.sinks.audit_conflicts import load_conflicts
from baton.sinks.audit_insert import insert_native, insert_rows, insert_types, native_block
from baton.sinks.clickhouse import connect
from baton.sinks.rows import DECISION_COLUMNS
from tests.chdb_audit import chdb_audit
from tests.unit.test_attacks_session9_audit import _published
from tests.unit.test_engine_support import handoff

pytestmark = pytest.mark.unit


class _Recorder:
    """A client that keeps each insert's settings."""

    def __init__(self) -> None:
        self.settings: list[dict[str, Any]] = []

    def insert(self, *args: Any, settings: dict[str, Any], **kwargs: Any) -> None:
        self.settings.append(settings)

    def raw_insert(self, *args: Any, settings: dict[str, Any], **kwargs: Any) -> None:
        self.settings.append(settings)


def test_every_audit_insert_asks_for_no_fold_on_insert() -> None:
    """Both insert paths send the token and optimize_on_insert=0."""
    client = _Recorder()
    insert_rows(client, "governance.rejected", [["t", 0, 0, "e", "r"]], ("a",) * 5, "tok", "x")
    insert_native(client, DECISIONS_TABLE, DECISION_COLUMNS, b"", 1, "tok2", "x")
    assert client.settings == [
        {"insert_deduplication_token": "tok", "optimize_on_insert": 0},
        {"insert_deduplication_token": "tok2", "optimize_on_insert": 0},
    ]


def _records(seed: int) -> list[Decision]:
    """Worker decisions of a few runs, each followed (in a shuffled order) by copies of it
    and forged records under its id: another outcome, a 60 KB reason, no chain hash."""
    rng = random.Random(seed)
    out: list[Decision] = []
    for r in range(6):
        run = f"rv{seed}-{r}"
        (worker,) = _published([handoff("h1", "t1", "planner", "researcher", run_id=run)], run)
        group = [worker]
        for _ in range(rng.randrange(0, 3)):
            group.append(Decision.from_json(worker.to_json()))  # a redelivered copy
        for kind in rng.sample(["allow", "long", "unchained", "same"], rng.randrange(0, 3)):
            forged = Decision.from_json(worker.to_json())
            if kind == "allow":  # (the worker allowed: another reason)
                forged.outcome, forged.reason = Outcome.ALLOW, "forged"
            elif kind == "long":
                forged.outcome, forged.reason = Outcome.STOP, "x" * 60_000
            elif kind == "unchained":  # what the worker said, without its chain hash
                forged.chain_hash = None
            group.append(forged)  # "same": a forged copy saying exactly what the worker said
        rng.shuffle(group)
        out += group
    rng.shuffle(out)  # runs interleaved, each id's records in their shuffled order
    return out


def _said(d: Decision) -> tuple[str, str, str]:
    return (str(d.outcome), str(d.reason), d.chain_hash or "")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_copies_and_forgeries_in_one_block_or_two_keep_every_variant(
    tmp_path: Path, seed: int
) -> None:
    """Records of one id in one block and across two, through the row path and the Native
    path: every record is stored (no fold on insert), FINAL keeps the last one written, and
    decision_conflicts lists exactly the ids whose records said different things."""
    records = _records(seed)
    half = len(records) // 2
    client = chdb_audit(tmp_path / "chdb", records[:half])  # the row path, one block
    types = insert_types(client, DECISIONS_TABLE, DECISION_COLUMNS)
    batch = AuditBatch("gov.decisions", 365)
    for offset, d in enumerate(records[half:], start=half):
        batch.add(0, offset, d.to_json())
    block = native_block([list(r) for r in batch.rows], DECISION_COLUMNS, types)
    assert block is not None
    insert_native(client, DECISIONS_TABLE, DECISION_COLUMNS, block, len(batch.rows), "n1", "x")
    stored = client.command("SELECT count() FROM governance.decisions")
    final = dict(
        client.query(
            "SELECT decision_id, (outcome, reason, ifNull(chain_hash, '')) "
            "FROM governance.decisions FINAL"
        ).result_rows
    )
    conflicts = load_conflicts(client)
    client.close()
    assert int(stored) == len(records)  # optimize_on_insert=0 reached chDB on both paths
    last: dict[str, tuple[str, str, str]] = {}
    variants: dict[str, set[tuple[str, str, str]]] = {}
    for d in records:
        last[d.decision_id] = _said(d)
        variants.setdefault(d.decision_id, set()).add(_said(d))
    assert {k: tuple(v) for k, v in final.items()} == last
    assert conflicts is not None
    got = {c.decision_id: ({tuple(s[:3]) for s in c.said}, c.differs) for c in conflicts}
    want = {i: (v, len({s[:2] for s in v}) > 1) for i, v in variants.items() if len(v) > 1}
    assert got == want


def test_a_retried_block_is_stored_once(tmp_path: Path) -> None:
    """The sink writes a failed batch again under the same token: no second copy of its rows
    in decisions or in decision_variants (the token, not the fold, drops it)."""
    (stop,) = _published([handoff("h1", "t1", "planner", "researcher", run_id="rr")], "rr")
    forged = Decision.from_json(stop.to_json())
    forged.outcome, forged.reason = Outcome.STOP, "forged"
    client = chdb_audit(tmp_path / "chdb", [stop, forged])
    again = AuditBatch("gov.decisions", 365)
    for offset, d in enumerate([stop, forged]):
        again.add(0, offset, d.to_json())
    write_batch(client, again, "chdb")
    stored = int(client.command("SELECT count() FROM governance.decisions"))
    # (the view sees a deduplicated block again: its copies fold as any copies do)
    variants = int(client.command("SELECT count() FROM governance.decision_variants FINAL"))
    conflicts = load_conflicts(client)
    client.close()
    assert (stored, variants) == (2, 2)
    assert conflicts is not None and [len(c.said) for c in conflicts] == [2]


def test_verify_fails_closed_when_the_variants_cannot_be_read(tmp_path: Path) -> None:
    """The variants table gone, or another table in its place that the view cannot read:
    verify never passes the ids (not checked, or the audit unreadable)."""
    (stop,) = _published([handoff("h1", "t1", "planner", "researcher", run_id="rf")], "rf")
    client = chdb_audit(tmp_path / "chdb", [stop])
    client.command("DROP TABLE governance.decision_variants")
    client.close()
    dsn = ["--dsn", f"chdb://{tmp_path / 'chdb'}"]
    verify = CliRunner().invoke(audit_group, ["verify", *dsn])
    assert "ids not checked" in verify.output, verify.output
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    client.command("CREATE TABLE governance.decision_variants (x UInt8) ENGINE = Memory")
    client.close()
    verify = CliRunner().invoke(audit_group, ["verify", *dsn])
    assert isinstance(verify.exception, AuditUnavailable), verify.output  # exit 5, named
    assert "every chain holds" not in verify.output


def test_without_the_view_that_fills_the_variants_ids_are_not_checked(tmp_path: Path) -> None:
    """decision_variants_mv dropped (a half-restored audit, a hand edit): records inserted
    since leave no variant, so an empty decision_conflicts says nothing; verify says the ids
    were not checked instead of passing them."""
    (stop,) = _published([handoff("h1", "t1", "planner", "researcher", run_id="rm")], "rm")
    forged = Decision.from_json(stop.to_json())
    forged.outcome, forged.reason = Outcome.STOP, "forged"
    client = chdb_audit(tmp_path / "chdb", [stop])
    client.command("DROP VIEW governance.decision_variants_mv")
    write_batch(client, _batch(forged, 1), "chdb")
    assert load_conflicts(client) is None
    client.close()
    verify = CliRunner().invoke(audit_group, ["verify", "--dsn", f"chdb://{tmp_path / 'chdb'}"])
    assert "ids not checked" in verify.output, verify.output


def _batch(d: Decision, offset: int) -> AuditBatch:
    batch = AuditBatch("gov.decisions", 365)
    batch.add(0, offset, d.to_json())
    return batch


def test_the_setting_is_one_place() -> None:
    """The bench's 'optimize on insert' variant takes it away by patching this name."""
    assert audit_insert.INSERT_SETTINGS == {"optimize_on_insert": 0}
