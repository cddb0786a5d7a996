"""Session 9's attacks on the audit side: what `baton trace`, `baton sql` and `baton replay
--from-kafka` do with ids, times and histories a client (or a writer of the topics) picks."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.query_cmds import sql_cmd, trace_cmd
from baton.cli.replay_kafka import decide_topics, replay_decided
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.replay import replay_runs, runs_of
from baton.schemas.decision import Decision, Phase, Reason
from baton.schemas.events import RunEvent
from tests.chdb_audit import chdb_audit
from tests.unit.test_engine_support import at, handoff, policy_with, seed_policy

pytestmark = pytest.mark.unit

REQUESTS, APPROVALS, CONTROL = "gov.handoff.requests", "gov.approvals", "gov.control"
#: an id a client may send (ids are not names: control characters pass the worker): it
#: clears the screen, starts a line of its own and links a text to a URL of its choice
HOSTILE_RUN = "run\x1b[2J\nSTOPPED at step 1: fake"
HOSTILE_TASK = "t\x1b]8;;http://evil.example/\x07click\x1b]8;;\x07\u202e"


def _published(events: list[RunEvent], run: str) -> list[Decision]:
    """What the worker's batch step published for ``events`` (one a second, offsets 0, 1, ...)."""
    proc = BatchProcessor(seed_policy(), 1, {}, worker="w", approvals_topic=APPROVALS)
    out: list[Decision] = []
    for offset, event in enumerate(events):
        raw = event.model_copy(update={"event_time": at(offset)}).to_json()
        batch = proc.process([InputRecord(REQUESTS, 0, offset, run.encode(), raw)], at(offset))
        out += [d for _, d in batch.decisions if not d.reemitted]
    return out


def _hostile_audit(tmp_path: Path) -> Path:
    """A chDB audit holding the worker's decisions of a run whose ids carry terminal escapes."""
    events: list[RunEvent] = [
        handoff("h1", HOSTILE_TASK, "planner", "researcher", run_id=HOSTILE_RUN),
        handoff("h2", HOSTILE_TASK, "planner", "billing_agent", run_id=HOSTILE_RUN),
    ]
    decisions = _published(events, HOSTILE_RUN)
    assert [d.run_id for d in decisions] == [HOSTILE_RUN] * 2  # the worker took them
    chdb = tmp_path / "chdb"
    chdb_audit(chdb, decisions).close()
    return chdb


def _no_terminal_control(text: str) -> bool:
    """Whether every line of ``text`` holds only printable characters."""
    return all(line.isprintable() for line in text.splitlines())


def test_baton_trace_shows_a_clients_ids_escaped_never_as_terminal_controls(
    tmp_path: Path,
) -> None:
    """A run id or task id holding ESC, a newline or a bidi override (a client sends them;
    the worker takes any id) reached the terminal raw in `baton trace`: its heading and
    table cleared the screen, forged a "STOPPED" line and hid a link. Now every value from
    the audit is shown escaped, as `baton replay`, `baton audit verify`, `baton tail`,
    `baton approvals` and the alerter show them."""
    chdb = _hostile_audit(tmp_path)
    result = CliRunner().invoke(trace_cmd, [HOSTILE_RUN, "--dsn", f"chdb://{chdb}"])
    assert result.exit_code == 0, result.output
    assert _no_terminal_control(result.output), repr(result.output[:600])
    assert "\\x1b[2J\\nSTOPPED at step 1: fake" in result.output
    assert "\\x1b]8;;http://evil.example/\\x07click" in result.output
    stories = [line for line in result.output.splitlines() if line.startswith("STOPPED at")]
    assert len(stories) <= 1, stories  # the run's own story line, never a forged one


def test_baton_trace_of_a_run_it_cannot_find_shows_similar_ids_escaped(tmp_path: Path) -> None:
    """The "similar run ids" hint of a run id not in the audit quotes other runs' ids."""
    chdb = _hostile_audit(tmp_path)
    result = CliRunner().invoke(trace_cmd, ["run", "--dsn", f"chdb://{chdb}"])
    message = str(result.exception)  # a BatonError: the CLI's main prints it as one line
    assert "similar run ids" in message, message
    assert _no_terminal_control(message), repr(message[:600])


