"""What `baton replay` reads from the audit: each run's recorded decisions, and the policies.

Rows come from ``governance.decisions FINAL`` (one row per decision: a redelivered copy folds,
a re-emitted one is never stored) in each run's order: ``decided_at``, then where the sink
read it (``audit_partition``, ``audit_offset``: a run's decisions share one partition of
the decisions topic and were published in the order they were made). The control
follower's records (kill switches, policy updates) are not run steps. Policies come from the
workers' ``policy_in_force`` records; one whose document does not hash to the version it
claims is not used (a forged or damaged row).

Rows are read as *pages*: whole runs, about 50,000 rows a query (memory holds a page, never
the audit), in the audit's JSON rows format, and decoded (:func:`page_rows`) where they are
replayed: the reading process cuts pages into pieces of whole runs (:func:`split_page`) and
hands the bytes to the `--jobs` processes. A FINAL query scans the table (its key starts with
the tenant), so pages are few and big, and the pieces handed out are small.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, NoReturn

import orjson

from baton.processors.chain_links import shown_id
from baton.processors.recorded import REPLAY_COLUMNS, Recorded
from baton.schemas.decision import Phase, Reason
from baton.schemas.errors import AuditUnavailable
from baton.schemas.events import MAX_RECORDED_COMMAND_BYTES
from baton.sinks.policy_records import policies_of, read_policies
from baton.sinks.schema import DATABASE

if TYPE_CHECKING:  # the replay processes decode pages and need no ClickHouse client
    from clickhouse_connect.driver.client import Client

__all__ = [
    "Pages",
    "ReplayScope",
    "page_rows",
    "policies_of",
    "read_commands",
    "read_pages",
    "read_policies",
    "read_runs_rows",
    "split_page",
]

# (Final: a compiled module reads them from C statics, not through the module's dict)
_DECIDED_AT: Final = REPLAY_COLUMNS.index("decided_at")
_COLUMNS: Final = len(REPLAY_COLUMNS)
_OFFSET: Final = REPLAY_COLUMNS.index("offset")
#: a record of the control follower (a kill switch, a release, a policy update, applied or
#: refused: its request id starts with the command's type), not a step of the run it names;
#: never chained: a chained one is a step re-published so, read as a step (H1, session 20)
_FOLLOWER_RECORD = (
    f"phase = '{Phase.CONTROL.value}' AND chain_hash IS NULL AND (input IS NULL OR "
    "match(request_id, '^(kill_switch|kill_switch_released|policy_updated):'))"
)
#: the commands `baton up` re-issues on a fresh broker, in the order they were applied; one
#: longer than any event a worker reads is no worker's: its size, never a forger's megabytes
_COMMANDS_SQL = f"""
SELECT if(length(input) <= {MAX_RECORDED_COMMAND_BYTES}, input,
          'oversized: ' || toString(length(input)))
FROM {DATABASE}.decisions FINAL WHERE phase = '{Phase.CONTROL.value}' AND input IS NOT NULL
  AND reason IN ('{Reason.KILL_SWITCH.value}', '{Reason.KILL_SWITCH_RELEASED.value}',
                 '{Reason.POLICY_UPDATED.value}')
