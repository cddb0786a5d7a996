"""Session 11's first hour: every command pointed at an address nothing answers on names that
address in one line, exits non-zero within a bounded time and never prints a traceback or a
library's retry log; the SDK says what librdkafka saw; the options left unbounded are bounded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from baton.cli.main import _register, cli

pytestmark = pytest.mark.unit

BATON = [sys.executable, "-m", "baton.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    return {**env, "NO_COLOR": "1", "BATON_CONNECT_TIMEOUT_S": "1", **extra}


def _closed_port() -> int:
    """A port nothing listens on (bound, then released: a connect is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _baton(*args: str, timeout: float = 60, cwd: str | None = None) -> tuple[int, str, str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [*BATON, *args], env=_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started


def _commands(group: click.Group, path: str = "baton") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield f"{path} {name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path} {name}")


# ------------------------------------------------------------------ 4: every number bounded


def test_doctor_max_lag_refuses_a_number_past_its_bound() -> None:
    _register()
    [param] = [p for p in cli.commands["doctor"].params if "--max-lag" in p.opts]
    for bad in ("99999999999999999999", "1000000000001", "-1", "nan"):
        with pytest.raises(click.BadParameter):
            param.type.convert(bad, param, None)
    assert param.type.convert("1000000000000", param, None) == 10**12


def test_every_numeric_option_of_every_command_has_an_upper_bound() -> None:
    """Session 10 bounded every numeric option but doctor's --max-lag; a new one must be too."""
    _register()
    unbounded = [
        f"{path} {'/'.join(param.opts)}"
        for path, command in _commands(cli)
        for param in command.params
        if (isinstance(param.type, (click.IntRange, click.FloatRange)) and param.type.max is None)
        or param.type in (click.INT, click.FLOAT)
    ]
    assert unbounded == []


# ------------------------------------------------------------------ 1: ClickHouse not there


def test_doctor_against_a_closed_clickhouse_port_prints_no_retry_log_and_no_sql_tick() -> None:
    # clickhouse-connect sets the "urllib3" logger back to WARNING when it is imported, after
    # the CLI quietened it: urllib3's "Retrying (Retry(total=0 ...)) after connection broken"
    # line came first on stderr; and the SQL endpoint line said ✔ "serves SQL" of a server
    # the line above had just failed to reach
    dsn = f"http://127.0.0.1:{_closed_port()}"
    code, out, err, took = _baton(
        "doctor", "--bootstrap", f"127.0.0.1:{_closed_port()}", "--dsn", dsn, "--timeout", "2"
    )
    assert code == 1, (out, err)
    assert err == "", err
    assert "urllib3" not in out
    lines = {line.split(":", 1)[0]: line for line in out.splitlines()}
    assert lines["✘ clickhouse"].startswith(f"✘ clickhouse: cannot reach ClickHouse at {dsn}")
    assert lines["✘ sql endpoint"].startswith(f"✘ sql endpoint: the ClickHouse server {dsn} ")
    assert took < 30


def test_replay_against_a_closed_clickhouse_port_is_one_line() -> None:
    dsn = f"http://127.0.0.1:{_closed_port()}"
    code, out, err, _took = _baton("replay", "--policy", _policy(), "--dsn", dsn)
    assert code == 5, (out, err)
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith(f"baton: error: cannot reach ClickHouse at {dsn}")


def _policy() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2] / "policy.example.yaml")


