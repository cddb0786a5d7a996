"""Rows per second of the audit sink (`baton sink` internals) into embedded ClickHouse (chDB).

Makes N decisions with the worker's own batch step (engine_bench's realistic mix through
``BatchProcessor``: every field the worker publishes, the recorded input and the hash chain
included), produces them to an 8-partition decisions topic on an embedded broker, then in
the same run:

* reads the topic with a plain confluent-kafka consumer and nothing else (the baseline: the
  ceiling of any sink reading it);
* runs the real sink (``run_sink``) into a fresh chDB directory with every view, once per
  variant, each in a fresh process, and times it from its partitions' assignment to the
  commit of its last row.

Variants: the sink as shipped (two parse processes beside it, ``sinks/sink_parse.py``); with
``--variants processes`` also ``one process`` (parsed in the sink's own process, as before
the parse processes) and ``one parse process``; then each of its speed-ups taken away
alone, to show what each is worth (``--variants all``): ``full batches`` (a write starts
only with a full batch or at the batch timeout, never as soon as the writer is free), ``no
shortcut`` (every record through pydantic and ``rows.decision_row``, in one process),
``serial`` (no parse/insert overlap), ``table types`` (the insert encodes LowCardinality
columns in Python, as clickhouse-connect does by default; in one process), ``optimize on
insert`` (ClickHouse's optimize_on_insert left on: each block's own copies of one key folded
as it is written, ``audit_insert.INSERT_SETTINGS``; also ``--variants insert``).

    python -m bench.sink_bench                          # 100,000 decisions, the sink as shipped
    python -m bench.sink_bench --variants all           # and without each speed-up
    python -m bench.sink_bench --variants processes --rounds 3  # 2, 0 and 1 parse processes
    python -m bench.sink_bench --variants pipeline --rounds 3   # eager vs full, alternating
    python -m bench.sink_bench --batch-size 20000       # another BATON_SINK_BATCH_SIZE
    python -m bench.sink_bench --routes                 # insert routes compared, no Kafka
    python -m bench.sink_bench --against DIR --rounds 3 # and an older tree's sink, alternating
    python -m bench.sink_bench --against A --against B  # two older trees, each named by folder
    python -m bench.sink_bench --variants insert --rounds 3     # optimize_on_insert off vs on
    python -m bench.sink_bench --schemas --rounds 8     # chDB's insert alone, 0006 views or not
    python -m bench.sink_timeline                       # where one run's wall time goes

Rates: ``rows/s`` from the sink's partitions' assignment to the commit of its last row;
``from 1st record`` from its first record read, as the consume-only baseline is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from baton.processors.batch import BatchProcessor, InputRecord
from baton.schemas.policy import load_policy
from baton.schemas.record_mac import RecordMac
from baton.schemas.settings import Settings
from baton.sinks.sink import AuditSink, SinkStats, run_sink
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for
from baton.streams.topics import TopicCatalog, ensure_topics
from bench.engine_bench import build_workload

PARTITIONS = 8
#: the seal key of `--variants mac` (what BATON_AUDIT_CHAIN_KEY holds for its checking sink)
BENCH_MAC_KEY = "sink-bench-workers-seal-key"
APPROVALS = "gov.approvals"


def worker_decisions(n: int) -> list[tuple[bytes, bytes]]:
    """``n`` decisions as the worker publishes them: (key, JSON). One workload, decided again
    under fresh run ids (``run-`` renamed ``rN-`` in keys and events) until there are ``n``."""
    proc = BatchProcessor(
        load_policy(None), PARTITIONS, {}, worker="bench", approvals_topic=APPROVALS
    )
    now = datetime.now(UTC)
    workload = [
        (run.encode(), ev.to_json(), ev.type.startswith("approval"))
        for run, ev, _ in build_workload(max(100, min(n // 6, 4000)))
    ]
    out: list[tuple[bytes, bytes]] = []
    round_ = 0
    while len(out) < n:
        fresh = b"r%d-" % round_
        round_ += 1
        recs = []
        for i, (key, value, approval) in enumerate(workload):
            key = key.replace(b"run-", fresh)
            topic = APPROVALS if approval else "gov.handoff.requests"
            recs.append(
                InputRecord(
                    topic, partition_for(key, PARTITIONS), i, key, value.replace(b"run-", fresh)
                )
            )
        for i in range(0, len(recs), 1000):
            produced = proc.process(recs[i : i + 1000], now).decisions
            out.extend((d.run_id.encode(), d.to_json()) for _, d in produced)
    return out[:n]


def consume_only(bootstrap: str, topic: str, n: int) -> float:
    """Records per second of a bare consumer reading ``n`` records of ``topic`` from the start."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    got, first = 0, 0.0
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        for msg in c.consume(5000, 0.2):
            if not msg.error():
                first = first or time.perf_counter()
                got += 1
    elapsed = time.perf_counter() - first
    c.close()
    return got / elapsed if elapsed > 0 else 0.0