def test_baton_sql_tables_show_a_clients_ids_escaped(tmp_path: Path) -> None:
    """`baton sql`'s aligned table (and `baton alerts check`'s, the same renderer) printed a
    cell's ESC and newline raw: one run id repainted the screen and broke the table's rows.
    CSV and JSON stay the stored text (CSV quotes, JSON escapes)."""
    chdb = _hostile_audit(tmp_path)
    query = "SELECT run_id, task_id FROM governance.decisions FINAL ORDER BY decided_at"
    result = CliRunner().invoke(sql_cmd, [query, "--dsn", f"chdb://{chdb}"])
    assert result.exit_code == 0, result.output
    assert _no_terminal_control(result.output), repr(result.output[:600])
    assert result.output.rstrip().endswith("(2 rows)")
    assert len(result.output.strip().splitlines()) == 2 + 2 + 1  # header, rule, rows, count
    csv = CliRunner().invoke(sql_cmd, [query, "-f", "csv", "--dsn", f"chdb://{chdb}"])
    assert csv.exit_code == 0 and csv.output.count('"run') == 2, csv.output  # quoted as it is


def _ms(seconds: float) -> int:
    return int(at(seconds).timestamp() * 1000)


def _request(
    run: str, n: int, timestamp_ms: int, offset: int | None = None
) -> tuple[int, str, InputRecord]:
    event = handoff(f"{run}-h{n}", f"t{n}", "planner", "researcher", run_id=run)
    rec = InputRecord(REQUESTS, 0, n if offset is None else offset, run.encode(), event.to_json())
    return timestamp_ms, REQUESTS, rec


def test_a_record_timestamp_past_datetimes_range_makes_its_run_broken_not_a_crash() -> None:
    """Kafka takes any int64 as a record's timestamp (a producer sets it: librdkafka's
    `timestamp=`); `baton replay --from-kafka` decided each record at its timestamp and
    ended with a traceback (``ValueError: year 33658 is out of range``) on one record of
    10**15 ms, replaying nothing. When it was decided cannot be known: its run is partial
    and broken (never judged, never "no change": exit 7), the other runs are replayed."""
    hostile = [_request("rx", n, 10**15, offset=3 + n) for n in range(2)]
    records = [*(_request("ra", n, _ms(n)) for n in range(3)), *hostile]
    decided = decide_topics(records, policy_with(max_handoffs=20), 1, APPROVALS, CONTROL)
    report = replay_decided(decided, policy_with(max_handoffs=2))
    assert [r.run_id for r in report.changed_runs] == ["ra"]
    assert report.broken == ["rx"] and "rx" in report.partial and not report.unfaithful_runs


def test_a_control_record_timestamp_past_datetimes_range_is_no_crash() -> None:
    """A kill switch stamped 10**15 ms must not end the replay. Its stamp tells nothing of
    when it was read: it holds from its signing time (0 s), and a handoff at that same
    millisecond is stopped (a control record first at an equal time: fail closed)."""
    from baton.schemas.events import KillSwitch

    kill = KillSwitch(scope="run", run_id="ra", operator="ops", event_time=at(0))
    control = (10**15, CONTROL, InputRecord(CONTROL, 0, 0, None, kill.to_json()))
    records = [_request("ra", 0, _ms(0)), control]
    rows, _, _ = decide_topics(records, policy_with(max_handoffs=20), 1, APPROVALS, CONTROL)
    assert [(r.run_id, r.reason) for r in rows] == [("ra", "killed")]


def test_a_run_begun_before_the_range_is_partial_though_its_first_record_in_it_is_a_request() -> (
    None
):
    """`--from-kafka --since T` took a run whose first record in the range was a handoff
    request for a run that began there: a run with three handoffs before T and three after
    was replayed from zero, so `max_handoffs: 4` (which stops its fifth) showed no change,
    and the report did not call it partial: a policy gate passed on what it never checked.
    The runs with a record before T are now partial (``started_before``)."""
    before = [_request("ra", n, _ms(n)) for n in range(3)]
    in_range = [_request("ra", n, _ms(n)) for n in range(3, 6)]
    rows, policies, _ = decide_topics(
        in_range,
        policy_with(max_handoffs=20),
        1,
        APPROVALS,
        CONTROL,
        started_before={(rec.key or b"").decode() for _, _, rec in before},
    )
    report = replay_runs(runs_of(rows), policy_with(max_handoffs=4), policies, judge=False)
    assert "ra" in report.partial and not report.changed_runs
    # cut by the range, not "broken": each of its rows named the link before the range, a
    # fork, and the report blamed rows inserted into an audit there is none of (exit 7)
    assert "ra" not in report.broken, report.partial["ra"]