ORDER BY decided_at, audit_partition, audit_offset
"""
#: rows per query: bounds the memory of a long replay (a run is never split: see below)
_PAGE = 50_000


@dataclass(frozen=True, slots=True)
class ReplayScope:
    """Which recorded decisions to replay (None: no bound)."""

    #: the runs with a step at or after it, each whole (from its first recorded decision)
    since: datetime | None = None
    until: datetime | None = None
    run_id: str | None = None
    tenant: str | None = None
    #: only runs with a decision at or after this time, each read whole (restoring live runs)
    active_since: datetime | None = None
    #: only these runs (each read whole; after the others: callers give those by position)
    run_ids: tuple[str, ...] | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        # a run's steps; not the control follower's records (kill switches, policy updates:
        # no input, they belong to no run step) nor the workers' policy documents. A run's
        # finish is a control-phase decision of the run, with its input: it is a step
        clauses = [f"NOT ({_FOLLOWER_RECORD})", f"reason != '{Reason.POLICY_IN_FORCE.value}'"]
        params: dict[str, Any] = {}
        until = "decided_at < {until:DateTime64(6, 'UTC')}"
        if self.since is not None:
            # the runs with a step at or after it, each read from its first recorded decision
            # (a run begun before the bound is replayed whole: read from the bound, it was
            # partial, and a writer of gov.handoff.requests who predicts a run id and seeds
            # it before --since hid the run's change, exit 0)
            # (or stored since it, the sink's clock: steps re-published decided before it
            # took their run out once merged; H1, session 20; docs/replay.md)
            since = "decided_at >= {since:DateTime64(6, 'UTC')}"
            stored = "inserted_at >= {since:DateTime64(6, 'UTC')}"
            step = [*clauses, f"({since} OR {stored})"]
            clauses.append(_runs_with([*step, until] if self.until is not None else step))
            params["since"] = self.since
        if self.until is not None:
            clauses.append(until)
            params["until"] = self.until
        if self.run_id is not None:
            clauses.append("run_id = {run_id:String}")
            params["run_id"] = self.run_id
        if self.run_ids is not None:
            clauses.append("run_id IN {run_ids:Array(String)}")
            params["run_ids"] = list(self.run_ids)
        if self.tenant is not None:
            clauses.append("tenant = {tenant:String}")
            params["tenant"] = self.tenant
        if self.active_since is not None:
            clauses.append(_runs_with(["decided_at >= {active_since:DateTime64(6, 'UTC')}"]))
            params["active_since"] = self.active_since
        return " AND ".join(clauses), params


def _runs_with(clauses: list[str]) -> str:
    """The clause taking every row of the runs with a row where all ``clauses`` hold."""
    return f"run_id IN (SELECT run_id FROM {DATABASE}.decisions WHERE {' AND '.join(clauses)})"


def read_commands(client: Client) -> list[str]:
    """The applied kill switches, releases and policy updates, as the events that made them."""
    return [str(row[0]) for row in client.query(_COMMANDS_SQL).result_rows]


def read_runs_rows(client: Client, scope: ReplayScope) -> Iterator[Recorded]:
    """Every recorded decision in ``scope``, in REPLAY_COLUMNS order, run by run in order.

    Paged by run id (a page ends at a run boundary: the runs of each page are read whole),
    so memory holds about one page of rows, never the whole audit.
    """
    for page in read_pages(client, scope).pages:
        yield from page_rows(page)


@dataclass(frozen=True, slots=True)
class Pages:
    """The pages of a scope (raw bytes, whole runs each, see :func:`page_rows`) and about how
    many rows they hold (counted before ``FINAL`` folds copies: for a progress bar)."""

    rows: int
    pages: Iterator[bytes]


def read_pages(client: Client, scope: ReplayScope, rows_per_page: int = _PAGE) -> Pages:
    """The rows of ``scope`` as pages of up to about ``rows_per_page`` rows, each holding whole
    runs in order, in the audit's own text (JSON rows, decoded by :func:`page_rows` where
    they are replayed: the reading process hands bytes to `--jobs` processes, never Python
    objects).

    One query finds where pages may end (a running count per run id, every tenth of a
    page), one reads each page. The first pages are small and grow (a tenth, a fifth, ...
    of ``rows_per_page``): replay starts on the first rows while the rest are read, and the
    pages after them are few (each is a scan of the table).
    """
    where, params = scope.where()
    total, tenants, tenant = client.query(
        f"SELECT count(), uniqExact(tenant), any(tenant) FROM {DATABASE}.decisions WHERE {where}",
        parameters=params,
    ).result_rows[0]
    if int(tenants) == 1 and scope.tenant is None:
        # the scope's one tenant named: the table's key starts with it, so ClickHouse reads
        # each page in key order and sorts within runs only (a page query ~25 % less CPU;
        # a tenant first seen after this count is not read, as a run first seen after the
        # last page's query is not)
        where += " AND tenant = {only_tenant:String}"
        params = {**params, "only_tenant": str(tenant)}
    step = max(int(rows_per_page) // 10, 1)
    bounds = client.query(
        f"SELECT run_id, upto FROM (SELECT run_id, sum(n) OVER (ORDER BY run_id ROWS "
        f"UNBOUNDED PRECEDING) AS upto, n FROM (SELECT run_id, count() AS n FROM "
        f"{DATABASE}.decisions WHERE {where} GROUP BY run_id)) "
        f"WHERE intDiv(upto, {step}) > intDiv(upto - n, {step}) "
        "ORDER BY run_id",
        parameters=params,
    ).result_rows
    ends = _growing([(str(run_id), int(upto)) for run_id, upto in bounds], step, rows_per_page)
    return Pages(int(total), _pages(client, where, params, ends))


def _growing(bounds: list[tuple[str, int]], first: int, most: int) -> list[str]:
    """The run ids that end pages: ``bounds`` (run id, rows up to it) thinned so that pages
    hold about ``first`` rows, then twice as many each, up to ``most``."""
    ends: list[str] = []
    size, last = first, 0
    for run_id, upto in bounds:
        if upto - last >= size:
            ends.append(run_id)
            size, last = min(size * 2, most), upto
    return ends


def _pages(
    client: Client, where: str, params: dict[str, Any], bounds: list[str]
) -> Iterator[bytes]:
    after: str | None = None
    for upto in [*bounds, None]:
        clauses, page_params = [where], dict(params)
        if after is not None:
            clauses.append("run_id > {after:String}")
            page_params["after"] = after
        if upto is not None:
            clauses.append("run_id <= {upto:String}")
            page_params["upto"] = upto
        page = client.raw_query(
            f"SELECT {_SELECT} FROM {DATABASE}.decisions FINAL WHERE {' AND '.join(clauses)} "
            "ORDER BY run_id, decided_at, audit_partition, audit_offset",
            parameters=page_params,
            fmt="JSONCompactEachRow",
        )
        if page:
            yield page
        after = upto


#: the page's columns: REPLAY_COLUMNS, decided_at as microseconds since the epoch (exact,
#: and cheaper to read back than a formatted time)
_SELECT = ", ".join(
    "toUnixTimestamp64Micro(decided_at)" if c == "decided_at" else f"`{c}`" for c in REPLAY_COLUMNS
)


def split_page(
    page: bytes, rows: int, left: int = 0, done: int = 0, share: int = 0
) -> Generator[bytes, None, int]:
    """``page`` cut into pieces of about ``rows`` rows (more to end a run: a run is never
    split), still in the page format: what the reading process hands to one replay process.

    ``share`` > 0 sizes the pieces by where they are in the scope (``done``: rows cut before
    this page; ``left``: rows from this page's start to the scope's end, about, and never
    fewer than the page's own): a piece
    holds at most ``(done + cut) // 2`` rows, so the first ones are small and every process
    starts deciding on the first page, and at most ``left // share`` of the rows left, so
    the last ones are small and the processes finish together; never fewer than
    ``_FEWEST``.

    Cut by bytes (the page's mean row length), one copy of each piece, not split into lines
    and joined again: the reading process splits every page beside its share of the
    deciding (120k rows: 0.05 s CPU, 0.06-0.08 s by lines), and holds no list of a page's
    lines (50,000 bytes objects). Returns the page's rows (what ``yield from`` gives)."""
    end = len(page)
    while end and page[end - 1] == _NEWLINE:
        end -= 1
    if not end:
        return 0
    lines = page.count(b"\n", 0, end) + 1
    left = max(left, lines)
    start = 0
    while start < end:
        want = max(rows, 1)
        if share > 0:
            want = min(want, max(_FEWEST, done // 2), max(_FEWEST, left // share))
        size = max(end * want // lines, 1)  # bytes of ~want rows (the page's mean row)
        cut = page.find(b"\n", min(start + size, end) - 1, end)
        if cut < 0:
            yield page[start:end]
            return lines
        last = page.rfind(b"\n", start, cut) + 1 or start  # where the piece's last row starts
        run_id = _run_of(page[last:cut])
        while cut < end:  # the run of the piece's last row ends in it
            after = page.find(b"\n", cut + 1, end)
            after = end if after < 0 else after
            following = _run_of(page[cut + 1 : after])
            if following != run_id:
                _check_run_order(run_id, following)
                break
            cut = after
        if share > 0:
            cut_rows = page.count(b"\n", start, cut) + 1
            done += cut_rows
            left -= cut_rows
        yield page[start:cut]
        start = cut + 1
    return lines


#: the fewest rows :func:`split_page` sizes a piece to (about 10 ms of deciding)
_FEWEST: Final = 250
_NEWLINE = ord("\n")


def _run_of(line: bytes) -> object:
    return _json(line)[0]


def _check_run_order(run_id: object, following: object) -> None:
    """Nothing when the run ``following`` may come after ``run_id`` in a page (run id order,
    each run's rows together), else AuditUnavailable: a run's rows apart would be replayed
    as two runs, each wrong."""
    if type(run_id) is str and type(following) is str and following < run_id:
        raise AuditUnavailable(
            f"a page of recorded decisions from the audit is not in run order (run "
            f"{shown_id(following)} after run {shown_id(run_id)}): a run's rows may be apart, "
            "replay refuses to decide them; is the audit a ClickHouse server?"
        )


def _json(text: bytes) -> Any:
    """``text`` parsed; bytes that are not UTF-8 (only a forged row holds them: no output
    settings are asked of the server, `baton up`'s SQL endpoint is read-only and refuses
    any) read as U+FFFD, so that row fails its chain link, named, instead of the page."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            return orjson.loads(text.decode("utf-8", "replace"))
        except orjson.JSONDecodeError as exc:
            raise AuditUnavailable(
                f"a page of recorded decisions from the audit is not JSON rows ({exc}; it "
                f"starts {text[:120]!r}); is the audit a ClickHouse server?"
            ) from None


def page_rows(page: bytes) -> Iterator[Recorded]:
    """A page of :func:`read_pages` as recorded decisions (``decided_at`` an aware UTC time).

    64-bit numbers may come quoted (``output_format_json_quote_64bit_integers``, on in
    older servers). A page's runs come in run id order (the query's ``ORDER BY``), else
    AuditUnavailable (the reader checks where it cuts a page, this every row).
    """
    # one JSON array: the rows joined by commas, bracketed in one join (two concatenations
    # copied the page twice: ~0.5k instructions a row more, compiled)
    rows: list[Any] = _json(b"".join((b"[", page.rstrip(b"\n").replace(b"\n", b","), b"]")))
    times: dict[Any, datetime] = {}
    compiled = _COMPILED
    run_id: object = None
    for row in rows:
        if compiled:  # (interpreted, the tuple of types is the cheaper test)
            plain = _plain(row) or (type(row) is list and tuple(map(type, row)) in _GOOD_SHAPES)
        else:
            plain = type(row) is list and tuple(map(type, row)) in _GOOD_SHAPES
        if not plain:
            _shape_checked(row)
        micros = row[_DECIDED_AT]
        at = times.get(micros)
        if at is None:
            try:
                # (positional: timedelta(microseconds=n) costs twice as much)
                at = _EPOCH + _timedelta(0, 0, micros if type(micros) is int else int(micros))
            except (ValueError, OverflowError):
                _refuse(row, "decided_at", micros)
            times[micros] = at
        row[_DECIDED_AT] = at
        if type(row[_OFFSET]) is str:
            try:
                row[_OFFSET] = int(row[_OFFSET])
            except ValueError:
                _refuse(row, "offset", row[_OFFSET])
        if row[0] != run_id:
            _check_run_order(run_id, row[0])
            run_id = row[0]
        yield _new_row(_Recorded, row)


def _plain(row: Any) -> bool:
    """``row`` is a list of REPLAY_COLUMNS' values as a current server writes them: text
    where text is, numbers unquoted (every row of a real audit; the other shapes a column
    allows are checked by ``_shape_checked``). One type test a value: a tuple of a row's
    types cost more than its decoding (compiled)."""
    if type(row) is not list or len(row) != _COLUMNS:
        return False
    text, num = str, int
    return (
        type(row[0]) is text and type(row[1]) is text and type(row[2]) is text
        and type(row[3]) is text and (row[4] is None or type(row[4]) is text)
        and type(row[5]) is text and type(row[6]) is num
        and (row[7] is None or type(row[7]) is text)
        and (row[8] is None or type(row[8]) is num) and (row[9] is None or type(row[9]) is num)
        and (row[10] is None or type(row[10]) is text)
        and (row[11] is None or type(row[11]) is text)
        and (row[12] is None or type(row[12]) is text)
    )  # fmt: skip


#: the JSON types each column of governance.decisions reads back as (64-bit numbers may come
#: quoted): a row of other types is no audit row (a forged server's), refused before replay
#: reads it; a compiled replay core checks Recorded's types on every read (TypeError, the
#: whole replay ended by one row) where the interpreted one read on (H5, session 11)
_STR, _TEXT, _NUMBER = (str,), (str, type(None)), (int, str, type(None))
_COLUMN_TYPES = dict(
    zip(REPLAY_COLUMNS, (*[_STR] * 4, _TEXT, _STR, (int, str), _TEXT, (int, type(None)), _NUMBER,
                         _TEXT, _TEXT, _TEXT), strict=True)
)  # fmt: skip
_GOOD_SHAPES: Final[set[tuple[type, ...]]] = set()


def _shape_checked(row: Any) -> None:
    """Nothing when ``row``'s values have their columns' types (its shape remembered), else
    AuditUnavailable naming the first that does not."""
    if type(row) is not list or len(row) != len(REPLAY_COLUMNS):
        _refuse(row, "row", row)
    for (name, allowed), value in zip(_COLUMN_TYPES.items(), row, strict=True):
        if type(value) not in allowed:
            _refuse(row, name, value)
    if len(_GOOD_SHAPES) < 1024:
        _GOOD_SHAPES.add(tuple(map(type, row)))


def _refuse(row: Any, name: str, value: Any) -> NoReturn:
    raise AuditUnavailable(
        f"the audit returned a recorded decision whose {name} is {str(value)[:80]!r} "
        f"({type(value).__name__}): not a row of {DATABASE}.decisions (it starts "
        f"{str(row)[:160]!r}); is the audit a ClickHouse server?"
    )


_new_row: Final = tuple.__new__
_Recorded: Final = Recorded
_timedelta: Final = timedelta
#: this module is compiled (BATON_COMPILE=1)
_COMPILED: Final = not __file__.endswith(".py")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