# ------------------------------------------------------------------ 1: a broker not there


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that takes connections (the kernel's backlog) and never says a word: a TCP
    check passes, librdkafka's first request goes unanswered (a wrong port, a hung host)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield int(server.getsockname()[1])


@pytest.mark.parametrize(
    "command",
    [
        ("policy", "current"),
        ("replay", "--policy", "POLICY", "--from-kafka"),
        ("tail", "decisions"),
    ],
)
@pytest.mark.parametrize("kind", ["closed", "silent"])
def test_a_kafka_command_against_a_dead_or_silent_port_is_one_line_naming_it(
    command: tuple[str, ...], kind: str, silent_port: int
) -> None:
    # both raised librdkafka's KafkaException (_TRANSPORT) out of list_topics: a traceback,
    # and exit 1, which `baton replay` uses to say "the policy changes decisions"
    port = _closed_port() if kind == "closed" else silent_port
    args = [_policy() if a == "POLICY" else a for a in command]
    code, out, err, took = _baton(*args, "--bootstrap", f"127.0.0.1:{port}")
    assert code == 4, (out, err)
    assert "Traceback" not in err and "KafkaError{" not in err
    [line] = err.splitlines()
    assert line.startswith("baton: error: cannot "), line
    assert f"Kafka at 127.0.0.1:{port}" in line
    assert took < 20


# ------------------------------------------------------------------ 1: the SDK, a broker not there


def test_the_sdk_names_a_refused_broker_with_what_librdkafka_saw() -> None:
    # it said only "cannot reach Kafka at ... (timed out after 10 s)"; it still waits its
    # connect timeout (a broker that is starting refuses connections for a few seconds)
    from baton.schemas.errors import BrokerUnavailable
    from baton.streams.sdk import GovernanceClient

    address = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as raised:
        GovernanceClient(address, connect_timeout=1).connect()
    took = time.monotonic() - started
    text = str(raised.value)
    assert text.startswith(f"cannot reach Kafka at {address} within 1 s ({address}/"), text
    assert "Connection refused" in text and "is this its address (BATON_BOOTSTRAP)?" in text
    assert 0.9 < took < 5, took


def test_the_sdk_names_a_host_name_that_does_not_resolve() -> None:
    from baton.schemas.errors import BrokerUnavailable
    from baton.streams.sdk import GovernanceClient

    with pytest.raises(BrokerUnavailable) as raised:
        GovernanceClient("nosuchhost.invalid:9092", connect_timeout=1).connect()
    text = str(raised.value)
    assert "nosuchhost.invalid:9092" in text and "resolve" in text, text


def test_the_sdk_names_a_port_that_answers_no_kafka(silent_port: int) -> None:
    from baton.schemas.errors import BrokerUnavailable
    from baton.streams.sdk import GovernanceClient

    address = f"127.0.0.1:{silent_port}"
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as raised:
        GovernanceClient(address, connect_timeout=1).connect()
    assert time.monotonic() - started < 5
    text = str(raised.value)
    assert text == (
        f"cannot reach Kafka at {address} within 1 s (it took the connection and answered no "
        "Kafka request); is the broker running, and is this its Kafka port?"
    )


def test_a_check_unanswered_after_the_broker_went_away_says_what_librdkafka_saw() -> None:
    # connected, then the broker went: the check's fail-closed stop said only "no decision
    # from Baton within 5 s ... is a worker running?"
    from confluent_kafka import KafkaError

    from baton.schemas.decision import Outcome
    from baton.streams.sdk import GovernanceClient

    seen = "127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused"
    gov = GovernanceClient("127.0.0.1:9", partitions=3)
    gov.channel.connect = lambda: None  # type: ignore[method-assign]
    gov.channel._producer = object()  # type: ignore[assignment]
    gov.channel.submit = lambda *a, **k: None  # type: ignore[method-assign]
    gov.channel.brokers.on_error(KafkaError(KafkaError._TRANSPORT, seen))
    decision = gov.check(_request(), timeout=0.2)
    assert (decision.outcome, decision.reason) == (Outcome.STOP, "governance_unavailable")
    assert "no decision from Baton within 0.2 s" in (decision.detail or "")
    assert f"librdkafka reported 0 s ago: {seen}" in (decision.detail or "")


def _request() -> object:
    from datetime import UTC, datetime

    from baton.schemas.events import HandoffRequested

    return HandoffRequested(
        request_id="h1", run_id="run-1", task_id="t1", from_agent="planner",
        to_agent="researcher", event_time=datetime.now(UTC),
    )  # fmt: skip


# ------------------------------------------------------------------ 3: baton send, a mistyped type


def test_send_names_the_valid_event_types_for_a_mistyped_or_missing_type(tmp_path: object) -> None:
    from pathlib import Path

    from click.testing import CliRunner

    from baton.schemas.events import EventError, parse_event

    _register()
    events = Path(str(tmp_path)) / "events.jsonl"
    events.write_text(
        '{"type": "handoff_request", "run_id": "r1"}\n'
        '{"run_id": "r1"}\n'
        '{"type": "zzz' + "z" * 5000 + '", "run_id": "r1"}\n'
    )
    result = CliRunner().invoke(cli, ["send", "--dry-run", str(events)])
    assert result.exit_code == 1
    valid = (
        "a line's type is one of handoff_requested, handoff_completed, approval_granted, "
        "approval_denied, run_finished"
    )
    first, second, third, _summary = result.stderr.splitlines()
    assert first == (
        "baton send: line 1: unknown_type: unknown event type 'handoff_request'; "
        f"did you mean 'handoff_requested'? {valid}"
    )
    assert second == f"baton send: line 2: schema: missing string field 'type'; {valid}"
    assert third.startswith("baton send: line 3: unknown_type: unknown event type 'zzz")
    assert "did you mean" not in third
    # the parser's own words, which dead letters and decisions carry, are unchanged
    with pytest.raises(EventError) as raised:
        parse_event(b'{"type": "handoff_request", "run_id": "r1"}')
    assert str(raised.value) == "unknown event type 'handoff_request'"


# ------------------------------------------------------------------ 5: /metrics, a share per peer


def _scrape(port: int, source: str, timeout: float = 5.0, path: str = "/metrics") -> bytes:
    """GET ``path`` from the local address ``source``; b"" when the server closed it unread."""
    host = "::1" if ":" in source else "127.0.0.1"
    with socket.create_connection(
        (host, port), timeout=timeout, source_address=(source, 0)
    ) as conn:
        try:
            conn.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, BrokenPipeError):
            return b""
    return b"".join(chunks)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def _still_open(held: list[socket.socket]) -> int:
    open_ones = 0
    for conn in held:
        conn.settimeout(0.2)
        try:
            open_ones += conn.recv(1) != b""
        except TimeoutError:
            open_ones += 1
        except ConnectionResetError:
            pass
    return open_ones