@contextlib.contextmanager
def _variant(name: str) -> Iterator[None]:
    """The sink with one speed-up taken away (bench only: patches module attributes)."""
    import baton.sinks.audit_batch as audit_batch
    import baton.sinks.sink_loop as sink_loop

    saved: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, attr: str, value: Any) -> None:
        saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    if name == "no shortcut":  # patched here only: parse in this process
        patch(audit_batch, "shortcut_row", lambda *args: None)
        os.environ["BATON_SINK_PARSE_PROCESSES"] = "0"
    elif name == "serial":
        patch(AuditSink, "pipelined", False)
    elif name == "table types":  # no types: the sink parses in its own process
        patch(sink_loop, "insert_types", lambda client, table, columns: None)
        os.environ["BATON_SINK_PARSE_PROCESSES"] = "0"
    elif name == "full batches":
        patch(AuditSink, "eager", False)
    elif name == "one process":
        os.environ["BATON_SINK_PARSE_PROCESSES"] = "0"
    elif name == "one parse process":
        os.environ["BATON_SINK_PARSE_PROCESSES"] = "1"
    elif name == "audit MAC checked":  # the sink requires the workers' MAC (rows.forged)
        os.environ["BATON_AUDIT_CHAIN_KEY"] = BENCH_MAC_KEY
    elif name == "optimize on insert":  # ReplacingMergeTree folds each block's own copies
        import baton.sinks.audit_insert as audit_insert

        patch(audit_insert, "INSERT_SETTINGS", {})
    try:
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)
        os.environ.pop("BATON_SINK_PARSE_PROCESSES", None)
        os.environ.pop("BATON_AUDIT_CHAIN_KEY", None)


def _cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds of a process so far (Linux /proc), 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class SinkRun:
    """One timed sink run: records/s from its partitions' assignment and from its first record
    read (as the consume-only baseline is timed), and CPU seconds per record of the sink's
    process (its consumer, parser, writer and chDB's threads) and of the broker serving it."""

    rate: float
    rate_from_first: float
    sink_us: float
    broker_us: float
    rows: int
    #: of sink_us, the parse processes' share (sink_parse)
    parse_us: float = 0.0