def test_a_run_whose_first_record_only_names_a_request_is_decided_as_what_it_is() -> None:
    """A run's first record in the range was taken as its start when its bytes held
    ``"handoff_requested"`` anywhere: a completion whose task id is that text began a run
    in the replay. Its type is read now; since session 19 a completion read first begins
    its run too (the worker decided it from an empty state), decided as a completion."""
    from tests.unit.test_engine_support import completed

    done = completed("c1", "handoff_requested", "researcher", run_id="rc")
    record = (_ms(0), REQUESTS, InputRecord(REQUESTS, 0, 0, b"rc", done.to_json()))
    baseline = policy_with(max_handoffs=20)
    rows, policies, _ = decide_topics([record], baseline, 1, APPROVALS, CONTROL)
    worker = BatchProcessor(baseline, 1, {}, "w", approvals_topic=APPROVALS)
    said = worker.process([record[2]], at(0)).decisions
    assert len(said) == 1  # recorded: within_budget (a completion of an unknown run)
    assert [(r.outcome, r.reason) for r in rows] == [
        (f"{d.outcome}", f"{d.reason}") for _, d in said
    ]
    report = replay_runs(runs_of(rows), policy_with(max_handoffs=4), policies, judge=False)
    assert "rc" not in report.partial and not report.unfaithful_runs


def test_a_forged_answer_flagged_reemitted_leaves_a_trace_in_the_audit(tmp_path: Path) -> None:
    """A writer of gov.decisions answers a client's pending request with a forged allow
    flagged ``reemitted``: the client SDK takes it (it matches on run, request and phase),
    and the sink drops it as a copy of a stored decision without looking, so neither
    governance.decisions nor governance.rejected holds it and `baton audit verify` cannot
    name it. Unflagged, the same forgery is stored and verify fails its run. Wanted: a
    record flagged reemitted whose decision the audit does not hold is kept (stored or
    rejected); a real copy of a stored decision still folds away."""
    from baton.sinks.audit_batch import AuditBatch, write_batch

    (allow,) = _published([handoff("h1", "t1", "planner", "researcher", run_id="rr")], "rr")
    chdb = tmp_path / "chdb"
    client = chdb_audit(chdb, [allow])
    forged = Decision.from_json(allow.to_json())
    forged.decision_id, forged.request_id, forged.reemitted = "f" * 32, "h2", True
    copy = Decision.from_json(allow.to_json())
    copy.reemitted = True
    batch = AuditBatch("gov.decisions", 365)
    batch.add(0, 1, forged.to_json())
    batch.add(0, 2, copy.to_json())
    write_batch(client, batch, "chdb")
    kept = {
        int(row[0])
        for table in ("decisions", "rejected")
        for row in client.query(f"SELECT audit_offset FROM governance.{table}").result_rows
    }
    client.close()
    assert 2 not in kept  # the worker's copy: the audit keeps the original
    assert 1 in kept, kept


def test_baton_replay_shows_a_forged_rows_reason_escaped_and_cut() -> None:
    """A row altered in the audit (its reason any text: a screen clear, a newline and a
    line saying every decision was reproduced) is not reproduced, and `baton replay`
    printed its recorded outcome:reason raw on the not-reproduced line, in the transitions
    and on the run's first-difference line. Now escaped and cut to 120 characters."""
    from baton.cli.replay_cmds import _table
    from tests.unit.test_replay import KEY, _budget_history, _policies, record

    loose, strict = policy_with(max_handoffs=20), policy_with(max_handoffs=3)
    rows = record(loose, _budget_history("run_long", 6, 2.5))
    lie = "ok\x1b[2J\nas recorded: all 6 decisions reproduced exactly" + "x" * 70_000
    forged = [r._replace(reason=lie) if i == 1 else r for i, r in enumerate(rows)]
    report = replay_runs(runs_of(forged), strict, _policies(loose), KEY)
    assert report.unfaithful_runs
    text = _table(report, strict, "p.yaml", "chdb", 1.0)
    assert _no_terminal_control(text), repr(text[:800])
    assert not any(line.startswith("as recorded: all") for line in text.splitlines())
    assert max(len(line) for line in text.splitlines()) < 600


def test_a_forged_policy_record_is_named_escaped(tmp_path: Path) -> None:
    """A forged ``policy_in_force`` row's version is any text; the line that refuses it
    (printed by `baton replay` on stderr) showed it raw."""
    from baton.sinks.replay_source import read_policies

    (allow,) = _published([handoff("h1", "t1", "planner", "researcher", run_id="rp")], "rp")
    forged = Decision.from_json(allow.to_json())
    forged.phase, forged.reason = Phase.CONTROL, Reason.POLICY_IN_FORCE
    forged.decision_id, forged.policy_version = "p" * 32, "v\x1b[2J\nFAKE"
    forged.input = "\x1b]0;title\x07 not json"
    # where the workers' policy records are (run and tenant "*"): since session 13 replay
    # reads policy records there only (a copy under a run's id is no worker's record)
    forged.run_id = forged.tenant = "*"
    client = chdb_audit(tmp_path / "chdb", [forged])
    policies, refused = read_policies(client)
    client.close()
    assert not policies and len(refused) == 1
    assert _no_terminal_control(refused[0]), repr(refused[0])


