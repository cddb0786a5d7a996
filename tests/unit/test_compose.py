"""docker-compose.yml (and its SASL variant), the Dockerfile and deploy/ agree with the code
and with each other (no Docker engine here, so this is what checks them): every command is a
real `baton` command with real flags, every address and credential one service uses is what
the other serves, every health check asks a real endpoint, every mounted file exists, and
Prometheus scrapes every Baton process. (tests/unit/test_deployment.py checks the BATON_*
values themselves; tests/integration/test_compose_worker.py runs a worker with them.)"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.sasl.yml"]


def compose(name: str = "docker-compose.yml") -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def baton_services(doc: dict[str, Any], one_shot: bool = False) -> dict[str, dict[str, Any]]:
    """The services that run the Baton image (built from the Dockerfile) and keep running;
    ``one_shot``: the ones that run once too (the keys service)."""
    return {
        n: s
        for n, s in doc["services"].items()
        if s.get("build") == "." and (one_shot or s.get("restart") != "no")
    }


def env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def cli() -> click.Group:
    from baton.cli.main import _register
    from baton.cli.main import cli as group

    _register()
    return group


def parse_command(args: list[str]) -> None:
    """Parse ``baton ARGS`` as the CLI would, without running it; raises click's usage
    errors for an unknown command, option or value (``--help`` parses and exits 0)."""
    group = cli()
    try:
        if args[0].startswith("-"):  # an option of `baton` itself, e.g. CMD ["--help"]
            group.make_context("baton", list(args))
            return
        command = group.get_command(click.Context(group), args[0])
        if command is None:
            raise click.UsageError(f"No such command {args[0]!r}")
        command.make_context(args[0], list(args[1:]))
    except click.exceptions.Exit as exc:
        assert exc.exit_code == 0


def interpolated(value: str) -> str:
    """Compose's ``${VAR...}`` as a placeholder, so a URL holding one parses."""
    return re.sub(r"\$\{(\w+)[^}]*\}", lambda m: f"{m[1].lower()}", value)


# ------------------------------------------------------------------ commands and image
@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_every_service_command_is_a_real_baton_command_with_real_flags(
    compose_file: str,
) -> None:
    services = baton_services(compose(compose_file), one_shot=True)
    assert len(services) >= 5
    for name, service in services.items():
        parse_command(service["command"])  # raises on a wrong command, flag or value
        assert name


def test_a_wrong_flag_would_be_caught() -> None:
    """The check above fails on what it is meant to catch."""
    with pytest.raises(click.UsageError):
        parse_command(["sink", "--sql-prot", "off"])
    with pytest.raises(click.UsageError):
        parse_command(["wroker"])


