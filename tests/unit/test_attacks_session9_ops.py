"""Session 9's attacks on the operator surface: the alert rules file, the SQL endpoint file in a
data dir, settings of infinite or astronomic seconds, and a webhook that redirects; each is a
one-line error naming what is wrong, never a traceback, a hang or a request Baton did not mean."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from baton.cli.main import _register, cli
from baton.processors.metrics_serve import new_registry, serve_metrics
from baton.schemas.errors import ConfigError
from baton.schemas.settings import Settings
from baton.sinks.alert_post import post_once
from baton.sinks.clickhouse import ENDPOINT_FILE, read_endpoint
from baton.sinks.rules import DEFAULT_RULES, load_rules

pytestmark = pytest.mark.unit


def _laughs(levels: int) -> str:
    """A rules file whose one description, aliases expanded, is 10**levels strings."""
    anchors = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    anchors += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    params = "{" + ", ".join(anchors) + "}"
    return (
        "rules:\n"
        f"  - name: laughs\n    sql: 'SELECT 1'\n    params: {params}\n"
        f"    description: *a{levels - 1}\n"
    )


HOSTILE_RULES = {
    # each raised past load_rules' OSError/YAMLError handlers: a traceback from `baton alerts
    # check --rules FILE` instead of a line naming the file
    "not_utf8": (b"rules: \xff\n", "UTF-8"),
    "int_of_5000_digits": (b"rules: " + b"1" * 5000 + b"\n", "YAML cannot read"),
    "nested_5000_deep": (b"rules: " + b"[" * 5000 + b"]" * 5000 + b"\n", "deeper"),
    # an 800-byte file of this kind (10**8 values) took 30 s and 2 GB, then MemoryError
    "aliases_of_10_million": (_laughs(7).encode(), "aliases"),
    "larger_than_a_rules_file": (b"# " + b"x" * (2 * 1024 * 1024) + b"\n", "larger than"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RULES))
def test_a_hostile_alert_rules_file_is_one_config_error_naming_it(
    tmp_path: Path, case: str
) -> None:
    content, words = HOSTILE_RULES[case]
    path = tmp_path / "rules.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"rules.yaml.*{words}"):
        load_rules(path)


def test_baton_alerts_check_with_a_hostile_rules_file_says_so_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_bytes(b"rules: \xff\n")
    _register()
    result = CliRunner().invoke(
        cli, ["alerts", "check", "--rules", str(path), "--dsn", f"chdb://{tmp_path}/none"]
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "rules.yaml" in result.output


def test_a_fifo_as_alert_rules_file_is_refused_without_waiting_for_a_writer(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "rules.yaml"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            load_rules(fifo)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # blocked in open(): free it by opening the writer end
        os.close(os.open(fifo, os.O_WRONLY))
        reader.join(5)
        pytest.fail("load_rules waited on the FIFO for a writer")
    assert isinstance(outcome[0], ConfigError) and "FIFO" in str(outcome[0])


def test_an_honest_rules_file_still_tunes_a_builtin_and_adds_a_rule(tmp_path: Path) -> None:
    builtin = DEFAULT_RULES[0].name
    path = tmp_path / "rules.yaml"
    path.write_text(
        f"rules:\n  - name: {builtin}\n    description: tuned\n  - name: mine\n    sql: SELECT 1\n",
        encoding="utf-8",
    )
    rules = {r.name: r for r in load_rules(path)}
    assert rules[builtin].description == "tuned"
    assert rules["mine"].sql == "SELECT 1"


ENDPOINT_RECORDS = {
    "a_list": b"[]",
    "pid_past_c_long": b'{"url": "http://127.0.0.1:8123", "pid": 100000000000000000000000}',
    "pid_1e400": b'{"url": "http://127.0.0.1:8123", "pid": 1e400}',
    "pid_0_the_own_process_group": b'{"url": "http://127.0.0.1:8123", "pid": 0}',
    "pid_minus_1_every_process": b'{"url": "http://127.0.0.1:8123", "pid": -1}',
    "nested_100000_deep": b"[" * 100_000,
}


@pytest.mark.parametrize("case", sorted(ENDPOINT_RECORDS))
def test_a_forged_sql_endpoint_file_in_a_data_dir_is_no_endpoint(tmp_path: Path, case: str) -> None:
    # `baton sql`/`trace` on a held chDB dir, `baton doctor` and `baton up`'s restart notice
    # read it: a list raised AttributeError, a huge pid OverflowError, deep nesting
    # RecursionError (tracebacks); pid 0 or -1 passed os.kill(pid, 0) as a live server
    (tmp_path / ENDPOINT_FILE).write_bytes(ENDPOINT_RECORDS[case])
    assert read_endpoint(tmp_path) is None


def test_a_sql_endpoint_file_of_a_live_process_is_still_read(tmp_path: Path) -> None:
    record = {"dsn": "http://baton:t0k3n@127.0.0.1:8123", "pid": os.getpid()}
    (tmp_path / ENDPOINT_FILE).write_bytes(orjson.dumps(record))
    assert read_endpoint(tmp_path) == record["dsn"]


SECONDS_SETTINGS = [
    "session_timeout_s",
    "connect_timeout_s",
    "clickhouse_timeout_s",
    "sink_batch_timeout_s",
    "run_retention_s",
    "tombstone_retention_s",
    "hold_idle_s",
]


@pytest.mark.parametrize("value", ["inf", "1e300"])
@pytest.mark.parametrize("name", SECONDS_SETTINGS)
def test_a_setting_of_infinite_or_astronomic_seconds_is_refused_naming_it(
    name: str, value: str
) -> None:
    # inf or 1e300 passed gt=0: a socket timeout of it raised OverflowError in check_reachable
    # (every Kafka command), chDB/HTTP timeouts the same, and a retention past ~2,000 years
    # made `now - timedelta(retention)` overflow in `baton up`'s restore
    with pytest.raises((ValidationError, ConfigError), match=name):
        Settings(**{name: value})


def test_baton_tail_with_an_infinite_connect_timeout_is_one_line_naming_the_variable() -> None:
    _register()
    result = CliRunner().invoke(
        cli,
        ["tail", "decisions", "--bootstrap", "127.0.0.1:1"],
        env={"BATON_CONNECT_TIMEOUT_S": "inf"},
    )
    assert result.exit_code == 2, result.output
    assert "BATON_CONNECT_TIMEOUT_S" in result.output


def test_the_defaults_and_an_hour_of_seconds_are_still_settings() -> None:
    Settings()
    Settings(**{name: "3600" for name in SECONDS_SETTINGS})
    Settings(run_retention_s=86400 * 365, tombstone_retention_s=86400 * 365)


@pytest.fixture
def redirecting_webhook() -> Iterator[tuple[str, list[str]]]:
    """A webhook that answers every POST with a 302 to a path of its own host, and the paths
    it was asked for."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            asked.append(f"POST {self.path}")
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{server.server_port}/internal")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            asked.append(f"GET {self.path}")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/services/T/B/secret", asked
    finally:
        server.shutdown()
        server.server_close()