def test_copies_parsed_in_a_parse_process_are_looked_up_after_their_original_is_stored(
    tmp_path: Path,
) -> None:
    """The sink's default path: a parse process parses the batch (original, the worker's
    copy of it, a forged copy naming no decision) and the batch stores the original first,
    then looks the copies up: the real one folds away, the forged one is `not_a_copy`; its
    offset is committed with the rest."""
    from baton.sinks.audit_batch import DECISIONS_TABLE, AuditBatch, write_batch
    from baton.sinks.audit_insert import insert_types
    from baton.sinks.rows import DECISION_COLUMNS
    from baton.sinks.sink_parse import ParseProcesses

    (allow,) = _published([handoff("h1", "t1", "planner", "researcher", run_id="rr")], "rr")
    copy = Decision.from_json(allow.to_json())
    copy.reemitted = True
    forged = Decision.from_json(copy.to_json())
    forged.decision_id, forged.request_id = "f" * 32, "h2"
    client = chdb_audit(tmp_path / "chdb", [])
    types = insert_types(client, DECISIONS_TABLE, DECISION_COLUMNS)
    parsers = ParseProcesses(1, "gov.decisions")
    parsers.start()
    try:
        batch = AuditBatch("gov.decisions", 365)
        for offset, d in enumerate([allow, copy, forged]):
            batch.defer(0, offset, d.to_json())
        batch.send(parsers, types)
        write_batch(client, batch, "chdb", {DECISIONS_TABLE: types})
    finally:
        parsers.close()
    stored = client.query("SELECT audit_offset FROM governance.decisions").result_rows
    rejected = client.query("SELECT audit_offset, error_kind FROM governance.rejected")
    client.close()
    assert [int(r[0]) for r in stored] == [0] and batch.encoded_rows == 1  # parsed there
    assert [(int(o), kind) for o, kind in rejected.result_rows] == [(2, "not_a_copy")]
    assert batch.commit_offsets() == {0: 3}


def test_a_flood_of_copies_with_huge_ids_never_holds_the_sink(tmp_path: Path) -> None:
    """Copies naming 200 KB ids (no worker writes one) would make a lookup ClickHouse
    refuses or an HTTP URL no server takes: the batch would be retried for ever. They are
    rejected without a lookup; 3,000 copies of long non-ASCII ids go in several lookups."""
    from baton.sinks.audit_batch import AuditBatch, write_batch

    (allow,) = _published([handoff("h1", "t1", "planner", "researcher", run_id="rr")], "rr")
    client = chdb_audit(tmp_path / "chdb", [allow])
    batch = AuditBatch("gov.decisions", 365)
    for offset in range(3_000):
        copy = Decision.from_json(allow.to_json())
        copy.reemitted = True
        copy.decision_id = ("é" * 250) + str(offset)
        if offset % 1_000 == 0:
            copy.run_id = "r" * 200_000
        batch.add(0, offset, copy.to_json())
    write_batch(client, batch, "chdb")
    kinds = client.query("SELECT error_kind, count() FROM governance.rejected GROUP BY 1")
    client.close()
    assert kinds.result_rows == [("not_a_copy", 3_000)]


def test_json_output_escapes_what_a_terminal_obeys_and_reads_back_the_same(
    tmp_path: Path,
) -> None:
    """`baton trace -f json` and `baton sql -f json`: orjson escapes C0 controls only, so a
    task id's bidi override (and DEL, C1 controls) reached the terminal raw; `baton tail`
    escapes them. Now written as \\u escapes: each line still parses to the stored text."""
    import orjson

    chdb = _hostile_audit(tmp_path)
    result = CliRunner().invoke(trace_cmd, [HOSTILE_RUN, "-f", "json", "--dsn", f"chdb://{chdb}"])
    assert result.exit_code == 0, result.output
    assert _no_terminal_control(result.output), repr(result.output[:600])
    lines = result.output.splitlines()
    assert [orjson.loads(line)["task_id"] for line in lines] == [HOSTILE_TASK] * 2