def sink_rate(settings: Settings, n: int, to_store: int, broker_pid: int | None) -> SinkRun:
    """Records per second of ``run_sink`` reading ``n`` records of which it stores ``to_store``
    rows: from its assignment (and from its first record) to the commit of the last row."""
    stop = threading.Event()
    box: dict[str, Any] = {}

    def mark() -> tuple[float, float, float, float]:
        # the sink's CPU: its own process and its parse processes (sink_parse)
        helpers = getattr(box.get("sink"), "helper_pids", list)()
        helper_cpu = sum(_cpu_seconds(pid) for pid in helpers)
        return (
            time.perf_counter(),
            time.process_time() + helper_cpu,
            _cpu_seconds(broker_pid),
            helper_cpu,
        )

    def ready(sink: AuditSink, _server: object) -> None:
        box["sink"] = sink
        on_assign, committed, make_consumer = sink._on_assign, sink._committed, sink._make_consumer

        def timed_assign(consumer: Any, partitions: list[Any]) -> None:
            box.setdefault("assigned", mark())
            on_assign(consumer, partitions)

        def timed_commit(consumer: Any, batch: Any) -> None:
            # the end is the commit that completes the rows, not the next status report (the
            # loop reports at most every report_every_s, and may then sit in a 0.5 s consume)
            committed(consumer, batch)
            if sink.stats.rows + sink.stats.rejected >= to_store and "done" not in box:
                box["done"] = mark()
                stop.set()

        def first_record_consumer() -> Any:
            return _FirstRecord(make_consumer(), box)

        sink._on_assign = timed_assign  # type: ignore[method-assign]
        sink._committed = timed_commit  # type: ignore[method-assign]
        sink._make_consumer = first_record_consumer  # type: ignore[method-assign]

    def target() -> None:
        try:
            run_sink(settings, stop, sql_port=None, on_ready=ready)  # type: ignore[arg-type]
        except BaseException as exc:  # reported below
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(600)
    stop.set()
    t.join(60)
    if "error" in box:
        raise SystemExit(f"the sink failed: {box['error']!r}")
    stats: SinkStats = box["sink"].stats
    if "done" not in box or "assigned" not in box:
        raise SystemExit(f"the sink stored {stats.rows} of {to_store} rows in time")
    (t0, cpu0, broker0, helper0), (t1, cpu1, broker1, helper1) = box["assigned"], box["done"]
    first = box.get("first", t0)
    return SinkRun(
        n / (t1 - t0),
        n / (t1 - first),
        (cpu1 - cpu0) / n * 1e6,
        (broker1 - broker0) / n * 1e6,
        stats.rows,
        (helper1 - helper0) / n * 1e6,
    )


class _FirstRecord:
    """A consumer that notes when its first records arrive (``box["first"]``)."""

    def __init__(self, consumer: Any, box: dict[str, Any]) -> None:
        self._consumer, self._box = consumer, box

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        got = self._consumer.consume(num_messages=num_messages, timeout=timeout)
        if got and "first" not in self._box:
            self._box["first"] = time.perf_counter()
        return got  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def sink_rate_in_child(
    settings: Settings,
    n: int,
    to_store: int,
    broker_pid: int | None,
    variant: str,
    pythonpath: str | None,
) -> SinkRun:
    """``sink_rate`` in a fresh process (``pythonpath``: the Baton tree it imports), so this
    code and an older tree run alike, alternating in one run."""
    job = {
        "settings": {k: getattr(settings, k) for k in _CHILD_SETTINGS},
        "n": n,
        "to_store": to_store,
        "broker_pid": broker_pid,
        "variant": variant,
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [p for p in (pythonpath, str(Path(__file__).resolve().parents[1])) if p]
    )
    done = subprocess.run(
        [sys.executable, "-m", "bench.sink_bench", "--child", json.dumps(job)],
        check=True,
        capture_output=True,
        env=env,
        timeout=900,
    )
    return SinkRun(**json.loads(done.stdout.splitlines()[-1]))


#: the settings a bench sink run sets (the rest are defaults or BATON_* in both processes)
_CHILD_SETTINGS = (
    "bootstrap",
    "topic_prefix",
    "partitions",
    "clickhouse_dsn",
    "session_timeout_s",
    "sink_batch_size",
    "app_id",
)


def _child(job_text: str) -> None:
    job = json.loads(job_text)
    with _variant(job["variant"]):
        run = sink_rate(Settings(**job["settings"]), job["n"], job["to_store"], job["broker_pid"])
    print(json.dumps(run.__dict__))