def test_the_image_runs_baton_with_every_package_copied() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT\s+(\[.*\])", dockerfile, re.M)
    assert entrypoint and yaml.safe_load(entrypoint[1]) == ["baton"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^baton = "baton\.cli\.main:main"', pyproject, re.M)
    cmd = re.search(r"^CMD\s+(\[.*\])", dockerfile, re.M)
    assert cmd is not None
    parse_command(yaml.safe_load(cmd[1]))
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    folders = set(re.findall(r'^"baton\.\w+" = "(\w+)"', pyproject, re.M))
    assert folders and folders <= copied, f"not copied into the image: {folders - copied}"
    assert {"pyproject.toml"} <= set(re.findall(r"^COPY (.*) \./$", dockerfile, re.M)[0].split()), (
        "the build needs pyproject.toml (and the README it names)"
    )


# ------------------------------------------------------------------ addresses agree
def _listeners(kafka_env: dict[str, str], key: str) -> dict[str, tuple[str, int]]:
    found = {}
    for entry in kafka_env[key].split(","):
        name, address = entry.split("://")
        host, _, port = address.rpartition(":")
        found[name] = (host, int(port))
    return found


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_the_bootstrap_is_an_advertised_listener_with_the_same_protocol(
    compose_file: str,
) -> None:
    doc = compose(compose_file)
    kafka = env(doc["services"]["kafka"])
    advertised = _listeners(kafka, "KAFKA_ADVERTISED_LISTENERS")
    protocols = dict(p.split(":") for p in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    for name, service in baton_services(doc).items():
        baton = env(service)
        host, port = baton["BATON_BOOTSTRAP"].rsplit(":", 1)
        listener = [n for n, a in advertised.items() if a == (host, int(port))]
        assert listener, f"{name}: {baton['BATON_BOOTSTRAP']} is not advertised by kafka"
        assert protocols[listener[0]] == baton["BATON_SECURITY_PROTOCOL"], name


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_host_listeners_are_published_on_their_port(compose_file: str) -> None:
    """What the comment at the top tells people to use from the host is reachable there."""
    doc = compose(compose_file)
    kafka = doc["services"]["kafka"]
    published = {int(p.split(":")[1]) for p in kafka.get("ports", [])}
    host_side = [
        port
        for host, port in _listeners(env(kafka), "KAFKA_ADVERTISED_LISTENERS").values()
        if host in ("localhost", "127.0.0.1")
    ]
    assert host_side and set(host_side) <= published
    text = (ROOT / compose_file).read_text()
    for mentioned in re.findall(r"^#.*localhost:(\d+)", text, re.M):
        assert int(mentioned) in published, f"the comment names localhost:{mentioned}"


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_the_audit_dsn_names_the_clickhouse_service_and_its_user(compose_file: str) -> None:
    doc = compose(compose_file)
    clickhouse = env(doc["services"]["clickhouse"])
    for name, service in baton_services(doc).items():
        dsn = env(service).get("BATON_CLICKHOUSE_DSN")
        assert dsn, f"{name}: no BATON_CLICKHOUSE_DSN (the image has no chDB)"
        parts = urlsplit(interpolated(dsn))
        assert parts.hostname == "clickhouse", name
        assert parts.port == (8443 if parts.scheme == "https" else 8123), name
        assert parts.username == clickhouse["CLICKHOUSE_USER"], name
        assert parts.password == interpolated(clickhouse["CLICKHOUSE_PASSWORD"]), name


def test_prometheus_scrapes_every_baton_process_on_its_metrics_port() -> None:
    doc = compose()
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        target
        for job in prometheus["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = set()
    for name, service in baton_services(doc).items():
        baton = env(service)
        assert baton["BATON_METRICS_HOST"] == "0.0.0.0", f"{name}: Prometheus cannot reach it"
        expected.add(f"{name}:{baton['BATON_METRICS_PORT']}")
        assert baton["BATON_METRICS_PORT"] in service.get("expose", []), name
    assert targets == expected


def test_grafana_gets_prometheus_the_audit_and_the_dashboard() -> None:
    doc = compose()
    grafana, clickhouse = doc["services"]["grafana"], env(doc["services"]["clickhouse"])
    sources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/baton.yml").read_text()
    )["datasources"]
    by_type = {s["type"]: s for s in sources}
    prometheus_url = urlsplit(by_type["prometheus"]["url"])
    assert prometheus_url.hostname in doc["services"]
    assert (
        f"127.0.0.1:{prometheus_url.port}:{prometheus_url.port}"
        in (doc["services"][prometheus_url.hostname]["ports"])
    )
    audit = by_type["grafana-clickhouse-datasource"]
    assert audit["jsonData"]["host"] == "clickhouse" and audit["jsonData"]["port"] == 8123
    assert audit["jsonData"]["username"] == clickhouse["CLICKHOUSE_USER"]
    assert audit["secureJsonData"]["password"] == clickhouse["CLICKHOUSE_PASSWORD"]
    assert audit["type"] in env(grafana)["GF_INSTALL_PLUGINS"]
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/baton.yml").read_text()
    )["providers"][0]
    mounted = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    dashboard = Path(mounted["./deploy/grafana/baton.json"])
    assert str(dashboard.parent) == provider["options"]["path"]
    assert mounted["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


def test_every_mounted_file_of_the_plain_file_exists() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"


# ------------------------------------------------------------------ health checks
@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_baton_health_checks_ask_their_metrics_endpoint(compose_file: str) -> None:
    for name, service in baton_services(compose(compose_file)).items():
        test = " ".join(service["healthcheck"]["test"])
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)'", test)
        assert url, f"{name}: health check asks no local URL"
        assert url[1] == env(service)["BATON_METRICS_PORT"] and url[2] == "/metrics", name
        assert env(service)["BATON_METRICS_HOST"] in ("127.0.0.1", "0.0.0.0"), name


def test_the_infrastructure_health_checks_ask_real_endpoints() -> None:
    doc = compose()
    services = doc["services"]
    kafka_ports = {p for _, p in _listeners(env(services["kafka"]), "KAFKA_LISTENERS").values()}
    kafka_check = services["kafka"]["healthcheck"]["test"][1]
    assert int(re.search(r"--bootstrap-server localhost:(\d+)", kafka_check)[1]) in kafka_ports
    assert "http://localhost:8123/ping" in services["clickhouse"]["healthcheck"]["test"][1]
    assert "http://localhost:9090/-/ready" in services["prometheus"]["healthcheck"]["test"][1]
    assert "http://localhost:3000/api/health" in services["grafana"]["healthcheck"]["test"][1]


def test_the_alert_rules_name_metrics_baton_serves() -> None:
    sources = sorted((ROOT / "processors").glob("metrics*.py"))
    served = {m for p in sources for m in re.findall(r'"(baton_[a-z_]+)"', p.read_text())}
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    named = 0
    for rule in rules["groups"][0]["rules"]:
        for metric in re.findall(r"\bbaton_[a-z_]+", rule["expr"]):
            base = re.sub(r"_(total|bucket|sum|count)$", "", metric)
            assert base in served, f"{rule['alert']}: {metric} is not a Baton metric"
            named += 1
    assert named >= 7


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_the_workers_and_the_sink_share_one_chain_key_the_keys_service_makes(
    compose_file: str,
) -> None:
    """Without it the workers seal nothing: a forged run state resets a budget at the next
    restore, the sink stores any record on gov.decisions, a row appended to a run's chain is
    not detected (session 48: both files ran so)."""
    services = compose(compose_file)["services"]
    keys = services["keys"]
    assert keys["restart"] == "no" and keys["command"][:2] == ["keys", "chain"]
    key_file = PurePosixPath(keys["command"][2])
    (volume,) = keys["volumes"]
    name, folder = volume.split(":")[:2]
    assert PurePosixPath(folder) == key_file.parent and ":ro" not in volume
    assert name in compose(compose_file)["volumes"]  # a named volume: one per deployment
    given = {n for n, s in services.items() if "BATON_AUDIT_CHAIN_KEY_FILE" in env(s)}
    assert given == {"worker-1", "worker-2", "sink"}
    for service_name in given:
        service = services[service_name]
        assert env(service)["BATON_AUDIT_CHAIN_KEY_FILE"] == str(key_file)
        assert f"{name}:{folder}:ro" in service["volumes"], service_name
        assert service["depends_on"]["keys"] == {"condition": "service_completed_successfully"}
        assert "BATON_AUDIT_CHAIN_KEY" not in env(service)  # the key never in the file
    # the image makes the folder nobody's (its user), so the fresh volume starts writable
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"chown nobody {folder}" in dockerfile
    assert dockerfile.index(f"chown nobody {folder}") < dockerfile.index("USER nobody")


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_the_workers_sign_every_decision_and_the_alerter_takes_only_their_signatures(
    compose_file: str,
) -> None:
    """`baton up` signs every decision and gives its alerter the public key; the compose files
    signed nothing, so the alerter announced any stop written to gov.stops (session 48). The
    alerter mounts the public key's volume only, never the private keys'."""
    doc = compose(compose_file)
    services = doc["services"]
    command = services["signing-key"]["command"]
    parse_command(command)
    assert services["signing-key"]["restart"] == "no"
    assert command[:3] == ["keys", "new", "workers"] and "--keep" in command
    key_dir = PurePosixPath(command[command.index("--dir") + 1])
    public = PurePosixPath(command[command.index("--public-out") + 1])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["signing-key"]["volumes"]}
    private_volume, public_volume = mounts[str(key_dir)], mounts[str(public.parent)]
    assert private_volume != public_volume and {private_volume, public_volume} <= set(
        doc["volumes"]
    )
    for name in ("worker-1", "worker-2"):
        assert env(services[name])["BATON_DECISION_SIGNING_KEY"] == str(key_dir / "workers.key")
        assert f"{private_volume}:{key_dir}:ro" in services[name]["volumes"]
        assert "signing-key" in services[name]["depends_on"]
    alerts = services["alerts"]
    assert env(alerts)["BATON_DECISION_KEYS_FILE"] == str(public)
    assert f"{public_volume}:{public.parent}:ro" in alerts["volumes"]
    assert not any(v.startswith(f"{private_volume}:") for v in alerts["volumes"])
    assert alerts["depends_on"]["signing-key"] == {"condition": "service_completed_successfully"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"chown nobody {key_dir} {public.parent}" in dockerfile