@pytest.fixture
def endpoint(tmp_path: Path):  # type: ignore[no-untyped-def]
    """`baton up`'s read-only SQL endpoint over a chDB audit holding one worker decision."""
    from baton.sinks.sqlserver import serve_sql

    (allow,) = _published([handoff("h1", "t1", "planner", "researcher", run_id="re")], "re")
    client = chdb_audit(tmp_path / "chdb", [allow])
    server = serve_sql(client, port=0)
    try:
        yield server, allow
    finally:
        server.close()
        client.close()


def test_replay_since_asks_the_endpoint_about_many_links_and_a_forged_long_one(
    endpoint,  # type: ignore[no-untyped-def]
) -> None:
    """`baton replay` through a running `baton up` asks the audit about run lists (``held_links``
    until session 19 read every run whole; ``altered_starts``). clickhouse-connect sends bound
    parameters past 4 KB as multipart/form-data, which the endpoint refused (code 48): 60 such
    runs, or one forged row whose link is 40 KB, failed the whole replay. The endpoint now
    reads a form's query and param_* fields."""
    from datetime import UTC, datetime

    from baton.sinks.audit_conflicts import chunked_rows
    from baton.sinks.clickhouse import connect

    sql = (  # (held_links' query: each run whose first link the audit holds)
        "SELECT DISTINCT run_id FROM governance.decisions "
        "WHERE has({values:Array(Tuple(String, String))}, (run_id, chain_hash))"
    )

    server, allow = endpoint
    http = connect(server.dsn)
    now = datetime.now(UTC)
    links = {f"run_{i:06d}": (now, f"{i:032x}") for i in range(1_000)}
    links["re"] = (now, allow.chain_hash or "")
    links["forged"] = (now, "x" * 70_000)
    try:
        pairs = [(run_id, link) for run_id, (_, link) in links.items()]
        assert {str(row[0]) for row in chunked_rows(http, sql, pairs)} == {"re"}
    finally:
        http.close()


def _post_form(server, parts: list[tuple[str, str | None, bytes]]) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    """POST a multipart/form-data body of (name, filename, value) parts to the endpoint."""
    import base64
    import urllib.error
    import urllib.parse
    import urllib.request

    boundary = "b0undary"
    body = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    url = urllib.parse.urlsplit(server.dsn)
    request = urllib.request.Request(
        f"http://{url.hostname}:{url.port}/",
        data=body,
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Authorization": "Basic "
            + base64.b64encode(f"{url.username}:{url.password}".encode()).decode(),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_form_takes_a_query_and_bound_parameters_and_nothing_else(
    endpoint,  # type: ignore[no-untyped-def]
) -> None:
    """The form path is no way around the guard: its query is checked as a body's is
    (a write is refused), and a file part (external data), a setting (readonly=0), a field
    twice or a form without a query are refused."""
    server, _ = endpoint
    ok = _post_form(
        server,
        [
            ("query", None, b"SELECT count() FROM governance.decisions WHERE run_id = {r:String}"),
            ("param_r", None, b"re"),
        ],
    )
    assert ok == (200, b"1\n"), ok
    write = _post_form(server, [("query", None, b"DROP TABLE governance.decisions")])
    assert write[0] == 403 and b"readonly" in write[1], write
    outfile = _post_form(server, [("query", None, b"SELECT 1 INTO OUTFILE '/tmp/x'")])
    assert outfile[0] == 403, outfile
    for parts in (
        [("query", None, b"SELECT 1"), ("data", "data.csv", b"1,2")],
        [("query", None, b"SELECT 1"), ("readonly", None, b"0")],
        [("query", None, b"SELECT 1"), ("query", None, b"SELECT 2")],
        [("param_r", None, b"re")],
    ):
        refused = _post_form(server, parts)
        assert refused[0] != 200 and b"Code: 48" in refused[1], (parts, refused)
    assert (
        _post_form(server, [("query", None, b"SELECT count() FROM governance.decisions")])[0] == 200
    )


def test_a_form_that_does_not_parse_is_refused_by_name() -> None:
    """No boundary, garbage, nested parts: FormRefused (the endpoint answers code 48)."""
    from baton.sinks.sql_body import FormRefused, form_query

    for body, content_type in (
        (b"garbage", "multipart/form-data"),
        (b"--x\r\n\r\nno disposition\r\n--x--\r\n", "multipart/form-data; boundary=x"),
        (b"\xff\xfe" * 1000, "multipart/form-data; boundary=\xff"),
    ):
        with pytest.raises(FormRefused):
            form_query(body, content_type, 100)