def insert_routes(
    records: list[tuple[bytes, bytes]], batch_size: int, tmp: str
) -> list[tuple[str, float, float]]:
    """(route, us of CPU per row, us of wall time per row) of storing ``records`` in chDB
    batch by batch, in this process (no Kafka), best of three passes per route:

    * parse: the sink's parse and checks alone (``AuditBatch.add``), no insert;
    * native, table types: rows encoded by clickhouse-connect as the table's types;
    * native, plain types: LowCardinality columns sent as their plain type (the sink);
    * JSONEachRow as read: each record's bytes with the three audit columns spliced in, parsed
      by ClickHouse (no check in Python at all: what "do the per-row work in ClickHouse"
      costs ClickHouse before any check);
    * Arrow: the sink's rows as an Arrow table (pyarrow builds the columns in C).
    """
    from baton.sinks.audit_batch import DECISIONS_TABLE, AuditBatch
    from baton.sinks.audit_insert import insert_types
    from baton.sinks.clickhouse import connect
    from baton.sinks.rows import DECISION_COLUMNS
    from baton.sinks.schema import migrate

    client = connect(f"chdb://{Path(tmp) / 'routes'}", create=True)
    migrate(client, 365)
    exact = None  # clickhouse-connect's default: DESCRIBE, then the table's own types
    plain = insert_types(client, DECISIONS_TABLE, DECISION_COLUMNS)
    chunks = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]

    def batches() -> list[AuditBatch]:
        out = []
        for c, chunk in enumerate(chunks):
            b = AuditBatch("bench", 365)
            for i, (_, value) in enumerate(chunk):
                b.add(i % PARTITIONS, c * batch_size + i, value)
            out.append(b)
        return out

    ready = batches()
    tag = iter(range(10**9))

    def native(types: tuple[str, ...] | None) -> None:
        for b in ready:
            extra = {} if types is None else {"column_type_names": list(types)}
            client.insert(
                DECISIONS_TABLE,
                b.rows,
                column_names=list(DECISION_COLUMNS),
                settings={"insert_deduplication_token": f"r{next(tag)}"},
                **extra,
            )

    def json_each_row() -> None:
        for c, chunk in enumerate(chunks):
            body = b"\n".join(
                value[:-1]
                + b',"audit_topic":"bench","audit_partition":%d,"audit_offset":%d}'
                % (i % PARTITIONS, c * batch_size + i)
                for i, (_, value) in enumerate(chunk)
            )
            client.raw_insert(
                DECISIONS_TABLE,
                list(DECISION_COLUMNS),
                insert_block=body,
                fmt="JSONEachRow",
                settings={
                    "insert_deduplication_token": f"r{next(tag)}",
                    "date_time_input_format": "best_effort",
                    "input_format_skip_unknown_fields": 1,
                },
            )

    def arrow() -> None:
        import pyarrow as pa

        schema = _arrow_schema(client, pa)
        for b in ready:
            columns = list(zip(*b.rows, strict=True))
            table = pa.Table.from_arrays(
                [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)],
                schema=schema,
            )
            client.insert_arrow(
                DECISIONS_TABLE, table, settings={"insert_deduplication_token": f"r{next(tag)}"}
            )

    routes = [
        ("parse and check (AuditBatch.add)", batches),
        ("native insert, table types", lambda: native(exact)),
        ("native insert, plain types (the sink)", lambda: native(plain)),
        ("JSONEachRow as read, parsed by ClickHouse", json_each_row),
        ("Arrow table of the rows", arrow),
    ]
    out = []
    for name, route in routes:
        best = (float("inf"), float("inf"))
        for _ in range(3):
            c0, t0 = time.process_time(), time.perf_counter()
            route()
            c1, t1 = time.process_time(), time.perf_counter()
            best = min(best, (c1 - c0, t1 - t0))
        n = len(records)
        out.append((name, best[0] / n * 1e6, best[1] / n * 1e6))
    client.close()
    return out


#: the schema's objects that migration 0006 added (the forged-record trail)
_VARIANT_OBJECTS = ("decision_variants", "decision_variants_mv", "decision_conflicts")


