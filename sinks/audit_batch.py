"""One batch of the audit sink: records parsed and checked into rows, then written to ClickHouse
with every row it refuses isolated (by halving) into ``governance.rejected``.

A batch is what the sink read since its last commit; ``write_batch`` either stores all of it
(decisions and rejected records) or raises AuditUnavailable having stored a prefix of its
slices, which it remembers, so the same call resumes. Not guaranteed: a row refused by
ClickHouse for an error code it does not know as a data error is retried, not rejected
(``audit_insert.ROW_DATA_CODES``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from clickhouse_connect.driver.client import Client
from pydantic import ValidationError

from baton.schemas.decision import DECISION_ADAPTER
from baton.schemas.errors import AuditUnavailable
from baton.sinks.audit_controls import Control, store_controls
from baton.sinks.audit_copies import Copy, reject_unheld_copies
from baton.sinks.audit_insert import RowsRefused, insert_native, insert_rows, one_native_block
from baton.sinks.json_rows import shortcut_row
from baton.sinks.rows import (
    DECISION_COLUMNS,
    REJECTED_COLUMNS,
    DecidedWindow,
    RejectKind,
    RowRejected,
    decision_row,
    explain_invalid,
    is_command,
    unparsed,
)
from baton.sinks.schema import DATABASE

if TYPE_CHECKING:
    from baton.sinks.sink_parse import ChunkFuture, ParsedChunk, ParseProcesses

#: (partition, offset, value) as the consumer read it
Record = tuple[int, int, bytes | None]

__all__ = [
    "DECISIONS_TABLE",
    "REJECTED_TABLE",
    "AuditBatch",
    "material_of",
    "token_material",
    "utc_now",
    "write_batch",
]

log = logging.getLogger(__name__)

DECISIONS_TABLE = f"{DATABASE}.decisions"
REJECTED_TABLE = f"{DATABASE}.rejected"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class AuditBatch:
    """Rows read since the last commit, per partition in offset order (one topic).

    With ``ttl_days`` set, ``decided_at`` must fall in the audit's window around ``clock()``
    read at the batch's first record (see ``rows.DecidedWindow``).
    """

    topic: str
    ttl_days: int | None = None
    clock: Callable[[], datetime] = utc_now
    rows: list[list[Any]] = field(default_factory=list)
    #: the record each row was made from, kept to reject it if ClickHouse refuses the row
    raws: list[bytes] = field(default_factory=list)
    rejected: list[list[Any]] = field(default_factory=list)
    #: partition -> (first offset, last offset) of everything in this batch
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    started: float = 0.0
    window: DecidedWindow | None = None
    #: the workers' audit MAC keys: a record without such a MAC is rejected (): none checked
    mac_keys: tuple[bytes, ...] = ()
    #: slices of ``rows`` not stored yet, next on top (None: none tried); survives a failed
    #: write_batch so a retry resumes with the same slices and tokens
    todo: list[tuple[int, int]] | None = None
    rejected_stored: bool = False
    #: records handed to parse processes (``defer``), in order: None when every record was
    #: parsed here; kept to parse them here after all (``materialize``)
    deferred: list[Record] | None = None
    #: records deferred and not sent yet (the next chunk)
    unsent: list[Record] = field(default_factory=list)
    #: the sent chunks' results, in order, and the column types they were encoded with
    chunks: list[ChunkFuture] = field(default_factory=list)
    chunk_types: tuple[str, ...] | None = None
    #: rows stored through the chunks' Native blocks (None: not stored that way)
    encoded_rows: int | None = None
    #: records flagged reemitted, not stored: looked up once the rows are (``audit_copies``)
    copies: list[Copy] = field(default_factory=list)
    #: control decisions, stored after the rows unless held (``audit_controls``), and how many
    controls: list[Control] = field(default_factory=list)
    controls_stored: int = 0

    def __len__(self) -> int:
        """Records held: rows, rejected ones and copies, or every record deferred."""
        if self.deferred is not None:
            return len(self.deferred)
        return len(self.rows) + len(self.rejected) + len(self.copies) + len(self.controls)

    def add(self, partition: int, offset: int, value: bytes | None) -> None:
        """Parse one record; anything that keeps it from being a row makes it a rejected row.
        A batch holding deferred records parses them here first (one batch, one path)."""
        self.materialize()
        self._note(partition, offset)
        self._parse(partition, offset, value)

    def defer(self, partition: int, offset: int, value: bytes | None) -> None:
        """Keep one record for a parse process (``send``); ``write_batch`` stores its row.
        A batch that holds rows parsed here already parses this one here too."""
        self._note(partition, offset)
        if self.deferred is None and (self.rows or self.rejected):
            self._parse(partition, offset, value)  # one batch, one path
            return
        if self.deferred is None:
            self.deferred = []
        record = (partition, offset, value)
        self.deferred.append(record)
        self.unsent.append(record)

    def defer_chunk(self, records: list[Record]) -> None:
        """``defer`` each of ``records`` (what one consume returned)."""
        if self.deferred is None and (self.rows or self.rejected):
            for record in records:
                self.add(*record)
            return
        if self.deferred is None:
            self.deferred = []
        for partition, offset, _ in records:
            self._note(partition, offset)
        self.deferred.extend(records)
        self.unsent.extend(records)

    def send(self, parsers: ParseProcesses, types: tuple[str, ...]) -> None:
        """Hand the records deferred since the last call to ``parsers`` as one chunk."""
        if not self.unsent:
            return
        if self.chunk_types not in (None, types):
            self.materialize()  # never one block of two layouts
            return
        self.chunk_types = types
        self.chunks.append(parsers.submit(self.window, types, self.unsent, self.mac_keys))
        self.unsent = []

    def materialize(self) -> None:
        """Parse the deferred records here, as ``add`` would have (a parse process failed,
        ClickHouse refused the block, partitions were revoked): the batch is then the row
        path's, from its first slice."""
        if self.deferred is None:
            return
        records, self.deferred = self.deferred, None
        self.unsent, self.chunks, self.chunk_types, self.encoded_rows = [], [], None, None
        self.rows, self.raws, self.rejected, self.copies = [], [], [], []
        self.controls, self.controls_stored = [], 0
        self.todo, self.rejected_stored = None, False
        for partition, offset, value in records:
            self._parse(partition, offset, value)

    def stored_rows(self) -> int:
        """Rows this batch holds for governance.decisions (refused ones included)."""
        rows = len(self.rows) if self.encoded_rows is None else self.encoded_rows
        return rows + self.controls_stored

    def _note(self, partition: int, offset: int) -> None:
        if not self.ranges:
            self.started = time.monotonic()
            if self.ttl_days is not None:
                self.window = DecidedWindow.around(self.clock(), self.ttl_days)
        first, _ = self.ranges.get(partition, (offset, offset))
        self.ranges[partition] = (first, offset)

    def _parse(self, partition: int, offset: int, value: bytes | None) -> None:
        if (big := unparsed(value, self.mac_keys)) is not None:
            return self.reject(partition, offset, *big)
        row = (
            None
            if value is None
            else shortcut_row(value, self.topic, partition, offset, self.window)
        )
        if row is not None:
            self.rows.append(row)
            self.raws.append(value)
            return
        try:
            if value is None:
                raise RowRejected(
                    RejectKind.INVALID_RECORD, "empty record (tombstone): expected a Decision"
                )
            decision = DECISION_ADAPTER.validate_json(value)
            if decision.reemitted:  # a copy answered from a run's state: the audit keeps
                # the original; one that names no stored decision is kept (audit_copies)
                where = (partition, offset, value, decision.tenant, decision.run_id)
                said = (str(decision.outcome), decision.reason, decision.chain_hash or "")
                self.copies.append((*where, decision.decision_id, *said))
                return
            row = decision_row(decision, self.topic, partition, offset, self.window)
            if is_command(decision.phase.value, decision.request_id):
                self.controls.append((row, value))  # stored after the rows, once
                return
        except ValidationError as exc:
            self.reject(partition, offset, value, RejectKind.INVALID_RECORD, explain_invalid(exc))
        except RowRejected as exc:
            self.reject(partition, offset, value, exc.kind, str(exc))
        except Exception as exc:  # anything else about one record is that record's problem
            error = f"{type(exc).__name__}: {exc}"
            self.reject(partition, offset, value, RejectKind.UNCONVERTIBLE, error)
        else:
            self.rows.append(row)
            self.raws.append(value)

    def reject(
        self, partition: int, offset: int, value: bytes | None, kind: RejectKind, error: str
    ) -> None:
        raw = (value or b"").decode("utf-8", errors="backslashreplace")
        self.rejected.append([self.topic, partition, offset, error[:2000], raw, kind.value])

    def token(self, lo: int = 0, hi: int | None = None) -> str:
        """The insert_deduplication_token of ``rows[lo:hi]`` (default: all of them).

        ClickHouse drops an insert whose token it has seen, whatever its rows: a token must
        name exactly one set of rows. Offsets name records for good, so the token is the
        readable offset span per partition plus a digest of the exact offsets and of the
        rows' decision ids: a slice left after rejecting rows, or cut at other places after a
        restart, gets its own token; the same slice retried gets the same one. The ids count
        because offsets do not name records for good everywhere: the embedded broker of a
        restarted `baton up` numbers every partition from 0 again, and its new decisions
        would otherwise carry the tokens of an earlier start's and be dropped unseen.
        """
        spans, material = token_material(self.rows[lo:hi])
        return _token_text(self.topic, spans, [material])

    def chunks_token(self, chunks: list[ParsedChunk]) -> str:
        """``token()`` of the rows the chunks hold, from what each chunk made of its own."""
        spans: dict[int, tuple[int, int]] = {}
        for chunk in chunks:
            for partition, (first, last) in chunk.spans.items():
                spans[partition] = (spans.get(partition, (first, last))[0], last)
        return _token_text(self.topic, spans, [chunk.material for chunk in chunks])

    def rejected_token(self) -> str:
        rejected = self.rejected
        spans, material = material_of(
            [r[4] for r in rejected], [r[1] for r in rejected], [r[2] for r in rejected]
        )
        return _token_text(self.topic, spans, [material]) + "/rejected"

    def drop_partitions(self, partitions: set[int]) -> None:
        """Forget revoked partitions: their new owner re-reads them from the last commit."""
        if not partitions & self.ranges.keys():
            return
        self.materialize()
        # audit_partition: second-to-last column of a decision row, second of a rejected row;
        # rows ClickHouse refused already have their rejected row: not tried again
        refused = {(r[1], r[2]) for r in self.rejected if r[-1] == RejectKind.REFUSED_BY_CLICKHOUSE}
        kept = [
            i
            for i, r in enumerate(self.rows)
            if r[-2] not in partitions and (r[-2], r[-1]) not in refused
        ]
        self.rows = [self.rows[i] for i in kept]
        self.raws = [self.raws[i] for i in kept]
        self.rejected = [r for r in self.rejected if r[1] not in partitions]
        self.copies = [c for c in self.copies if c[0] not in partitions]
        self.controls = [c for c in self.controls if c[0][-2] not in partitions]
        self.ranges = {p: span for p, span in self.ranges.items() if p not in partitions}
        # what was stored stays stored (the new owner's copies fold); the rest starts over
        self.todo = None
        self.rejected_stored = False

    def commit_offsets(self) -> dict[int, int]:
        """partition -> the offset to commit after this batch (next one to read)."""
        return {p: last + 1 for p, (_, last) in self.ranges.items()}