def test_a_webhook_redirect_is_not_followed_and_not_counted_as_delivered(
    redirecting_webhook: tuple[str, list[str]],
) -> None:
    # urllib followed a 302 to a GET of any http(s) URL the webhook's host named (a local
    # service on the alerter's host, say) and reported the alert as delivered
    url, asked = redirecting_webhook
    outcome = post_once(url, "run r1 stopped", timeout_s=5)
    assert not outcome.ok
    assert "302" in (outcome.problem or "")
    assert asked == ["POST /services/T/B/secret"]


def _connected_idle(url: str, count: int) -> list[socket.socket]:
    """``count`` connections to the endpoint at ``url`` that send half a request, then idle."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    held = []
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn.sendall(b"GET /metrics HTTP/1.1\r\n")
        held.append(conn)
    return held


def _closed_by_server(conn: socket.socket, within_s: float) -> bool:
    conn.settimeout(within_s)
    try:
        return conn.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_connections_to_metrics_hold_a_bounded_number_of_threads_and_still_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # every connection held a thread of the worker (and a descriptor) for as long as it
    # stayed open, idle forever: 700 idle connections were 700 threads in the serving process
    from baton.processors import metrics_serve

    monkeypatch.setattr(metrics_serve, "IDLE_TIMEOUT_S", 1.0, raising=False)
    endpoint = serve_metrics(new_registry(), "127.0.0.1", 0)
    before = threading.active_count()
    held = _connected_idle(endpoint.url, 60)
    try:
        time.sleep(0.5)
        assert threading.active_count() - before <= 40
        assert all(_closed_by_server(conn, 5) for conn in held)
        with urllib.request.urlopen(endpoint.url, timeout=5) as answer:
            assert b"process_cpu_seconds_total" in answer.read()
    finally:
        for conn in held:
            conn.close()
        endpoint.close()


@pytest.mark.parametrize("swapped_in", ["not_utf8", "fifo"])
def test_a_policy_file_swapped_after_its_check_is_refused_by_policy_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swapped_in: str
) -> None:
    # `policy publish` checked the file (read_policy), then read it again with read_text: a
    # file swapped in between for non-UTF-8 bytes raised UnicodeDecodeError (a traceback),
    # for a FIFO it waited for a writer
    from baton.cli import options

    policy = tmp_path / "policy.yaml"
    policy.write_text("multi_agent:\n  max_handoffs: 3\n", encoding="utf-8")
    checked_read = options.read_small_text

    def read_then_swap(path: Path, limit: int) -> str:
        data = checked_read(path, limit)
        if Path(path) == policy:
            policy.unlink()
            if swapped_in == "fifo":
                os.mkfifo(policy)
            else:
                policy.write_bytes(b"multi_agent:\n  max_handoffs: \xff\n")
        return data

    monkeypatch.setattr(options, "read_small_text", read_then_swap)
    _register()
    outcome: list[object] = []

    def publish() -> None:
        outcome.append(
            CliRunner().invoke(
                cli,
                ["policy", "publish", str(policy), "--as", "ops", "--key", str(tmp_path / "k")],
            )
        )

    runner = threading.Thread(target=publish, daemon=True)
    runner.start()
    runner.join(10)
    if runner.is_alive():
        os.close(os.open(policy, os.O_WRONLY))
        runner.join(5)
        pytest.fail("policy publish waited on a FIFO for a writer")
    result = outcome[0]
    # the checked bytes are published (here: refused next for the missing key), never re-read
    assert isinstance(result.exception, SystemExit), result.exception  # type: ignore[attr-defined]
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    assert "key file" in result.output  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "url", ["http://hooks.example:99999/s/T/B", "http://[::1/s/T/B", "http://" + "a" * 300 + "/s"]
)
def test_doctor_names_an_unusable_webhook_url_as_the_setting_not_as_a_bug(url: str) -> None:
    # a port past 65535, a broken IPv6 bracket or a 300-character host raised past the check
    # (ValueError, UnicodeError): doctor said "the check itself failed ... report it"
    from baton.cli.doctor_checks import Status, webhook_check

    check = webhook_check(Settings(webhook_url=url), 1.0)
    assert check.status is Status.FAIL
    assert "BATON_WEBHOOK_URL" in check.detail + check.hint
    assert "/s/T/B" not in check.detail + check.hint  # the secret part is never shown


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("topic_prefix", "a/b"),
        ("topic_prefix", "../x."),
        ("topic_prefix", "p" * 300),
        ("topic_prefix", "line\n"),
        ("app_id", ""),
        ("app_id", "baton/x"),
        ("app_id", "x" * 5000),
    ],
)
def test_a_topic_prefix_or_app_id_kafka_cannot_name_topics_with_is_refused_naming_it(
    name: str, value: str
) -> None:
    # both become topic names (app_id: the workers' changelog topics); `BATON_TOPIC_PREFIX=a/b
    # baton up` started and decided on topics Kafka itself refuses to name
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: value})


def test_the_prefixes_and_app_ids_in_use_are_still_settings() -> None:
    Settings(topic_prefix="", app_id="baton")
    Settings(topic_prefix="staging.", app_id="restore-1a2b3c4d")
    Settings(topic_prefix="t0123abcd.", app_id="baton-t0123abcd.")


@pytest.mark.parametrize("echo", [False, True])
def test_a_link_planted_at_a_childs_log_name_is_not_written_through(
    tmp_path: Path, echo: bool
) -> None:
    # `baton up` opened DATA_DIR/logs/<child>.log with open(path, "ab"): a symbolic link left
    # there by whoever can write the data dir made it append the child's output to any file
    # the operator may write (~/.bashrc)
    from baton.cli.supervisor import ChildSpec
    from baton.cli.up_children import spawner

    victim = tmp_path / "bashrc"
    victim.write_bytes(b"mine\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "worker.log").symlink_to(victim)
    spawn = spawner(dict(os.environ))
    with pytest.raises(ConfigError, match=r"worker\.log"):
        proc = spawn(ChildSpec("worker", ("--version",), logs / "worker.log", echo=echo))
        proc.wait(30)
    time.sleep(0.2)
    assert victim.read_bytes() == b"mine\n"


@pytest.mark.parametrize(
    "dsn", ["http://127.0.0.1:99999", "http://[::1", "https://u:secret@h:port/db"]
)
def test_a_clickhouse_dsn_whose_port_or_host_cannot_parse_is_one_line_naming_it(
    dsn: str,
) -> None:
    # urlsplit's ValueError escaped parse_dsn: `baton sql --dsn http://127.0.0.1:99999` was a
    # traceback, and doctor said "the check itself failed ... report it"
    _register()
    result = CliRunner().invoke(cli, ["sql", "SELECT 1", "--dsn", dsn])
    assert result.exit_code == 2, result.output
    assert "BATON_CLICKHOUSE_DSN" in result.output
    assert "secret" not in result.output


def test_a_bootstrap_of_hundreds_of_names_fails_within_the_connect_timeout_in_one_short_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # every address was tried whatever the time left: 300 names that do not resolve took 56 s
    # under BATON_CONNECT_TIMEOUT_S=10, and the error line was 17 KB
    from baton.schemas.errors import BrokerUnavailable
    from baton.streams.net import check_reachable

    def slow_unresolvable(*args: object, **kwargs: object) -> list[object]:
        time.sleep(0.1)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", slow_unresolvable)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as refused:
        check_reachable(",".join(f"h{i}:9092" for i in range(300)), timeout_s=1.0)
    assert time.monotonic() - started < 2.0
    assert len(str(refused.value)) < 2000
    assert "h0:9092" in str(refused.value)


@pytest.mark.parametrize(
    ("name", "value"), [("partitions", 100_001), ("replication_factor", 32_768)]
)
def test_a_topic_count_kafka_cannot_create_is_refused_naming_it(name: str, value: int) -> None:
    # BATON_PARTITIONS=1000000 baton up: librdkafka's create_topics raised ValueError
    # ("num_partitions out of expected range 1..100000"), a traceback
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: value})
    Settings(**{name: value - 1})


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_baton_up_refuses_a_broker_port_that_is_none_before_starting_anything(
    tmp_path: Path, port: str
) -> None:
    # --port 99999 started the embedded broker, which refused it ("Url(InvalidPort)"): exit 4
    # after the start, as if the broker had died
    _register()
    result = CliRunner().invoke(cli, ["up", "--data-dir", str(tmp_path / "d"), "--port", port])
    assert result.exit_code == 2, result.output
    assert "--port" in result.output
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["doctor", "--timeout", "nan"],
        ["kill", "--run", "r1", "--as", "ops", "--key", "k", "--timeout", "nan"],
        ["policy", "current", "--timeout", "inf"],
        ["up", "--restart-window-s", "nan"],
        ["up", "--session-timeout-s", "nan"],
        ["top", "--interval", "nan"],
    ],
)
def test_a_seconds_option_of_nan_or_inf_is_a_usage_error_naming_it(
    tmp_path: Path, args: list[str]
) -> None:
    # nan passes click's FloatRange (every comparison with it is False) and type=float takes
    # both: `baton doctor --timeout nan` ended in threading's join, a ValueError traceback
    _register()
    result = CliRunner().invoke(cli, [*args, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "is not a finite number" in result.output
    assert not isinstance(result.exception, ValueError)