def insert_schemas(
    records: list[tuple[bytes, bytes]], batch_size: int, tmp: str, rounds: int
) -> list[tuple[str, list[float], list[float]]]:
    """(schema, us of CPU per row per round, us of wall per row per round) of chDB storing
    ``records`` as the sink does (one Native block per batch, in this process, no Kafka):
    the audit without 0006's views (as at 04afa45) and with every view, each with
    ``optimize_on_insert`` on (ClickHouse's default) and off (the sink's, INSERT_SETTINGS),
    alternating for ``rounds`` rounds, each into fresh tables (a copy of the migrated schema
    in a database of its own). CPU is this process's: chDB's threads and the driver."""
    from baton.sinks.audit_batch import DECISIONS_TABLE, AuditBatch
    from baton.sinks.audit_insert import insert_types, native_block
    from baton.sinks.clickhouse import connect
    from baton.sinks.rows import DECISION_COLUMNS
    from baton.sinks.schema import DATABASE, migrate

    client = connect(f"chdb://{Path(tmp) / 'schemas'}", create=True)
    migrate(client, 365)
    types = insert_types(client, DECISIONS_TABLE, DECISION_COLUMNS)
    blocks = []
    for c in range(0, len(records), batch_size):
        b = AuditBatch("bench", 365)
        for i, (_, value) in enumerate(records[c : c + batch_size]):
            b.add(i % PARTITIONS, c + i, value)
        blocks.append((native_block(b.rows, DECISION_COLUMNS, types), len(b.rows)))
    ddl = client.query(
        "SELECT name, engine, create_table_query FROM system.tables WHERE database = {db:String} "
        "AND name != 'schema_migrations'",
        parameters={"db": DATABASE},
    ).result_rows
    order = {"MaterializedView": 1, "View": 2}
    ddl = sorted(ddl, key=lambda row: order.get(str(row[1]), 0))
    schemas = [
        ("0001-0005, no 0006 views, optimize_on_insert on", False, 1),
        ("0001-0005, no 0006 views, optimize_on_insert off", False, 0),
        ("every view, optimize_on_insert on", True, 1),
        ("every view, optimize_on_insert off (the sink)", True, 0),
    ]
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in schemas}
    wall: dict[str, list[float]] = {name: [] for name, _, _ in schemas}
    rows = sum(n for _, n in blocks)
    made = iter(range(10**6))
    for r in range(rounds):
        for name, variants, fold in schemas if r % 2 == 0 else schemas[::-1]:
            db = f"bench{next(made)}"
            client.command(f"CREATE DATABASE {db}")
            for table, _, query in ddl:
                if variants or str(table) not in _VARIANT_OBJECTS:
                    client.command(str(query).replace(f"{DATABASE}.", f"{db}."))
            c0, t0 = time.process_time(), time.perf_counter()
            for k, (block, _) in enumerate(blocks):
                client.raw_insert(
                    f"{db}.decisions",
                    list(DECISION_COLUMNS),
                    insert_block=block,
                    fmt="Native",
                    settings={"insert_deduplication_token": f"s{k}", "optimize_on_insert": fold},
                )
            c1, t1 = time.process_time(), time.perf_counter()
            cpu[name].append((c1 - c0) / rows * 1e6)
            wall[name].append((t1 - t0) / rows * 1e6)
            client.command(f"DROP DATABASE {db}")
    client.close()
    return [(name, cpu[name], wall[name]) for name, _, _ in schemas]


def _print_schemas(
    n: int, batch_size: int, rounds: int, found: list[tuple[str, list[float], list[float]]]
) -> None:
    import statistics

    print(f"\n{_machine()}")
    print(
        f"{n:,} worker decisions as the sink's Native blocks of {batch_size:,}, chDB in this "
        f"process, {rounds} alternating rounds (median, min)\n"
    )
    print(f"| {'schema, insert setting':<50} | {'us CPU/row':>15} | {'us wall/row':>15} |")
    print(f"|{'-' * 52}|{'-' * 17}|{'-' * 17}|")
    for name, cpu, wall in found:
        c = f"{statistics.median(cpu):.2f}, {min(cpu):.2f}"
        w = f"{statistics.median(wall):.2f}, {min(wall):.2f}"
        print(f"| {name:<50} | {c:>15} | {w:>15} |")