def token_material(rows: list[list[Any]]) -> tuple[dict[int, tuple[int, int]], bytes]:
    """What the dedup token of ``rows`` is made of: partition -> (first, last) offset, and
    the bytes its digest covers (the rows' offsets and decision ids, in order)."""
    return material_of([r[0] for r in rows], [r[-2] for r in rows], [r[-1] for r in rows])


def material_of(
    contents: list[str], partitions: list[int], offsets: list[int]
) -> tuple[dict[int, tuple[int, int]], bytes]:
    """``token_material`` of rows with these ids (or rejected records' texts), partitions and
    offsets, in order: one text encoded once (json_columns' chunks take it too)."""
    last = dict(zip(partitions, offsets, strict=True))
    first = dict(zip(reversed(partitions), reversed(offsets), strict=True))
    spans = {p: (first[p], o) for p, o in last.items()}
    text = "".join(map("{}:{}:{}:{},".format, partitions, offsets, map(len, contents), contents))
    return spans, text.encode()


def _token_text(topic: str, spans: dict[int, tuple[int, int]], material: list[bytes]) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for part in material:  # one digest over the parts as if they were one
        digest.update(part)
    readable = ",".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(spans.items()))
    return f"{topic}/{readable}/{digest.hexdigest()}"


def write_batch(
    client: Client,
    batch: AuditBatch,
    label: str = "ClickHouse",
    types: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """Insert ``batch``: its decisions, then its rejected records.

    ``types``: table -> the column types to encode its rows with (``audit_insert.insert_types``);
    a table not in it is asked for its types at each insert.

    A slice of rows that ClickHouse refuses as data is cut in halves until each refused row
    is alone; that row becomes a rejected record (``refused_by_clickhouse``), the rest is
    stored, in offset order. Raises AuditUnavailable when ClickHouse is unreachable or fails
    otherwise; the batch remembers which slices are stored, so calling again resumes.
    """
    if batch.deferred is not None and batch.todo is None:
        _write_chunks(client, batch, label, (types or {}).get(DECISIONS_TABLE))
    if batch.todo is None:
        batch.todo = [(0, len(batch.rows))] if batch.rows else []
    while batch.todo:
        lo, hi = batch.todo[-1]
        try:
            insert_rows(
                client,
                DECISIONS_TABLE,
                batch.rows[lo:hi],
                DECISION_COLUMNS,
                batch.token(lo, hi),
                label,
                (types or {}).get(DECISIONS_TABLE),
            )
        except RowsRefused as exc:
            if hi - lo > 1:
                mid = (lo + hi) // 2
                batch.todo[-1:] = [(mid, hi), (lo, mid)]
                continue
            if not exc.row_level:  # a one-row block refused as a block: not the row's fault
                raise AuditUnavailable(
                    f"ClickHouse at {label} refused a one-row insert into {DECISIONS_TABLE} "
                    f"({batch.token(lo, hi)}): {exc}"
                ) from exc
            row = batch.rows[lo]
            log.warning(
                "audit sink: ClickHouse refused the record at %s/%s/%s (%s); it is kept in %s",
                batch.topic,
                row[-2],
                row[-1],
                exc,
                REJECTED_TABLE,
            )
            batch.reject(
                row[-2],
                row[-1],
                batch.raws[lo],
                RejectKind.REFUSED_BY_CLICKHOUSE,
                f"ClickHouse refused the row: {exc}",
            )
        batch.todo.pop()
    reject_unheld_copies(client, batch, label)
    if batch.controls:
        types_ = (types or {}).get(DECISIONS_TABLE)
        batch.controls_stored += store_controls(client, batch, label, types_)
    if batch.rejected and not batch.rejected_stored:
        token = batch.rejected_token()
        try:
            insert_rows(
                client,
                REJECTED_TABLE,
                batch.rejected,
                REJECTED_COLUMNS,
                token,
                label,
                (types or {}).get(REJECTED_TABLE),
            )
        except RowsRefused as exc:  # only strings and Kafka's own numbers: never seen
            raise AuditUnavailable(
                f"ClickHouse at {label} refused the rejected records ({token}): {exc}"
            ) from exc
        batch.rejected_stored = True


#: longest wait for one chunk from a parse process (it parses ~1,000 records in ~15 ms): past
#: it the batch is parsed here, so a parse process that hangs cannot hold the audit
_CHUNK_WAIT_S = 60.0


def _write_chunks(
    client: Client, batch: AuditBatch, label: str, types: tuple[str, ...] | None
) -> None:
    """Store a deferred batch's rows as its parse processes encoded them, in one insert
    under the token its rows would have (``AuditBatch.token``), and take its rejected
    records; a chunk that did not come back, types changed since it was encoded, or a block
    ClickHouse refuses as data: the batch is parsed here (``materialize``) and the row path
    goes on from its first slice. AuditUnavailable: the same insert is tried again."""
    if batch.unsent or types is None or types != batch.chunk_types:
        batch.materialize()
        return
    try:
        chunks = [future.result(_CHUNK_WAIT_S) for future in batch.chunks]
    except Exception as exc:  # a parse process died, failed or hangs: parse here
        log.warning("audit sink: parsing a batch here (%s)", exc or type(exc).__name__)
        for future in batch.chunks:
            future.abandon()  # a hung process is killed: not waited for again
        batch.materialize()
        return
    if any(chunk.native is None for chunk in chunks):
        batch.materialize()  # the row path finds the value the driver cannot encode
        return
    rows = sum(chunk.rows for chunk in chunks)
    if rows:
        try:
            insert_native(
                client,
                DECISIONS_TABLE,
                DECISION_COLUMNS,
                one_native_block([(c.native, c.rows, c.marks) for c in chunks]),  # type: ignore[misc]
                rows,
                batch.chunks_token(chunks),
                label,
            )
        except RowsRefused:
            batch.materialize()  # halving finds the row, under the same tokens
            return
    batch.encoded_rows = rows
    batch.rejected = [r for chunk in chunks for r in chunk.rejected]
    batch.copies = [c for chunk in chunks for c in chunk.copies]
    batch.controls = [c for chunk in chunks for c in chunk.controls]
    batch.todo = []
