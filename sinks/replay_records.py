"""One partition of gov.decisions folded as the audit's FINAL would hold it: replay's rows.

`baton replay --from-kafka` reads the workers' decision records from the topic the sink stores
(not the audit): each record becomes its row the way the sink makes it (``json_rows``'s
shortcut, else ``DECISION_ADAPTER`` and ``rows.decision_row``: a record the sink would reject
is a *dead line*, named, not used), and records under one (tenant, run id, decision id) fold
as the table's ReplacingMergeTree folds them: the last one read stays (a redelivery, a
worker that decided a request again after a crash: the same outcome and reason, another
chain hash). Re-emitted copies are not rows (the sink stores none), and the control
follower's records and ``policy_in_force`` records are no run steps (``ReplayScope.where``).

Where FINAL would hide something, the run is *broken* instead (exit 7, named), never read
as one record chose: records under one decision id that say different things (an outcome or
reason: a writer of gov.decisions under the id the worker uses; ``audit_conflicts``); a
record that writes a decision again under its link with other content (an earlier time took
a run out of --since's scope), or linked without the workers' key, or as no run step (a
follower's record: the step left its run), or unlinked (a worker deciding a step again after
a crash writes it as it did, linked with the key); a copy flagged ``reemitted`` that says
what no record under its id says (``audit_copies``' ``not_a_copy``: a writer's answer to a
waiting client); a run step on a partition that is not its run's or under another key (a
worker keys every decision by its run id, murmur2: such a record is no worker's, and read
per partition it would be a run of its own).
``policy_in_force`` records are read from the partition a worker writes them to (key ``*``);
one elsewhere, or under a run, is a dead line (the audit reads no such record as a policy).

Memory: a partition's folded rows (about 1 KB a decision), never the topic.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

from baton.processors.chain_links import shown_id
from baton.processors.recorded import POLICY_RECORD_RUN, REPLAY_COLUMNS, Recorded
from baton.schemas.decision import CHAIN_FIELDS, DECISION_ADAPTER, Phase, Reason, chain_hash
from baton.sinks.json_rows import shortcut_row
from baton.sinks.replay_source import ReplayScope
from baton.sinks.rows import DECISION_COLUMNS, decision_row, unparsed
from baton.streams.partitioner import partition_for

__all__ = ["DEAD_KEPT", "PartitionRecords", "StartVerdict"]

_AT = {name: i for i, name in enumerate(DECISION_COLUMNS)}
_REPLAY = itemgetter(*(_AT[c] for c in REPLAY_COLUMNS))
_CHAIN = itemgetter(*(_AT[c] for c in CHAIN_FIELDS))
_TENANT, _PHASE, _REASON = _AT["tenant"], _AT["phase"], _AT["reason"]
#: (an enum member's value is a property: looked up once, not twice a record)
_POLICY_IN_FORCE, _CONTROL = Reason.POLICY_IN_FORCE.value, Phase.CONTROL.value
_REQUEST, _INPUT = _AT["request_id"], _AT["input"]
#: a control follower's record (a kill switch, a release, a policy update): no run step
#: (``replay_source._FOLLOWER_RECORD``, the audit replay's clause)
_FOLLOWER = re.compile(r"(kill_switch|kill_switch_released|policy_updated):")
#: how much of a record a dead line quotes
_QUOTED = 120
#: dead lines kept a partition
DEAD_KEPT = 50

#: (run id, the link its first row names) -> None: its partition was trimmed and that row is
#: intact (a run retention cut: partial); else why the run is broken
StartVerdict = dict[tuple[str, str], str | None]


@dataclass(slots=True)
class PartitionRecords:
    """The records of ``topic[partition]`` (``add`` in offset order), folded as FINAL folds."""

    topic: str
    partition: int
    #: the topic's partitions (a run's partition: murmur2 of its id)
    partitions: int
    #: the partition the workers' ``policy_in_force`` records are on (key ``*``)
    policy_partition: int
    #: the partition's low watermark is past 0 (retention deleted its start)
    trimmed: bool
    chain_key: bytes = b""
    #: the workers' audit MAC keys (``rows.forged``): a record without such a MAC is not
    #: used, as the sink rejects it (): every record is
    mac_keys: tuple[bytes, ...] = ()
    #: (tenant, run, decision id) -> (the row FINAL holds, its offset, a run step)
    held: dict[tuple[str, str, str], tuple[Recorded, int, bool]] = field(default_factory=dict)
    #: what else records under an id said, where more than one thing: (outcome, reason, hash)
    variants: dict[tuple[str, str, str], set[tuple[str, str, str]]] = field(default_factory=dict)
    #: run id -> why it is broken (exit 7)
    broken: dict[str, str] = field(default_factory=dict)
    #: one line per record not used (not a decision, a policy record nowhere a worker's is),
    #: the first DEAD_KEPT of them (a writer's flood is counted, not held)
    dead: list[str] = field(default_factory=list)
    #: the records not used
    dead_count: int = 0
    #: (version, document) of the workers' policy_in_force records read here
    policies: list[tuple[str, str]] = field(default_factory=list)
    #: run -> link -> its row hashes to its chain hash, for the rows naming a link no record
    #: read before them holds (a run's start cut by retention, or a forged start)
    starts: dict[str, dict[str, bool]] = field(default_factory=dict)
    #: (run, chain hash) of records another record under their id replaced
    replaced: set[tuple[str, str]] = field(default_factory=set)
    #: the chain hashes read so far
    links: set[str] = field(default_factory=set)
    #: the runs with a chained record read so far
    chained: set[str] = field(default_factory=set)
    #: the runs whose partition is this one (murmur2 of the id, once a run): run -> its key
    placed: dict[str, bytes] = field(default_factory=dict)
    #: run -> the times of its unlinked refusals a later record under their id replaced
    earlier: dict[str, list[datetime]] = field(default_factory=dict)
    records: int = 0

    def add(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        """Read the record at ``offset`` (its Kafka key and value)."""
        self.records += 1
        if value is None:
            why = "an empty record (a tombstone), not a decision"
            return self._dead(self._at(offset), why, b"")
        if (big := unparsed(value, self.mac_keys)) is not None:
            return self._dead(self._at(offset), big[2], value)
        row = shortcut_row(value, self.topic, self.partition, offset)
        if row is None:
            try:
                decision = DECISION_ADAPTER.validate_json(value)
                if decision.reemitted:
                    return self._copy(offset, key, decision)
                row = decision_row(decision, self.topic, self.partition, offset)
            except Exception as exc:  # what the sink rejects (governance.rejected)
                problem = str(exc).replace("\n", " ")[:300]
                why = f"not a decision the audit stores ({problem})"
                return self._dead(self._at(offset), why, value)
        rec: Recorded = tuple.__new__(Recorded, _REPLAY(row))
        if row[_REASON] == _POLICY_IN_FORCE:
            return self._policy(self._at(offset), key, row, rec)
        step = not (
            row[_PHASE] == _CONTROL and (row[_INPUT] is None or _FOLLOWER.match(row[_REQUEST]))
        )
        if step and not self._placed(offset, key, rec.run_id):
            return
        self._fold((row[_TENANT], rec.run_id, rec.decision_id), rec, offset, step, row)
        self._link(rec, row)

    def _at(self, offset: int) -> str:
        """Where the record at ``offset`` is (made for a message only: ~0.5 us a record)."""
        return f"{self.topic}[{self.partition}]@{offset}"

    def _dead(self, where: str, why: str, value: bytes) -> None:
        self.dead_count += 1
        if len(self.dead) >= DEAD_KEPT:
            return
        quoted = value[:_QUOTED].decode("utf-8", "backslashreplace").encode("unicode_escape")
        self.dead.append(f"{where}: {why}; it starts {quoted.decode()!r}")

    def _placed(self, offset: int, key: bytes | None, run_id: str) -> bool:
        """The run step at ``offset`` is where a worker writes its run's decisions; else its
        run is broken and the record not read here."""
        if key is not None and self.placed.get(run_id) == key:
            return True
        own = partition_for(run_id.encode(), self.partitions)
        if key == run_id.encode() and own == self.partition:
            self.placed[run_id] = key
            return True
        shown_key = "none" if key is None else shown_id(key.decode("utf-8", "replace"))
        self.broken.setdefault(
            run_id,
            f"a decision of it at {self._at(offset)} is under key {shown_key} on partition "
            f"{self.partition}, not its run's (key {shown_id(run_id)}, partition {own}): no "
            "worker's record (a worker keys every decision by its run id)",
        )
        return False

    def _fold(
        self, k: tuple[str, str, str], rec: Recorded, offset: int, step: bool, row: list[Any]
    ) -> None:
        before = self.held.get(k)
        self.held[k] = (rec, offset, step)  # FINAL keeps the last one read
        if before is None:
            return
        old = before[0]
        said = (old.outcome, old.reason, old.chain_hash or "")
        now = (rec.outcome, rec.reason, rec.chain_hash or "")
        if said == now and before[2] == step:
            if step and rec != old and rec.chain_hash is None:
                # an unlinked refusal decided again (a worker restarted, its batch read
                # again): FINAL's row stands, the run in --since's scope by either time
                self.earlier.setdefault(rec.run_id, []).append(old.decided_at)
            elif step and rec != old:  # the same link over other content: no worker's copy
                self._copied(rec, before[1], offset, "its link over other content")
            return  # (every worker's follower records a command under one id: no step)
        if not step and not before[2]:
            return  # follower records: no run step, whatever each worker's says
        if said != now:
            self.variants.setdefault(k, {said}).add(now)
        if old.chain_hash is not None and old.chain_hash != rec.chain_hash:
            self.replaced.add((rec.run_id, old.chain_hash))
        if said[:2] != now[:2]:
            self.broken.setdefault(
                rec.run_id,
                f"decision {shown_id(rec.decision_id)}: records at offsets {before[1]} and "
                f"{offset} say different things ({old.outcome}/{shown_id(old.reason)}, "
                f"{rec.outcome}/{shown_id(rec.reason)}): which one is the worker's is unknown "
                "(a writer of gov.decisions under its id; `baton audit verify` names it)",
            )
        elif rec.chain_hash is not None and (
            chain_hash(self.chain_key, rec.chain_prev or "", _CHAIN(row)) != rec.chain_hash
        ):
            # a worker that decided it again linked it with the key; one that did not is
            # read by FINAL all the same (its time may take its run out of --since's scope)
            self._copied(rec, before[1], offset, "linked again without the workers' key")
        elif before[2] != step or (old.chain_hash is None) != (rec.chain_hash is None):
            # a worker deciding a step again writes it as it did (a step, linked): FINAL's
            # row, a control follower's record or an unlinked one, would take the step out
            # of its run (its change unseen) or replay whatever input it names
            self.broken.setdefault(
                rec.run_id,
                f"decision {shown_id(rec.decision_id)}: the record at offset {offset} writes it "
                f"again {'linked' if rec.chain_hash else 'unlinked'} "
                f"{'as a run step' if step else 'as no run step'}, the one at {before[1]} "
                f"{'linked' if old.chain_hash else 'unlinked'} "
                f"{'as a run step' if before[2] else 'as no run step'}: no worker's copy",
            )

    def _copied(self, rec: Recorded, was: int, offset: int, how: str) -> None:
        self.broken.setdefault(
            rec.run_id,
            f"decision {shown_id(rec.decision_id)}: the record at offset {offset} ({how}) "
            f"replaces the one at {was}: no worker's copy (a writer of gov.decisions under "
            "its id)",
        )

    def _link(self, rec: Recorded, row: list[Any]) -> None:
        if rec.chain_hash is None:
            return
        prev = rec.chain_prev or ""
        if prev and prev not in self.links:
            # retention cuts a run before its first record read: one naming a link no record
            # holds after a chained record of its run was read is no cut (a writer's start)
            first = rec.run_id not in self.chained
            intact = first and chain_hash(self.chain_key, prev, _CHAIN(row)) == rec.chain_hash
            starts = self.starts.setdefault(rec.run_id, {})
            starts[prev] = intact and starts.get(prev, True)
        self.links.add(rec.chain_hash)
        self.chained.add(rec.run_id)

    def _copy(self, offset: int, key: bytes | None, decision: Any) -> None:
        """A copy flagged ``reemitted``: no row; its run broken when it says what no record
        read before it under its id says (the sink's ``not_a_copy``)."""
        run_id = str(decision.run_id)
        if not self._placed(offset, key, run_id):
            return
        k = (str(decision.tenant), run_id, str(decision.decision_id))
        said = (str(decision.outcome), str(decision.reason), decision.chain_hash or "")
        held = self.held.get(k)
        known = self.variants.get(k) or (
            {(held[0].outcome, held[0].reason, held[0].chain_hash or "")} if held else set()
        )
        if said not in known:
            self.broken.setdefault(
                run_id,
                f"a copy re-emitted at {self._at(offset)} under decision {shown_id(k[2])} says "
                f"{said[0]}/{shown_id(said[1])}, which no decision under its id read before it "
                "says (not_a_copy: a writer's answer to a waiting client)",
            )

    def _policy(self, where: str, key: bytes | None, row: list[Any], rec: Recorded) -> None:
        star = POLICY_RECORD_RUN
        if rec.run_id != star or row[_TENANT] != star or row[_PHASE] != Phase.CONTROL.value:
            why = f"a policy_in_force record under run {shown_id(rec.run_id)}: no worker's"
            return self._dead(where, why, b"")
        if key != star.encode() or self.partition != self.policy_partition:
            why = (
                f"a policy_in_force record not where a worker writes one (key {star!r}, "
                f"partition {self.policy_partition})"
            )
            return self._dead(where, why, b"")
        self.policies.append((rec.policy_version, row[_INPUT] or ""))

    def runs(self, scope: ReplayScope) -> tuple[list[list[Recorded]], StartVerdict]:
        """The runs of ``scope`` (its ``where`` as the audit replay applies it: the runs with a
        step at or after ``since``, each read whole, to ``until``), in run id order, each
        run's rows as the audit replay reads them (decided_at, then offset); and what the
        runs' starts that name a link no record read holds say."""
        rows: dict[str, list[tuple[datetime, int, Recorded]]] = defaultdict(list)
        in_range: set[str] = set()
        for (tenant, run_id, _), (rec, offset, step) in self.held.items():
            if not step or (scope.until is not None and rec.decided_at >= scope.until):
                continue
            if scope.since is not None and rec.decided_at >= scope.since:
                in_range.add(run_id)
            if scope.run_id is not None and run_id != scope.run_id:
                continue
            if scope.tenant is not None and tenant != scope.tenant:
                continue
            rows[run_id].append((rec.decided_at, offset, rec))
        for run_id, times in self.earlier.items():
            if scope.since is not None and any(_within(at, scope) for at in times):
                in_range.add(run_id)
        runs = []
        verdicts: StartVerdict = {}
        for run_id in sorted(rows):
            if (scope.since is not None and run_id not in in_range) or run_id in self.broken:
                continue  # (a broken run is named by the caller, never replayed)
            runs.append([rec for _, _, rec in sorted(rows[run_id], key=itemgetter(0, 1))])
            for link, intact in self.starts.get(run_id, {}).items():
                verdicts[(run_id, link)] = self._start(run_id, link, intact)
        return runs, verdicts

    def _start(self, run: str, link: str, intact: bool) -> str | None:
        if not self.trimmed:
            return (
                f"its first decision read names a link no record of {self.topic}"
                f"[{self.partition}] holds, and the partition was read from offset 0 (nothing "
                "trimmed): its first decisions were never published there, or its first link "
                "was altered"
            )
        if not intact or (run, link) in self.replaced:
            return (
                "cut at its start: altered, not trimmed: its first decision read does not hash "
                "to its chain_hash, or comes after a chained decision of it, or the record "
                "that held its link was replaced under its decision id; is "
                "the chain key "
                "(BATON_AUDIT_CHAIN_KEY, or the `baton up` stack's worker/chain.key, found from "
                "its folder) the workers'?"
            )
        return None


def _within(at: datetime, scope: ReplayScope) -> bool:
    """``at`` is in ``scope``'s range (``since`` given)."""
    assert scope.since is not None
    return scope.since <= at and (scope.until is None or at < scope.until)