def _arrow_schema(client: Any, pa: Any) -> Any:
    """The Arrow schema of the sink's rows, from the table's column types."""
    from baton.sinks.rows import DECISION_COLUMNS

    types = dict(
        client.query(
            "SELECT name, type FROM system.columns WHERE database = 'governance' "
            "AND table = 'decisions'"
        ).result_rows
    )
    scalar = {
        "String": pa.string(),
        "UInt16": pa.uint16(),
        "UInt32": pa.uint32(),
        "UInt64": pa.uint64(),
        "Int32": pa.int32(),
        "Int64": pa.int64(),
    }

    def arrow_type(kind: str) -> Any:
        for wrapper in ("LowCardinality(", "Nullable("):
            if kind.startswith(wrapper):
                kind = kind[len(wrapper) : -1]
        if kind.startswith("DateTime64"):
            return pa.timestamp("us", tz="UTC")
        if kind.startswith("Decimal"):
            return pa.decimal128(18, 6)
        return scalar[kind]

    return pa.schema([(c, arrow_type(types[c])) for c in DECISION_COLUMNS])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--decisions", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=Settings().sink_batch_size)
    ap.add_argument(
        "--variants",
        choices=("shipped", "pipeline", "processes", "insert", "mac", "all"),
        default="shipped",
        help="mac: every record carries the workers' audit MAC (as under `baton up`), read by "
        "the sink as shipped and by one that checks it (BATON_AUDIT_CHAIN_KEY), alternating",
    )
    ap.add_argument(
        "--rounds", type=int, default=1, help="run the variants this many times, alternating"
    )
    ap.add_argument(
        "--routes", action="store_true", help="compare insert routes in-process (no Kafka)"
    )
    ap.add_argument(
        "--schemas",
        action="store_true",
        help="chDB's insert alone, in-process: without and with 0006's views, "
        "optimize_on_insert on and off (--rounds alternating)",
    )
    ap.add_argument(
        "--against",
        metavar="DIR",
        action="append",
        help="also run the sink of an older tree (DIR/baton -> its tree), alternating; "
        "repeat for several trees (each labelled by its folder's name)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child)
        return
    records = worker_decisions(args.decisions)
    if args.variants == "mac":  # as a worker with a seal key publishes them
        mark = RecordMac(BENCH_MAC_KEY.encode()).marked
        records = [(key, mark(value)) for key, value in records]
    n = len(records)
    # re-emitted copies (a redelivered request answered again) are read but not stored
    to_store = sum(1 for _, v in records if b'"reemitted":true' not in v)
    size = sum(len(v) for _, v in records) / n
    with_input = sum(1 for _, v in records if b'"input":"' in v) / n
    if args.schemas:
        rounds = max(args.rounds, 3)
        with tempfile.TemporaryDirectory() as tmp:
            found = insert_schemas(records, args.batch_size, tmp, rounds)
        _print_schemas(n, args.batch_size, rounds, found)
        return
    if args.routes:
        with tempfile.TemporaryDirectory() as tmp:
            routes = insert_routes(records, args.batch_size, tmp)
        _print_routes(n, size, with_input, args.batch_size, routes)
        return
    variants = ["as shipped"]
    if args.variants == "pipeline":
        variants += ["full batches"]
    elif args.variants == "processes":
        variants += ["one process", "one parse process"]
    elif args.variants == "insert":
        variants += ["optimize on insert"]
    elif args.variants == "mac":
        variants += ["audit MAC checked"]
    elif args.variants == "all":
        variants += [
            "one process",
            "full batches",
            "no shortcut",
            "serial",
            "table types",
            "optimize on insert",
        ]
    # (label, variant, the tree it imports: None = this one)
    trees: list[tuple[str, str | None]] = [("", None)]
    for tree in args.against or []:
        label = " (before)" if len(args.against) == 1 else f" ({Path(tree).name})"
        trees.append((label, tree))
    # (an older tree has optimize_on_insert on as shipped: that variant is this tree's only)
    runs = [
        (name + label, name, tree)
        for label, tree in trees
        for name in variants
        if tree is None or name != "optimize on insert"
    ]
    runs *= max(1, args.rounds)
    results: list[tuple[str, SinkRun]] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=tmp) as broker:
        prefix = f"sb{uuid.uuid4().hex[:6]}."
        catalog = TopicCatalog(prefix=prefix, partitions=PARTITIONS, replication=1)
        ensure_topics({"bootstrap.servers": broker.bootstrap}, catalog, timeout=10)
        p = Producer(
            {
                "bootstrap.servers": broker.bootstrap,
                "partitioner": "murmur2_random",
                "linger.ms": 20,
                "queue.buffering.max.messages": 1_000_000,
            }
        )
        for key, value in records:
            p.produce(catalog.decisions, value, key)
            p.poll(0)
        assert p.flush(60) == 0
        base = consume_only(broker.bootstrap, catalog.decisions, n)
        for i, (name, variant, tree) in enumerate(runs):
            settings = Settings(
                bootstrap=broker.bootstrap,
                topic_prefix=prefix,
                partitions=PARTITIONS,
                clickhouse_dsn=f"chdb://{Path(tmp) / f'chdb{i}'}",
                session_timeout_s=6,
                sink_batch_size=args.batch_size,
                app_id=f"bench{i}",
            )
            # each sink in a fresh process: one after another in this process, the later
            # runs found the parse's caches (times, amounts, shapes) warm with these very
            # records and the first paid the process's first-use costs
            run = sink_rate_in_child(settings, n, to_store, broker.pid, variant, tree)
            results.append((name, run))
            print(
                f"{name}: {run.rate:,.0f} rows/s, {run.sink_us:.1f} us CPU/row, "
                f"load {os.getloadavg()[0]:.1f}",
                file=sys.stderr,
            )
    _print_table(n, size, with_input, args.batch_size, base, results)