@pytest.mark.skipif(not _ipv6_loopback(), reason="needs the IPv6 loopback (::1) for a second peer")
def test_one_peer_holding_connections_open_leaves_the_metrics_to_the_others() -> None:
    # 32 idle connections from one address held every slot: a scrape from another address
    # (Prometheus) was closed unread until they timed out, and they could reconnect at once.
    # Every 127.x.x.x is one peer (H2, session 27: a local hog took 4 slots from each of
    # 127.0.0.1..8), so the other peer here is ::1 (the server listens dual-stack on ::)
    from baton.processors import metrics_serve
    from baton.processors.metrics_serve import new_registry, serve_metrics

    endpoint = serve_metrics(new_registry(), "::", 0)
    port = int(endpoint.url.rsplit(":", 1)[1].split("/")[0])
    held = []
    try:
        for i in range(metrics_serve.MAX_CONNECTIONS):
            held.append(
                socket.create_connection(
                    ("127.0.0.1", port), timeout=5, source_address=(f"127.0.0.{1 + i % 8}", 0)
                )
            )
        time.sleep(0.5)  # the server has taken them all
        assert b"process_cpu_seconds_total" in _scrape(port, "::1")
        # the hog got one share across its eight loopback addresses, the rest closed unread
        assert _still_open(held) == metrics_serve.MAX_PER_PEER
        assert _scrape(port, "127.0.0.9") == b""
    finally:
        for conn in held:
            conn.close()
    # the slots come back when its connections end
    deadline = time.monotonic() + 10
    while not (answer := _scrape(port, "127.0.0.1")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert b"process_cpu_seconds_total" in answer
    endpoint.close()


@pytest.mark.parametrize(
    ("address", "peer"),
    [
        ("127.0.0.1", "127.0.0.0/8"),
        ("127.255.3.9", "127.0.0.0/8"),
        ("::ffff:127.0.0.2", "127.0.0.0/8"),
        ("10.1.2.3", "10.1.2.3"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("::1", "::1"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:1:2:3", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("", ""),
        ("not-an-address", "not-an-address"),
    ],
)
def test_a_peer_is_what_one_client_cannot_multiply(address: str, peer: str) -> None:
    from baton.streams.net import peer_of

    assert peer_of(address) == peer


@pytest.mark.parametrize(
    "path", ["/", "/admin", "/.env", "/metricsx", "/favicon.ico", "/x/metrics"]
)
def test_metrics_are_served_on_metrics_only(path: str) -> None:
    # prometheus_client answered the figures on any path (H2, session 27, F16)
    from baton.processors.metrics_serve import new_registry, serve_metrics

    endpoint = serve_metrics(new_registry(), "127.0.0.1", 0)
    port = int(endpoint.url.rsplit(":", 1)[1].split("/")[0])
    try:
        answer = _scrape(port, "127.0.0.1", path=path)
        assert answer.startswith(b"HTTP/1.0 404"), answer[:80]
        assert b"process_cpu_seconds_total" not in answer
        assert b"Baton serves its metrics on /metrics" in answer
        for good in ("/metrics", "/metrics/", "/metrics?debug=1"):
            assert b"process_cpu_seconds_total" in _scrape(port, "127.0.0.1", path=good)
    finally:
        endpoint.close()


# ------------------------------------------------------------------ 2: baton up, what it waits for


def _readiness(tmp_path: object) -> object:
    from pathlib import Path

    from baton.cli.up_ready import Readiness
    from baton.schemas.settings import Settings
    from baton.streams.topics import TopicCatalog

    data_dir = Path(str(tmp_path)) / ".baton"
    return Readiness(Settings(bootstrap="127.0.0.1:9"), TopicCatalog(), 0, data_dir / "chdb")


def test_up_says_what_it_still_waits_for(tmp_path: object) -> None:
    readiness: Any = _readiness(tmp_path)
    readiness.started -= 12.4
    assert readiness.progress() == (
        "still waiting for the worker to answer a probe (it starts, joins its group, takes "
        "its partitions): 12 s of 90"
    )
    readiness.stage = "sql"
    assert readiness.progress().startswith("still waiting for the audit sink's SQL endpoint")


def test_up_names_the_worker_and_its_log_when_it_does_not_come_up(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from baton.processors import probe
    from baton.schemas.errors import BrokerUnavailable

    def never(*_args: object, **_kwargs: object) -> float:
        raise BrokerUnavailable("no Baton worker answered on gov.decisions within 90 s")

    monkeypatch.setattr(probe, "wait_until_deciding", never)
    readiness: Any = _readiness(tmp_path)
    readiness.run()
    assert isinstance(readiness.error, BrokerUnavailable)
    assert str(readiness.error) == (
        "the worker did not come up: no Baton worker answered on gov.decisions within 90 s; "
        f"see its log, {tmp_path}/.baton/logs/worker.log"
    )


def test_a_closed_clickhouse_port_is_one_short_line_naming_it() -> None:
    # it was urllib3's whole repr: HTTPConnectionPool(...) Max retries exceeded with url:
    # /?query_id=<uuid> (Caused by NewConnectionError(...)) executing HTTP request attempt 1
    port = _closed_port()
    dsn = f"http://127.0.0.1:{port}"
    code, out, err, _took = _baton("sql", "SELECT 1", "--dsn", dsn)
    assert code == 5, (out, err)
    assert err == (
        f"baton: error: cannot reach ClickHouse at {dsn} (127.0.0.1:{port}: connection "
        "refused); is the server running?\n"
    )


def test_a_clickhouse_host_name_that_does_not_resolve_is_named() -> None:
    from baton.sinks.clickhouse import _socket_gist

    said = (
        "Error HTTPConnectionPool(host='nosuchhost.invalid', port=8123): Max retries exceeded "
        'with url: /?query_id=39276a16 (Caused by NameResolutionError("HTTPConnection('
        "host='nosuchhost.invalid', port=8123): Failed to resolve 'nosuchhost.invalid' ([Errno "
        '-2] Name or service not known)")) executing HTTP request attempt 1'
    )
    assert _socket_gist(said) == "nosuchhost.invalid:8123: cannot resolve 'nosuchhost.invalid'"
    assert _socket_gist("Code: 516. Authentication failed") == "Code: 516. Authentication failed"


def test_send_to_a_port_that_answers_no_kafka_says_so_within_the_connect_timeout(
    silent_port: int, tmp_path: object
) -> None:
    # it produced into librdkafka's queue and said only at the end, after --timeout (30 s):
    # "Kafka at ... did not take 1 of 1 events within 30 s"
    from pathlib import Path

    events = Path(str(tmp_path)) / "events.jsonl"
    events.write_text(
        '{"type": "run_finished", "run_id": "r1", "event_time": "2026-01-01T00:00:00Z"}\n'
    )
    address = f"127.0.0.1:{silent_port}"
    code, out, err, took = _baton("send", str(events), "--bootstrap", address)
    assert code == 4, (out, err)
    assert err == (
        f"baton: error: cannot reach Kafka at {address} within 1 s (it took the connection and "
        "answered no Kafka request); is the broker running, and is this its Kafka port?\n"
    )
    assert took < 20


# ------------------------------------------------------------------ 6: a restart of the README's up


def test_a_restart_names_the_kill_switches_an_unsigned_release_had_lifted() -> None:
    # the README tour kills run_742 and releases it, unsigned; a restart of `baton up`
    # re-issues the kill and not the release (an unsigned one is not proof enough), so
    # run_742 was stopped again, said only as "re-issued 3 of 4 ... commands"
    from datetime import UTC, datetime

    from baton.cli.restore_kills import fold_reissued, releases_undone
    from baton.schemas.events import KillSwitch, KillSwitchReleased
    from baton.schemas.policy import load_policy

    now = datetime.now(UTC)
    commands = [
        KillSwitch(scope="run", run_id="run_742", operator="cli", event_time=now).to_json(),
        KillSwitchReleased(scope="run", run_id="run_742", operator="cli", event_time=now).to_json(),
        KillSwitch(scope="tenant", tenant="acme", operator="cli", event_time=now).to_json(),
        KillSwitch(scope="run", run_id="run_9", operator="cli", event_time=now).to_json(),
    ]
    texts = [c.decode() if isinstance(c, bytes) else c for c in commands]
    kills, refused = fold_reissued(texts, load_policy(None), now)
    assert refused == [] and kills.runs == {"run_742", "run_9"}
    assert releases_undone(texts, kills) == ["run run_742"]
    assert releases_undone(texts[2:], kills) == []


def test_send_of_a_missing_file_is_one_line_said_once(tmp_path: object) -> None:
    # it said "baton: error: baton send: cannot read ...": the command named twice
    from click.testing import CliRunner

    _register()
    missing = f"{tmp_path}/nosuch.jsonl"
    result = CliRunner().invoke(cli, ["send", "--dry-run", missing])
    assert result.exit_code == 2
    assert result.stderr == (
        f"baton: error: cannot read {missing}: No such file or directory; expected a file of "
        "JSON lines (or a pipe, or - for stdin)\n"
    )


def test_a_check_whose_partition_cannot_be_read_says_librdkafka_s_words() -> None:
    # the fail-closed stop's detail held KafkaError{code=_TRANSPORT,val=-195,str="..."}
    import concurrent.futures

    from confluent_kafka import KafkaError, KafkaException

    from baton.streams.sdk import GovernanceClient
    from baton.streams.sdk.waiters import Unanswered, Waiter

    class _Down:
        def get_watermark_offsets(self, *_args: object, **_kwargs: object) -> None:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))

    gov = GovernanceClient("127.0.0.1:9", partitions=3)
    channel = gov.channel
    channel._producer = type("P", (), {"produce": lambda *a, **k: None})()  # type: ignore[assignment]
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    key = ("run-1", "h1", "pre_handoff")
    channel.submit("t", b"k", b"v", decisions_partition=1, wait_key=key, waiter=Waiter(future))
    channel._assign_wanted(_Down())  # type: ignore[arg-type]
    answer = future.result(1)
    assert isinstance(answer, Unanswered)
    assert answer.detail.startswith(
        "cannot read gov.decisions[1] from Kafka at 127.0.0.1:9: Broker transport failure; "
    ), answer.detail


def test_doctor_against_a_port_that_answers_no_kafka_names_it_without_a_repr(
    silent_port: int,
) -> None:
    address = f"127.0.0.1:{silent_port}"
    dsn = f"http://127.0.0.1:{_closed_port()}"
    code, out, err, took = _baton("doctor", "--bootstrap", address, "--dsn", dsn, "--timeout", "1")
    assert code == 1 and err == "", (out, err)
    broker = out.splitlines()[0]
    assert broker.startswith(f"✘ broker: {address} accepts connections but no Kafka answer"), out
    assert "KafkaError{" not in broker
    assert took < 30


def test_the_sink_and_alerter_name_a_refused_broker_at_each_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # `baton sink` / `baton alerts` retry while Kafka is away, each retry a line that said
    # "cannot reach Kafka at H:P (timed out after 5 s)" after the admin client's whole timeout
    import logging
    import threading

    from baton.schemas.settings import Settings
    from baton.sinks.sink_start import StoppedWaiting, ensure_catalog_topics

    address = f"127.0.0.1:{_closed_port()}"
    stop = threading.Event()
    stop.set()  # one attempt, its retry line, then the stop
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(StoppedWaiting, match="connection refused"),
    ):
        ensure_catalog_topics(Settings(bootstrap=address, connect_timeout_s=5), stop)
    assert time.monotonic() - started < 3
    [line] = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert line.startswith(f"cannot reach Kafka at {address} ({address}: connection refused)")


@pytest.mark.parametrize("command", ["sink", "alerts"])
def test_a_sink_or_alerter_stopped_while_retrying_ends_0_saying_so(
    command: str, tmp_path: Path
) -> None:
    # H1 (session 27): SIGTERM while Kafka (or ClickHouse) was unreachable ended them 4 or 5
    # with "cannot reach": README says they end 0 when stopped; nothing was read
    import signal

    address = f"127.0.0.1:{_closed_port()}"
    env = {**os.environ, "BATON_BOOTSTRAP": address, "BATON_CONNECT_TIMEOUT_S": "2"}
    env["BATON_CLICKHOUSE_DSN"] = f"chdb://{tmp_path / 'chdb'}"
    args = [sys.executable, "-m", "baton.cli", command]
    if command == "sink":
        args += ["--sql-port", "off"]
    proc = subprocess.Popen(
        args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        seen = ""
        deadline = time.monotonic() + 60
        while "retrying" not in seen and time.monotonic() < deadline:
            seen += proc.stderr.readline()
        assert "retrying" in seen, seen
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, seen + err
    assert "stopped while Kafka was unreachable" in seen + err and "nothing was read" in seen + err


def test_the_demo_names_the_runs_a_kill_switch_in_force_stopped() -> None:
    # H1 (session 27): after the README tour (its unsigned release of run_742's kill switch
    # not issued again by a restart) the demo's "2 differences from the seed policy" read as
    # a Baton defect
    from types import SimpleNamespace

    from baton.cli.demo_cmds import killed_hint

    seen = [SimpleNamespace(run_id=r, reason=why) for r, why in
            [("run_742", "killed"), ("run_742", "killed"), ("demo_x_budget", "ok")]]  # fmt: skip
    hint = killed_hint(seen)  # type: ignore[arg-type]
    assert hint is not None and hint.startswith(
        "run_742: stopped by a kill switch in force in this stack, not by the seed policy's rules"
    )
    assert killed_hint(seen[2:]) is None  # type: ignore[arg-type]