def _machine() -> str:
    return (
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"load {os.getloadavg()[0]:.1f}"
    )


def _print_routes(
    n: int, size: float, with_input: float, batch_size: int, routes: list[tuple[str, float, float]]
) -> None:
    print(f"\n{_machine()}")
    print(
        f"{n:,} worker decisions ({size:,.0f} bytes on average, {with_input:.0%} with their "
        f"input), batches of {batch_size:,}, one chDB engine with every view, best of 3\n"
    )
    print(f"| {'route':<44} | {'us CPU/row':>10} | {'us wall/row':>11} |")
    print(f"|{'-' * 46}|{'-' * 12}|{'-' * 13}|")
    for name, cpu, wall in routes:
        print(f"| {name:<44} | {cpu:>10.1f} | {wall:>11.1f} |")


def _print_table(
    n: int,
    size: float,
    with_input: float,
    batch_size: int,
    base: float,
    results: list[tuple[str, SinkRun]],
) -> None:
    print(f"\n{_machine()}")
    print(
        f"{n:,} worker decisions ({size:,.0f} bytes on average, {with_input:.0%} with their "
        f"input), {PARTITIONS} partitions, batches of {batch_size:,}, chDB with every view\n"
    )
    print(
        f"| {'variant':<44} | {'rows/s':>9} | {'from 1st record':>15} | {'sink CPU us/row':>15} "
        f"| {'of which parse processes':>24} | {'broker CPU us/row':>17} |"
    )
    print(f"|{'-' * 46}|{'-' * 11}|{'-' * 17}|{'-' * 17}|{'-' * 26}|{'-' * 19}|")
    print(
        f"| {'confluent-kafka consume only (baseline)':<44} | {'':>9} | {base:>15,.0f} | "
        f"{'':>15} | {'':>24} | {'':>17} |"
    )
    for name, run in results:
        print(
            f"| {'baton sink, ' + name:<44} | {run.rate:>9,.0f} | {run.rate_from_first:>15,.0f} "
            f"| {run.sink_us:>15.1f} | {run.parse_us:>24.1f} | {run.broker_us:>17.1f} |"
        )


if __name__ == "__main__":
    main()
